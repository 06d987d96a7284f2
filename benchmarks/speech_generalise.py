"""Speech that generalises: held-out sentences spoken by held-out voice families, next to Whisper's own decoder.

    python benchmarks/speech_generalise.py [--sentences 3600] [--conditions perceiver,qformer,...] [--steps 1500]

The protocol (issue 22): a corpus of distinct short sentences from Debian `fortunes` (filtered by the `wamerican`
word list; no digit or colour word in any sentence) is spoken by espeak-ng and flite voices with speed, pitch, noise
and telephone-band augmentation (`anyalign.demos.speech_corpus`). Texts are split by a stable hash into train /
val / test, and voices by FAMILY (synthesiser + base voice): each fold's texts are spoken only by its own families,
so the test clips are new sentences in voices of families never heard in training. Everything is tuned on the val
fold (step, hubness beta); the test fold is read once per condition at the end.

Measured on the SAME test clips:
- speech -> text R@1/5/10 among all distinct test sentences (chance k/N), for each adapter condition, with and
  without hubness correction (`anyalign.hubness`, bank = training clips' embeddings);
- the baseline: Whisper tiny.en's own decoder (`anyalign.llm.transcribe.whisper_transcripts`), then MiniLM on its
  transcript, ranked against the same gallery;
- zero-shot spoken words never trained (digits zero..nine, ten colour names; test voice families), top-1 against
  the bare words (the speech templates), chance 1/10, adapter and baseline.

Whisper features are extracted once per fold to `--work` (encoder spec padding=longest: the encoder runs on the
clip's own frames) and reused; so are transcripts and text embeddings. Conditions (each trained from scratch on
the same features, `--steps` AdamW steps, InfoNCE against the frozen MiniLM embeddings):
  perceiver     the documented recipe's head (8 latents, dim 256, depth 2), targets = the spoken text
  qformer       Q-Former-lite (32 queries, dim 256, depth 2)
  distill       perceiver, targets = MiniLM of Whisper's OWN transcript of each training clip (no labels used;
                `--distill-clips` training clips, transcripts cached)
  text-tower    word order kept: an MLP projector (frame stacking: stride 4, 12.5 tokens/s) makes soft tokens that
                the frozen MiniLM itself reads ([CLS] tokens [SEP] as input embeddings, mean-pooled like its
                sentences), so the frozen text tower composes the words (the LLM path's recipe, with MiniLM as
                the "LLM"); only the MLP trains
Measured here (2026-12-06; 2 CPU cores shared with ~7 other jobs, load 12-20; seed 0; corpus of 3,600 fortunes
sentences: 2,787 train / 222 val / 591 test, one voice per sentence; 14 train voices in 7 families, val 3 voices in 2,
test 5 voices in 3 families; Whisper baseline on a seeded 120 of the 591 test clips, digits only):

    baseline: Whisper tiny.en decoder -> MiniLM [120 clips]   R@1 0.708 R@5 0.800 R@10 0.842  digits 0.54  WER 0.47
    perceiver, 250 steps x 64 (val-best)      591 clips:       R@1 0.142 R@5 0.333 R@10 0.437  digits 0.18
                                              same 120 clips:  R@1 0.175 R@5 0.358 R@10 0.467
       + QB-Norm (beta 20 tuned on val, bank = 500 training clips): R@1 0.146 R@5 0.342 R@10 0.460
    perceiver, 600 x 128 (train loss 0.003: memorised)        R@1 0.142 R@5 0.306 R@10 0.394  digits 0.12
                                              same 120 clips:  R@1 0.150;  + QB-Norm: R@1 0.149 R@10 0.409
    qformer, 250 x 64                                          R@1 0.125 R@5 0.316 R@10 0.415  digits 0.18
    text-tower, 300 x 32 (still rising; 120 steps: 0.005)      R@1 0.034 R@5 0.112 R@10 0.183  digits 0.18
    distill, 300 transcribed clips (teacher WER 0.42)        R@1 0.014 R@5 0.041 R@10 0.095  digits 0.16
    chance (gallery 591)                                       R@1 0.002 R@5 0.008 R@10 0.017  digits 0.10

Measured 2026-12-06 (session 7), same corpus and split; the baseline now on ALL 591 test clips:

    baseline: Whisper tiny.en decoder -> MiniLM [591 clips]   R@1 0.668 R@5 0.734 R@10 0.773  digits 0.54 colours 0.42
                                                              WER 0.614
    words head (ctc projector + ctc task, `anyalign train configs/speech_text_ctc.yaml`, 1500 x 32), 591 clips:
       lexicon (candidates = the 591 sentences / 10 words)  R@1 0.995 R@5 0.995 R@10 0.995  digits 0.88 colours 0.90
       free transcript -> MiniLM (WER 0.738)                 R@1 0.293 R@5 0.413 R@10 0.482  digits 0.18 colours 0.20
    like for like on the first 40 test clips (Whisper's decoder scoring the 591 candidates, `whisper_scores`):
       Whisper decoder, lexicon      R@1 0.825 R@5 0.900 R@10 0.925;  digits 0.88 colours 0.98 (all 50 + 50 clips)
       words head, lexicon           R@1 1.000 R@5 1.000 R@10 1.000

Measured 2026-12-06 (session 8), same clips: speech -> LLM through words (`configs/speech_llm_words.yaml`: SmolLM2
reads the words head's transcript, LoRA r 8 on q/v, 200 steps x 8 training clips, `--llm-bundle`):

    LLM's answer to "What was said?", 591 clips   WER 0.843   (Whisper tiny.en decoder 0.614 on the same clips: 1.37x;
                                                               the words head's own transcript 0.738)
    --spell (the head's `vocabulary`: wamerican counted on the training fold; prior weight 1 chosen on val among
    0.5 / 1 / 2, val free R@1 0.613 / 0.644 / 0.631, greedy 0.401), test read once:
       words head, free transcript spelled -> MiniLM (WER 0.596)  R@1 0.506 R@5 0.636 R@10 0.679  digits 0.18
       LLM's answer, the same LoRA, spelled input     WER 0.654   (1.06x Whisper's decoder)

  python benchmarks/speech_generalise.py --conditions "" --baseline-clips 0      # the baseline on every test clip
  python benchmarks/speech_generalise.py --no-baseline --conditions "" --baseline-clips 0 \
      --words-adapter runs/speech_text_ctc/adapters/audio --whisper-lexicon-clips 40
  python benchmarks/speech_generalise.py --no-baseline --conditions "" --baseline-clips 0 \
      --llm-bundle runs/speech_llm_words/mllm [--spell --tag @spelled]
  python benchmarks/speech_generalise.py --conditions "" --baseline-clips 120 --baseline-words digits
  python benchmarks/speech_generalise.py --no-baseline --conditions perceiver --steps 250 --batch-size 64 \
      --eval-every 50 --bank 500 --baseline-clips 120 --baseline-words digits --tag @250x64

Results go to `<work>/results/` (protocol.json, baseline.json, <condition>.json: parts may run in parallel
processes, e.g. `--conditions ""` for the baseline beside `--no-baseline --conditions text-tower`) and a table of
every part so far on stdout (`--report` prints it alone).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from anyalign.assets import assets_root
from anyalign.demos.speech_corpus import (
    MIXED_TEST_VOICES,
    MIXED_TRAIN_VOICES,
    MIXED_VAL_VOICES,
    Augment,
    Utterance,
    add_transcripts,
    fortune_sentences,
    synthesize_corpus,
)
from anyalign.demos.speech_texts import iter_jsonl
from anyalign.hubness import Hubness, hub_occurrence
from anyalign.retrieval.evaluate import exact_metrics

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple", "brown", "pink"]
PROJECTORS = {"perceiver": {"name": "perceiver", "num_latents": 8, "dim": 256, "depth": 2, "dropout": 0.1},
              "qformer": {"name": "qformer", "num_queries": 32, "dim": 256, "depth": 2, "dropout": 0.1}}
CONDITIONS = {"perceiver": ("perceiver", "text"), "qformer": ("qformer", "text"), "distill": ("perceiver", "whisper"),
              "text-tower": ("mlp", "text")}
TOWER_PROJECTOR = {"name": "mlp", "stride": 4, "hidden_dim": 1024}
KS = (1, 5, 10)


def rows(path: Path) -> list[dict[str, Any]]:
    return [r for _, r in iter_jsonl(path)]


def make_corpora(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """The sentence corpus (train/val/test folds) and the zero-shot words corpus (test families only)."""
    sentences = fortune_sentences(args.sentences, seed=args.seed)
    aug = Augment()
    synthesize_corpus(sentences, work / "corpus", voices=MIXED_TRAIN_VOICES, val_voices=MIXED_VAL_VOICES,
                      heldout_voices=MIXED_TEST_VOICES, heldout_texts=args.heldout_texts, val_texts=args.val_texts,
                      voices_per_text=1, augment=aug, seed=args.seed, progress=not args.quiet)
    words = [Utterance(w, label=w) for w in DIGITS + COLOURS]
    synthesize_corpus(words, work / "words", voices=[], heldout_voices=MIXED_TEST_VOICES, augment=aug, seed=args.seed,
                      progress=False)
    return work / "corpus", work / "words"


def features(whisper: str, src: Path, out: Path, quiet: bool, pool: int = 1) -> dict[str, torch.Tensor]:
    """Whisper tiny.en tokens of every clip of `src` (extracted once, padding=longest), by row key, each group of
    `pool` consecutive frames averaged (frame stacking by mean: 50 / pool tokens per second)."""
    from anyalign.encoders.extract import extract
    from anyalign.encoders.spec import EncoderSpec
    from anyalign.features import load_features

    spec = EncoderSpec("whisper", whisper, options={"padding": "longest"})
    extract(spec.build(frozen=True), src, out, batch_size=16, spec=spec, progress=not quiet)  # resumes
    out_tokens = {}
    for r in load_features(out, dtype=torch.float32):
        t = r.tokens
        if pool > 1:
            t = torch.nn.functional.avg_pool1d(t.T[None], pool, pool, ceil_mode=True)[0].T
        out_tokens[str(r.key)] = t.half()
    return out_tokens


def text_embedder(minilm: str) -> Any:
    from anyalign.embedder import Embedder
    from anyalign.encoders.spec import EncoderSpec

    return Embedder.from_encoder(EncoderSpec("text", minilm))


def cached(path: Path, make: Any) -> Any:
    if path.is_file():
        return json.loads(path.read_text())
    value = make()
    path.write_text(json.dumps(value))
    return value


def pad(tokens: list[torch.Tensor]) -> Any:
    from anyalign.encoders import EncoderOutput
    from anyalign.encoders.base import pad_sequences

    t, m = pad_sequences([x.float() for x in tokens])
    return EncoderOutput(t, m, (t * m[..., None]).sum(1) / m.sum(1, keepdim=True))


class SpeechHead(torch.nn.Module):
    """Shared-space embeddings of Whisper features: the adapter's embedding head, or (text-tower) its LLM-style soft
    tokens read by the frozen MiniLM between its [CLS] and [SEP] embeddings, mean-pooled over the real positions."""

    def __init__(self, adapter: Any, tower: Any = None, cls_sep: tuple[int, int] = (101, 102)) -> None:
        super().__init__()
        self.adapter, self.tower, self.cls_sep = adapter, tower, cls_sep

    def forward(self, feats: Any) -> torch.Tensor:
        if self.tower is None:
            return self.adapter.embed_output(feats)[0]
        out = self.adapter.soft_tokens(feats)
        tok, mask = out.tokens, out.mask  # [B, N, 384], [B, N]
        b, n, d = tok.shape
        words = self.tower.embeddings.word_embeddings.weight
        lens = mask.sum(1)
        x = torch.zeros(b, n + 2, d, dtype=tok.dtype)
        x[:, 0] = words[self.cls_sep[0]]
        x[:, 1:n + 1] = tok * mask[..., None]
        x[torch.arange(b), lens + 1] = words[self.cls_sep[1]]
        att = (torch.arange(n + 2)[None] <= (lens + 1)[:, None]).long()  # [B, N+2]
        h = self.tower(inputs_embeds=x, attention_mask=att).last_hidden_state
        pooled = (h * att[..., None]).sum(1) / att.sum(1, keepdim=True)
        return torch.nn.functional.normalize(pooled, dim=-1)


@torch.no_grad()
def embed_clips(head: SpeechHead, tokens: list[torch.Tensor], bs: int = 128) -> np.ndarray:
    head.eval()
    order = np.argsort([len(t) for t in tokens])  # similar lengths per batch: less padding
    out = np.zeros((len(tokens), 384), dtype=np.float32)
    for lo in range(0, len(order), bs):
        idx = order[lo:lo + bs]
        out[idx] = head(pad([tokens[i] for i in idx])).numpy()
    head.train()
    if head.tower is not None:
        head.tower.eval()
    return out


def retrieval(q: np.ndarray, texts: list[str], gallery_texts: list[str], gallery: np.ndarray,
              hub: Hubness | None = None, bank: np.ndarray | None = None) -> dict[str, float]:
    pos = {t: i for i, t in enumerate(gallery_texts)}
    rel = [np.array([pos[t]]) for t in texts]
    return exact_metrics(q, gallery, rel, KS, hubness=hub, bank=bank)


def zeroshot(q: np.ndarray, labels: list[str], classes: list[str], class_emb: np.ndarray,
             hub: Hubness | None = None, bank: np.ndarray | None = None) -> float:
    s = q @ class_emb.T
    if hub is not None:
        s = hub.apply(s, bank @ class_emb.T)
    return float(np.mean([classes[i] == lab for i, lab in zip(s.argmax(1), labels)]))


def train_condition(name: str, args: argparse.Namespace, encoder: Any, train_tok: list[torch.Tensor],
                    targets: np.ndarray, val: tuple[list[torch.Tensor], list[str], list[str], np.ndarray],
                    bank_tok: list[torch.Tensor]) -> tuple[Any, dict[str, Any]]:
    """Train one adapter; keep the weights of the best val R@1 (checked every `--eval-every` steps)."""
    from anyalign.adapter import build_adapter
    from anyalign.align.losses import InfoNCE

    torch.manual_seed(args.seed)
    if name == "text-tower":
        from transformers import AutoModel

        tower = AutoModel.from_pretrained(args.minilm, dtype=torch.float32).eval().requires_grad_(False)
        adapter = build_adapter("audio", encoder, llm_dim=targets.shape[1], llm_projector=dict(TOWER_PROJECTOR))
        head = SpeechHead(adapter, tower)
    else:
        proj = PROJECTORS[CONDITIONS[name][0]]
        adapter = build_adapter("audio", encoder, embed_dim=targets.shape[1], embed_projector=dict(proj))
        head = SpeechHead(adapter)
    loss_fn = InfoNCE(0.05)
    params = [p for p in adapter.parameters() if p.requires_grad] + list(loss_fn.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)
    warm = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / args.steps))))
    tgt = torch.from_numpy(targets)
    rng = np.random.default_rng(args.seed)
    best: tuple[float, int, dict[str, torch.Tensor]] = (-1.0, 0, {})
    curve, t0 = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = rng.choice(len(train_tok), size=min(args.batch_size, len(train_tok)), replace=False)
        loss = loss_fn(head(pad([train_tok[i] for i in idx])), tgt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % args.eval_every == 0 or step == args.steps:
            r = retrieval(embed_clips(head, val[0]), val[1], val[2], val[3])
            curve.append({"step": step, "loss": loss.item(), "val_R@1": r["recall@1"], "val_R@10": r["recall@10"],
                          "s": round(time.perf_counter() - t0)})
            print(f"  [{name}] step {step} loss {loss.item():.3f} val R@1 {r['recall@1']:.3f} "
                  f"R@10 {r['recall@10']:.3f} ({curve[-1]['s']} s)", flush=True)
            if r["recall@1"] > best[0]:
                best = (r["recall@1"], step, {k: v.clone() for k, v in adapter.state_dict().items()})
    adapter.load_state_dict(best[2])  # the frozen text tower is not trained: only the adapter's weights change
    # hubness: beta picked on the val fold (bank = training clips), never on the test fold
    bank = embed_clips(head, bank_tok)
    vq = embed_clips(head, val[0])
    betas = {b: retrieval(vq, val[1], val[2], val[3], Hubness("qb-norm", b), bank)["recall@1"]
             for b in (5.0, 10.0, 20.0, 40.0)}
    beta = max(betas, key=betas.get)
    return head, {"best_step": best[1], "val_R@1": best[0], "curve": curve, "train_s": curve[-1]["s"],
                     "hubness_beta": beta, "val_R@1_qbnorm_by_beta": betas, "bank": bank}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("runs/speech_generalise"))
    p.add_argument("--sentences", type=int, default=3600)
    p.add_argument("--heldout-texts", type=float, default=0.17)
    p.add_argument("--val-texts", type=float, default=0.06)
    p.add_argument("--conditions", default="perceiver,qformer,distill")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--distill-clips", type=int, default=500, help="training clips Whisper transcribes for distill")
    p.add_argument("--bank", type=int, default=1500, help="training clips in the hubness query bank")
    p.add_argument("--pool", type=int, default=2, help="average this many Whisper frames per token at load")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="compute the Whisper baseline (--no-baseline: needs its cached transcripts)")
    p.add_argument("--baseline-clips", type=int, default=0, help="test clips the Whisper baseline transcribes "
                   "(a seeded subset; 0 = all); every condition is also scored on the same subset")
    p.add_argument("--baseline-words", default="digits,colours", help="zero-shot word sets the baseline hears")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--tag", default="", help="suffix of the result files, e.g. @600 (one row per run)")
    p.add_argument("--report", action="store_true", help="print the table of the parts written so far")
    p.add_argument("--whisper-lexicon-clips", type=int, default=0, help="also score Whisper's decoder with the "
                   "lexicon (teacher-forced likelihood of every gallery sentence) on this many of the [sub] test "
                   "clips, and on every digit/colour clip: the baseline beside the words head's lexicon numbers")
    p.add_argument("--words-adapter", type=Path, default=None, help="also score a saved words-head adapter (a 'ctc' "
                   "projector, trained by `anyalign train configs/speech_text_ctc.yaml` on this corpus's train fold)")
    p.add_argument("--llm-bundle", type=Path, default=None, help="also measure speech -> LLM: a saved MultimodalLM "
                   "bundle (e.g. runs/speech_llm_words/mllm) answers '<audio>\\nWhat was said?' for every test clip "
                   "(greedy); its WER next to Whisper's decoder on the same clips")
    p.add_argument("--spell", action="store_true", help="spell the words head's free transcripts with a word list "
                   "(the ctc projector's `vocabulary`): Debian's wamerican words, counted in the TRAINING fold's "
                   "transcripts (written to <work>/vocabulary.txt); applies to --words-adapter and --llm-bundle")
    args = p.parse_args()
    if args.report:
        report(args.work / "results")
        return
    args.minilm = str(assets_root() / "text" / "all-MiniLM-L6-v2")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    root = assets_root()
    whisper, minilm = str(root / "audio-models" / "whisper-tiny.en"), str(root / "text" / "all-MiniLM-L6-v2")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    corpus, words = make_corpora(args, work)
    split = json.loads((corpus / "split.json").read_text())
    print(f"corpus: {split['texts']} texts, families {split['families']} ({time.perf_counter() - t0:.0f} s)",
          flush=True)
    fold_rows = {f: rows(corpus / f"{f}.jsonl") for f in ("train", "val", "test")}
    word_rows = rows(words / "test.jsonl")
    feats = {f: features(whisper, corpus / f"{f}.jsonl", work / "features" / f, args.quiet, args.pool)
             for f in fold_rows}
    feats["words"] = features(whisper, words / "test.jsonl", work / "features" / "words", args.quiet, args.pool)
    print(f"features ready ({time.perf_counter() - t0:.0f} s)", flush=True)
    tok = {f: [feats[f][r["key"]] for r in rs] for f, rs in fold_rows.items()}
    tok["words"] = [feats["words"][r["key"]] for r in word_rows]
    del feats

    text = text_embedder(minilm)
    gal_texts = {f: sorted({r["text"] for r in rs}) for f, rs in fold_rows.items()}
    gal = {f: text.embed(ts) for f, ts in gal_texts.items()}
    said = {f: [r["text"] for r in rs] for f, rs in fold_rows.items()}
    target_of = dict(zip(gal_texts["train"], gal["train"]))
    train_targets = np.stack([target_of[t] for t in said["train"]])
    word_labels = [r["label"] for r in word_rows]
    sets = {"digits": DIGITS, "colours": COLOURS}
    class_emb = {k: text.embed(v) for k, v in sets.items()}  # speech templates: the bare words
    word_idx = {k: [i for i, lab in enumerate(word_labels) if lab in v] for k, v in sets.items()}

    # the baseline: Whisper's own decoder, then MiniLM on its transcript (same test clips, same gallery)
    from anyalign.llm.transcribe import whisper_transcripts
    from anyalign.metrics import wer

    files = [str(corpus / r["audio"]) for r in fold_rows["test"]]
    n_sub = args.baseline_clips or len(files)  # Whisper's padded decoder costs ~1 s a clip: optionally a subset
    sub = sorted(np.random.default_rng(args.seed + 1).choice(len(files), size=min(n_sub, len(files)), replace=False))
    sub_said = [said["test"][i] for i in sub]
    word_sub = {k: v for k, v in word_idx.items() if k in args.baseline_words.split(",")}
    res_dir = work / "results"  # one file per part, so parts can run in parallel processes and merge in one table
    res_dir.mkdir(exist_ok=True)
    protocol = {"split": split["split"], "texts": split["texts"], "families": split["families"],
                "test_clips": len(files), "gallery": len(gal_texts["test"]),
                "chance": {f"R@{k}": k / len(gal_texts["test"]) for k in KS}, "zeroshot_chance": 0.1,
                "zeroshot_clips": {k: len(v) for k, v in word_idx.items()},
                "baseline_queries": len(sub), "baseline_words": sorted(word_sub)}
    (res_dir / "protocol.json").write_text(json.dumps(protocol, indent=1))
    if args.baseline:
        hyp = cached(work / f"whisper_test_{len(sub)}.json", lambda: whisper_transcripts(
            whisper, [files[i] for i in sub], quiet=args.quiet))
        wi = [i for v in word_sub.values() for i in v]
        whyp = dict(zip(wi, cached(work / f"whisper_words_{'_'.join(sorted(word_sub))}.json", lambda: (
            whisper_transcripts(whisper, [str(words / word_rows[i]["audio"]) for i in wi], quiet=args.quiet)))))
        base_q = text.embed([h or "." for h in hyp])
        base = {**retrieval(base_q, sub_said, gal_texts["test"], gal["test"]), "wer": wer(sub_said, hyp),
                "test_hubs": hub_occurrence(base_q @ gal["test"].T),
                **{f"zeroshot_{k}": zeroshot(text.embed([whyp[i] or "." for i in v]), [word_labels[i] for i in v],
                                             sets[k], class_emb[k]) for k, v in word_sub.items()}}
        (res_dir / "baseline.json").write_text(json.dumps(base, indent=1))
        print(f"baseline ready ({time.perf_counter() - t0:.0f} s): {base}", flush=True)

    if args.whisper_lexicon_clips:
        from anyalign.llm.transcribe import whisper_scores

        lex_sub = sub[:args.whisper_lexicon_clips]
        sc = whisper_scores(whisper, [files[i] for i in lex_sub], gal_texts["test"], quiet=args.quiet).numpy()
        lex = {"clips": len(lex_sub), "gallery": len(gal_texts["test"]),
               "test": retrieval(sc, [said["test"][i] for i in lex_sub], gal_texts["test"], np.eye(len(sc[0])))}
        for k, v in word_idx.items():
            ws = whisper_scores(whisper, [str(words / word_rows[i]["audio"]) for i in v], sets[k], quiet=True)
            lex[f"zeroshot_{k}"] = float(np.mean([sets[k][j] == word_labels[i] for i, j in zip(v, ws.argmax(1))]))
        (res_dir / "whisper-lexicon.json").write_text(json.dumps(lex, indent=1))
        print(f"[whisper lexicon] {lex}", flush=True)
    vocabulary = write_vocabulary(work / "vocabulary.txt", said["train"]) if args.spell else None
    if args.words_adapter is not None or args.llm_bundle is not None:  # 50 Hz (unpooled): the heads pool themselves
        raw = features(whisper, corpus / "test.jsonl", work / "features" / "test", True)
        raw_test = [raw[r["key"]] for r in fold_rows["test"]]
    if args.words_adapter is not None:
        raw = features(whisper, words / "test.jsonl", work / "features" / "words", True)
        info = score_words_adapter(args.words_adapter, raw_test, said["test"], gal_texts["test"], gal["test"], sub,
                                   [raw[r["key"]] for r in word_rows], word_labels, word_idx, sets, class_emb,
                                   vocabulary)
        (res_dir / f"words-ctc{args.tag}.json").write_text(json.dumps(info, indent=1))
        print(f"[words-ctc] {info}", flush=True)

    if args.llm_bundle is not None:
        info = score_llm_bundle(args.llm_bundle, raw_test, said["test"], sub,
                                cached(work / f"whisper_test_{len(sub)}.json", lambda: whisper_transcripts(
                                    whisper, [files[i] for i in sub], quiet=args.quiet)), vocabulary)
        (res_dir / f"llm{args.tag}.json").write_text(json.dumps(info, indent=1))
        print(f"[llm] {info}", flush=True)

    from anyalign.encoders.spec import EncoderSpec

    encoder = EncoderSpec("whisper", whisper, options={"padding": "longest"}).build(frozen=True)
    rng = np.random.default_rng(args.seed)
    bank_idx = rng.choice(len(tok["train"]), size=min(args.bank, len(tok["train"])), replace=False)
    val = (tok["val"], said["val"], gal_texts["val"], gal["val"])
    for name in [c for c in args.conditions.split(",") if c]:
        if name not in CONDITIONS:
            raise SystemExit(f"--conditions: unknown {name!r} (expected {', '.join(CONDITIONS)})")
        train_tok, targets, teacher_wer = tok["train"], train_targets, None
        if CONDITIONS[name][1] == "whisper":  # distillation: Whisper's own transcript is the target
            n = min(args.distill_clips, len(fold_rows["train"]))
            path = add_transcripts(corpus, whisper, folds=["train"], limit=n, progress=not args.quiet)["train"]
            heard = [r["text"] for r in rows(path)][:n]
            train_tok, targets = tok["train"][:n], text.embed([h or "." for h in heard])
            teacher_wer = wer(said["train"][:n], heard)
        adapter, info = train_condition(name, args, encoder, train_tok, targets, val,
                                        [tok["train"][i] for i in bank_idx])
        bank = info.pop("bank")
        q = embed_clips(adapter, tok["test"])
        hub = Hubness("qb-norm", info["hubness_beta"])
        wqa = embed_clips(adapter, tok["words"])
        info.update({"test": retrieval(q, said["test"], gal_texts["test"], gal["test"]),
                     "test_baseline_queries": retrieval(q[sub], sub_said, gal_texts["test"], gal["test"]),
                     "test_qbnorm": retrieval(q, said["test"], gal_texts["test"], gal["test"], hub, bank),
                     "test_hubs": hub_occurrence(q @ gal["test"].T),
                     "train_clips": len(train_tok), "teacher_wer": teacher_wer, "args": {
                         k: getattr(args, k) for k in ("steps", "batch_size", "lr", "pool", "seed")}})
        for k, v in word_idx.items():
            labs = [word_labels[i] for i in v]
            info[f"zeroshot_{k}"] = zeroshot(wqa[v], labs, sets[k], class_emb[k])
            info[f"zeroshot_{k}_qbnorm"] = zeroshot(wqa[v], labs, sets[k], class_emb[k], hub, bank)
        print(f"[{name}] test {info['test']}\n  qb-norm {info['test_qbnorm']}\n  zero-shot "
              f"{ {k: info[k] for k in info if k.startswith('zeroshot')} }", flush=True)
        (res_dir / f"{name}{args.tag}.json").write_text(json.dumps(info, indent=1))
    report(res_dir)


def score_words_adapter(path: Path, test_tok: list[torch.Tensor], said: list[str], gallery_texts: list[str],
                        gallery: np.ndarray, sub: list[int], word_tok: list[torch.Tensor], word_labels: list[str],
                        word_idx: dict[str, list[int]], sets: dict[str, list[str]],
                        class_emb: dict[str, np.ndarray], vocabulary: Path | None = None) -> dict[str, Any]:
    """A saved words-head adapter on the test clips: free transcripts (embedded by MiniLM: the FAISS-able space),
    the lexicon-constrained embedding (candidates = the gallery sentences / the class words, CTC-scored), its WER."""
    from anyalign.adapter import ModalityAdapter
    from anyalign.metrics import wer

    adapter = ModalityAdapter.from_pretrained(path, load_encoder=False).eval()
    head = adapter.embed_head
    head.config["vocabulary"] = None if vocabulary is None else str(vocabulary)
    t0 = time.perf_counter()
    heard = [t for i in range(0, len(test_tok), 64) for t in head.transcribe(*_padded(test_tok[i:i + 64]))]
    free = head.embed_texts(heard).numpy()  # the free-transcript embedding, from the transcripts just made
    head.constrain(gallery_texts)
    lex = embed_clips(SpeechHead(adapter), test_tok)
    info: dict[str, Any] = {
        "adapter": str(path), "wer": wer(said, heard), "examples": list(zip(said[:5], heard[:5])),
        "test_free_transcript": retrieval(free, said, gallery_texts, gallery),
        "test": retrieval(lex, said, gallery_texts, gallery),
        "test_baseline_queries": retrieval(lex[sub], [said[i] for i in sub], gallery_texts, gallery),
        "test_free_baseline_queries": retrieval(free[sub], [said[i] for i in sub], gallery_texts, gallery),
        "wer_baseline_queries": wer([said[i] for i in sub], [heard[i] for i in sub]),
        "test_hubs": hub_occurrence(lex @ gallery.T)}
    for k, v in word_idx.items():
        head.constrain(sets[k])
        q = embed_clips(SpeechHead(adapter), [word_tok[i] for i in v])
        labs = [word_labels[i] for i in v]
        info[f"zeroshot_{k}"] = zeroshot(q, labs, sets[k], class_emb[k])
        head.constrain(None)
        info[f"zeroshot_{k}_free"] = zeroshot(embed_clips(SpeechHead(adapter), [word_tok[i] for i in v]), labs,
                                              sets[k], class_emb[k])
    info["s"] = round(time.perf_counter() - t0)
    return info


def score_llm_bundle(path: Path, test_tok: list[torch.Tensor], said: list[str], sub: list[int],
                     whisper_hyp: list[str], vocabulary: Path | None = None, batch: int = 8) -> dict[str, Any]:
    """A saved speech -> LLM bundle on the test clips: the LLM's greedy answer to "What was said?" for each clip,
    its corpus WER on all clips and on the clips Whisper's decoder transcribed (`sub`), beside Whisper's WER there."""
    from anyalign.llm import MultimodalLM
    from anyalign.metrics import wer

    mllm = MultimodalLM.from_pretrained(path, load_encoders=False).eval()
    modality = next(iter(mllm.adapters))
    mllm.adapters[modality].words_head.config["vocabulary"] = None if vocabulary is None else str(vocabulary)
    t0 = time.perf_counter()
    out: list[str] = []
    for i in tqdm(range(0, len(test_tok), batch), desc="llm", leave=False):
        feats = pad(test_tok[i:i + batch])
        out += [t.strip() for t in mllm.generate([f"<{modality}>\nWhat was said?"] * len(feats.tokens),
                                                 features={modality: feats}, max_new_tokens=48, do_sample=False)]
    llm_sub, said_sub = [out[i] for i in sub], [said[i] for i in sub]
    info = {"bundle": str(path), "clips": len(said), "wer": wer(said, out), "baseline_clips": len(sub),
            "wer_baseline_clips": wer(said_sub, llm_sub), "whisper_wer_baseline_clips": wer(said_sub, whisper_hyp),
            "examples": list(zip(said[:8], out[:8])), "s": round(time.perf_counter() - t0)}
    info["ratio_to_whisper"] = info["wer_baseline_clips"] / max(info["whisper_wer_baseline_clips"], 1e-9)
    return info


def write_vocabulary(path: Path, train_texts: list[str]) -> Path:
    """Debian's wamerican word list with each word's count in the training transcripts (`word count` lines)."""
    from anyalign.demos.speech_texts import WORD_LIST
    from anyalign.projectors.ctc import CTCOptions, normalize_text

    counts = dict.fromkeys(Path(WORD_LIST).read_text(encoding="utf-8", errors="ignore").split(), 0)
    for text in train_texts:
        for w in normalize_text(text, CTCOptions.alphabet).split():
            counts[w] = counts.get(w, 0) + 1
    path.write_text("".join(f"{w} {c}\n" for w, c in sorted(counts.items())))
    return path


def _padded(tokens: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    out = pad(tokens)
    return out.tokens, out.mask


def report(res_dir: Path) -> None:
    """The table of every part written so far under `res_dir` (protocol, baseline, conditions)."""
    pr = json.loads((res_dir / "protocol.json").read_text())
    parts = {p.stem: json.loads(p.read_text()) for p in sorted(res_dir.glob("*.json"))}
    res = {"whisper_decoder_then_minilm": parts.get("baseline"),
           "conditions": {k: v for k, v in parts.items() if k.split("@")[0] in CONDITIONS}}
    print(f"\nheld-out sentences x held-out voice families: {pr['test_clips']} test clips, gallery "
          f"{pr['gallery']} sentences; families train {pr['families']['train']}, test {pr['families']['test']}")
    print(f"{'system':44s} {'R@1':>6s} {'R@5':>6s} {'R@10':>6s} {'digits':>7s} {'colours':>8s}")
    b = res["whisper_decoder_then_minilm"]

    def z(d: dict[str, Any], key: str) -> str:
        return f"{d[key]:.3f}" if d.get(key) is not None else "-"

    print(f"queries: all {pr['test_clips']} test clips; [sub] = the {pr['baseline_queries']} the baseline transcribed")
    if b is not None:
        print(f"{'Whisper decoder -> MiniLM (baseline) [sub]':44s} {b['recall@1']:6.3f} {b['recall@5']:6.3f} "
              f"{b['recall@10']:6.3f} {z(b, 'zeroshot_digits'):>7s} {z(b, 'zeroshot_colours'):>8s}   "
              f"WER {b['wer']:.3f}")
    for name, c in res["conditions"].items():
        rows_ = [("", c["test"], ""), (" + qb-norm", c["test_qbnorm"], "_qbnorm")]
        if "test_baseline_queries" in c:
            rows_.append((" [sub]", c["test_baseline_queries"], ""))
        for tag, m, zz in rows_:
            print(f"{'adapter ' + name + tag:44s} {m['recall@1']:6.3f} {m['recall@5']:6.3f} {m['recall@10']:6.3f} "
                  f"{z(c, 'zeroshot_digits' + zz):>7s} {z(c, 'zeroshot_colours' + zz):>8s}")
    if "whisper-lexicon" in parts:
        c = parts["whisper-lexicon"]
        m = c["test"]
        print(f"{'Whisper decoder, lexicon [first ' + str(c['clips']) + ' of sub]':44s} {m['recall@1']:6.3f} "
              f"{m['recall@5']:6.3f} {m['recall@10']:6.3f} {z(c, 'zeroshot_digits'):>7s} "
              f"{z(c, 'zeroshot_colours'):>8s}")
    for name, c in parts.items():
        if name.startswith("words-ctc"):
            for tag, m, zz in (("lexicon = gallery", c["test"], ""), ("free transcript", c["test_free_transcript"],
                                                                       "_free"),
                               ("lexicon [sub]", c["test_baseline_queries"], "")):
                label = name.replace("words-ctc", "words head (ctc)") + ", " + tag
                print(f"{label:44s} {m['recall@1']:6.3f} {m['recall@5']:6.3f} {m['recall@10']:6.3f}"
                      f" {z(c, 'zeroshot_digits' + zz):>7s} {z(c, 'zeroshot_colours' + zz):>8s}"
                      + (f"   WER {c['wer']:.3f}" if tag == "free transcript" else ""))
    for name, c in parts.items():
        if name.startswith("llm"):
            print(f"speech -> LLM ({c['bundle']}{name[3:]}), {c['baseline_clips']} clips: WER "
                  f"{c['wer_baseline_clips']:.3f} vs "
                  f"Whisper's decoder {c['whisper_wer_baseline_clips']:.3f} ({c['ratio_to_whisper']:.2f}x)")
    ch = pr["chance"]
    print(f"{'chance':44s} {ch['R@1']:6.3f} {ch['R@5']:6.3f} {ch['R@10']:6.3f} {0.1:7.3f} {0.1:8.3f}")


if __name__ == "__main__":
    main()
