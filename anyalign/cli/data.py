"""`anyalign data ...`: commands that make datasets (synthesised speech corpora, LLM paraphrases of captions).

Each command is a function registered on the `data` group below; a new one is a function plus one line.
"""

from __future__ import annotations

from pathlib import Path

import typer

data_app = typer.Typer(help="Make datasets: synthesised speech corpora, caption paraphrases.", no_args_is_help=True)


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


def speech_cmd(
    lists: list[Path] = typer.Argument(..., help="Sentence lists: .txt (one per line) or .jsonl (text, label, "
                                                 "answer, takes)."),
    output: Path = typer.Option(..., "--output", "-o", help="Corpus folder (a rerun keeps existing wavs)."),
    voices: str = typer.Option(None, "--voices", help="Comma-separated training voices (espeak-ng: LANG[+VARIANT], "
                                                      "e.g. en-us+m3,en+f2). Default: 12 English voices."),
    heldout_voices: str = typer.Option(None, "--heldout-voices",
                                       help="Comma-separated held-out voices (fold 'test'; never in training). "
                                            "Default: 4 voices whose variants no training voice uses."),
    engine: str = typer.Option("espeak", "--engine", help="espeak (pip espeakng-loader) or flite (Debian binary)."),
    takes: int = typer.Option(1, "--takes", min=1, help="Recordings per text and voice (.jsonl 'takes' wins)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the per-recording speaking rate and pitch."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Synthesise (text, voice, wav) triples into a jsonl dataset split by voice (see anyalign.datasets.speech)."""
    from ..datasets.speech import read_utterances, synthesize_corpus

    def split(text: str | None) -> list[str] | None:
        return None if text is None else [v.strip() for v in text.split(",") if v.strip()]

    utts = read_utterances(lists, takes=takes)
    corpus = synthesize_corpus(utts, output, voices=split(voices), heldout_voices=split(heldout_voices),
                               engine=engine, seed=seed, progress=progress)
    counts = {f: sum(r["fold"] == f for r in corpus.rows) for f in ("train", "test")}
    typer.echo(f"{corpus.jsonl}: {len(corpus.rows)} recordings of {len(utts)} texts ({corpus.n_new} new, "
               f"{corpus.n_kept} kept), {corpus.sample_rate} Hz; train {counts['train']} "
               f"({len(corpus.train_voices)} voices), test {counts['test']} ({len(corpus.test_voices)} held-out "
               f"voices: {', '.join(corpus.test_voices)})")


data_app.command("speech")(speech_cmd)
