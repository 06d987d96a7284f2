"""`anyalign data ...`: commands that make datasets (synthesised speech corpora, LLM paraphrases of captions).

Each command is a function registered on the `data` group below; a new one is a function plus one line.
"""

from __future__ import annotations

from pathlib import Path

import typer

from . import options as o

data_app = typer.Typer(help="Make datasets: synthesised speech corpora, caption paraphrases.", no_args_is_help=True)


HELP_ORDER = 80  # place of this module's commands in `anyalign --help`


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


def speech_cmd(
    lists: list[Path] = typer.Argument(None, help="Sentence lists: .txt (one per line) or .jsonl (text, label, "
                                                  "answer, takes)."),
    output: Path = typer.Option(..., "--output", "-o", help="Corpus folder (a rerun keeps existing wavs)."),
    fortunes: int = typer.Option(None, "--fortunes", min=1, help="Also speak N distinct short sentences from Debian "
                                 "`fortunes` (3-20 words, all in `wamerican`, no digit or colour word)."),
    voices: str = typer.Option(None, "--voices", help="Comma-separated training voices: espeak-ng LANG[+VARIANT] "
                               "(e.g. en-us+m3) or ENGINE:VOICE (flite:slt). Default: 12 espeak-ng voices; with "
                               "--fortunes, espeak-ng and flite voices of several families."),
    heldout_voices: str = typer.Option(None, "--heldout-voices",
                                       help="Comma-separated held-out voices (fold 'test'), of voice families "
                                            "(synthesiser + base voice) no other fold uses."),
    val_voices: str = typer.Option(None, "--val-voices", help="Comma-separated validation voices (fold 'val')."),
    heldout_texts: float = typer.Option(None, "--heldout-texts", help="Fraction of texts spoken only in the test fold "
                                        "(default 0 = every voice speaks every text; 0.17 with --fortunes)."),
    val_texts: float = typer.Option(None, "--val-texts", help="Fraction of texts of the val fold (default 0; 0.06 "
                                    "with --fortunes)."),
    voices_per_text: int = typer.Option(None, "--voices-per-text", min=1, help="Speak each text in this many voices "
                                        "of its fold (default all; 1 with --fortunes)."),
    augment: bool = typer.Option(None, "--augment/--no-augment", help="16 kHz, noise and telephone-band "
                                 "augmentation (default: on with --fortunes)."),
    engine: str = typer.Option("espeak", "--engine", help="Engine of bare voice names: espeak (pip espeakng-loader) "
                               "or flite (Debian binary)."),
    takes: int = typer.Option(1, "--takes", min=1, help="Recordings per text and voice (.jsonl 'takes' wins)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the text split and per-recording rate, pitch, augmentation."),
    as_json: bool = o.JSON,
) -> None:
    """Synthesise (text, voice, wav) triples into a jsonl dataset split by text and voice family (see
    anyalign.demos.speech_corpus)."""
    from ..demos import speech_corpus as sc

    def split(text: str | None) -> list[str] | None:
        return None if text is None else [v.strip() for v in text.split(",") if v.strip()]

    if not lists and not fortunes:
        raise ValueError("no sentences: give sentence lists and/or --fortunes N")
    utts = sc.read_utterances(lists, takes=takes) if lists else []
    many = fortunes is not None
    if many:
        known = {u.text for u in utts}
        utts += [u for u in sc.fortune_sentences(fortunes, seed=seed) if u.text not in known]
        if voices is None and heldout_voices is None and val_voices is None:
            voices, val_voices, heldout_voices = (",".join(v) for v in (
                sc.MIXED_TRAIN_VOICES, sc.MIXED_VAL_VOICES, sc.MIXED_TEST_VOICES))
    corpus = sc.synthesize_corpus(
        utts, output, voices=split(voices), heldout_voices=split(heldout_voices), val_voices=split(val_voices) or (),
        engine=engine, seed=seed, progress=not o.is_quiet(),
        heldout_texts=heldout_texts if heldout_texts is not None else 0.17 if many else 0.0,
        val_texts=val_texts if val_texts is not None else 0.06 if many and val_voices else 0.0,
        voices_per_text=voices_per_text if voices_per_text is not None else 1 if many else None,
        augment=sc.Augment() if (augment if augment is not None else many) else None)
    counts = {f: sum(r["fold"] == f for r in corpus.rows) for f in ("train", "val", "test")}
    if as_json:
        o.echo_json({"jsonl": str(corpus.jsonl), "recordings": len(corpus.rows), "texts": len(utts),
                     "new": corpus.n_new, "kept": corpus.n_kept, "sample_rate": corpus.sample_rate, "folds": counts,
                     "train_voices": list(corpus.train_voices), "test_voices": list(corpus.test_voices)})
        return
    typer.echo(f"{corpus.jsonl}: {len(corpus.rows)} recordings of {len(utts)} texts ({corpus.n_new} new, "
               f"{corpus.n_kept} kept), {corpus.sample_rate} Hz; train {counts['train']} "
               f"({len(corpus.train_voices)} voices)" + (f", val {counts['val']}" if counts["val"] else "")
               + f", test {counts['test']} ({len(corpus.test_voices)} held-out voices: "
               f"{', '.join(corpus.test_voices)})")


def paraphrase_cmd(
    recipe: Path = typer.Argument(..., help="A training recipe (YAML); its data source's classes are paraphrased."),
    override: list[str] = typer.Argument(None, help="Recipe overrides key=value (e.g. data.train.0.classes=[A,B])."),
    output: Path = typer.Option(None, "--output", "-o", help="Paraphrase file to write (default: the source's "
                                "captions.paraphrases, else <recipe dir>/data/<recipe name>.paraphrases.json)."),
    source: int = typer.Option(0, "--source", min=0, help="Which data.train source (index)."),
    llm: Path = typer.Option(None, "--llm", help="Causal LM folder (default: $ANYALIGN_ASSETS/llm/"
                             "SmolLM2-135M-Instruct)."),
    gguf_file: str = typer.Option(None, "--gguf-file", help="GGUF file inside --llm (default: the folder's one)."),
    n: int = typer.Option(8, "-n", min=1, help="Sampled rewrites per class phrase (before the filter)."),
    seed: int = typer.Option(0, "--seed"),
    margin: float = typer.Option(0.05, "--margin", help="Keep a rewrite only if it is this much closer (cosine) to "
                                 "its own class's captions than to any other class's."),
    min_own: float = typer.Option(0.5, "--min-similarity", help="...and at least this cosine to its own class."),
    eval_phrasings: Path = typer.Option(None, "--eval-phrasings", help="Phrasing file used in evaluation (as "
                                        "`eval zeroshot --labels-file`): rewrites repeating one of its phrases "
                                        "(any set but `training`) are dropped."),
    as_json: bool = o.JSON,
) -> None:
    """Paraphrase a recipe's class phrases once with a frozen LLM, filter them in the anchor space, write the file
    the recipe's `captions.paraphrases` reads (kept and dropped rewrites, with their scores, for review)."""
    from ..align.config import load_recipe
    from ..assets import assets_root
    from ..demos.paraphrases import paraphrase_source

    rec = load_recipe(recipe, override or [], check=False)
    src = rec.data.train[source] if source < len(rec.data.train) else None
    default = src.captions.paraphrases if src is not None and src.captions and src.captions.paraphrases else None
    out = output or (Path(default) if default else recipe.resolve().parent / "data" / f"{rec.name}.paraphrases.json")
    res = paraphrase_source(rec, out, index=source, llm=llm or assets_root() / "llm" / "SmolLM2-135M-Instruct",
                            gguf_file=gguf_file, n=n, seed=seed, margin=margin, min_own=min_own,
                            eval_phrasings=eval_phrasings)
    if as_json:
        o.echo_json(res)
        return
    why = ", ".join(f"{k} {v}" for k, v in res["dropped_by_reason"].items()) or "none"
    per_class = ", ".join(f"{k} {v['kept']}" for k, v in res["per_class"].items())
    typer.echo(f"{res['output']}: kept {res['kept']}, dropped {res['dropped']} rewrites of {len(res['classes'])} "
               f"classes (dropped by reason: {why}; kept per class: "
               f"{per_class})")
    if not eval_phrasings:
        typer.echo("note: no --eval-phrasings given, so rewrites were not checked against evaluation wordings")


data_app.command("speech")(speech_cmd)
data_app.command("paraphrase")(paraphrase_cmd)
