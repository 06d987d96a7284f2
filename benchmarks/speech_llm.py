"""Speech -> LLM with Ultravox's recipe, measured on held-out sentences in held-out voices, next to Whisper's own
decoder on the same clips.

    python benchmarks/speech_llm.py [--sentences 600] [--steps 300] [--loss kd] [--work /tmp/speech-llm]

Corpus: `--sentences` distinct sentences from Debian's fortunes (anyalign.demos.speech_corpus.fortune_sentences),
split by text (`--heldout` of the sentences never trained) and by voice family (test voices never trained), one
voice per text, espeak-ng. Features: Whisper tiny.en encoder on the clips' own length (`padding="longest"`).
Adapter: `stack_gated` projector (8 frames per token, SwiGLU) into SmolLM2-135M-Instruct (GGUF asset, frozen).
Loss: `kd` = KL from the LLM reading the transcript as text (teacher) to the LLM hearing the speech (student) on the
response tokens (anyalign.align.distill); `ce` = next-token loss on the transcript; `kd+ce` both.
Prompt `<audio>\\nWhat was said?`, response = the transcript. Evaluation: greedy transcripts of the test clips (and
of as many training clips) -> corpus WER with Whisper's English normaliser (jiwer), Whisper tiny.en's decoder WER
on the same test clips, and the ratio (issue 22's target: <= 1.5x).

Measured (2 shared CPU cores, one thread, ~31 min): `--loss kd --steps 120 --lr 2e-3`, 534 training clips (534
sentences), 60 test clips: LLM WER 3.68 on held-out sentences x held-out voices (3.57 on 60 seen training clips; the
LLM mostly writes unrelated text, loss 3.07 -> 1.84), Whisper tiny.en's decoder 0.93 on the same clips (these two
held-out espeak voices are hard for it; two of its transcripts loop, without the 3 clips it scores above 1.5 on
it is 0.45 and the LLM 3.68), ratio 3.97x: the target is missed at this training budget.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from anyalign.adapter import build_adapter
from anyalign.align.distill import distill_loss
from anyalign.assets import asset_path
from anyalign.encoders import EncoderOutput, create_encoder
from anyalign.encoders.base import pad_sequences
from anyalign.llm import MultimodalLM
from anyalign.llm.bundle import load_llm
from anyalign.llm.transcribe import whisper_transcripts
from anyalign.metrics import wer

PROMPT = "<audio>\nWhat was said?"
TRAIN_VOICES = ["en-us+m1", "en-us+f1", "en+m2", "en+f2", "en-gb-x-rp+f3", "en-gb-x-rp+m3"]
TEST_VOICES = ["en-029+m5", "en-us-nyc+f4"]  # voice families never trained


def corpus(args: argparse.Namespace) -> tuple[list[dict], list[dict], Path]:
    from anyalign.demos.speech_corpus import fortune_sentences, synthesize_corpus

    utts = fortune_sentences(args.sentences, max_words=args.max_words, seed=args.seed)
    c = synthesize_corpus(utts, args.work / "corpus", voices=TRAIN_VOICES, heldout_voices=TEST_VOICES,
                          heldout_texts=args.heldout, voices_per_text=1, seed=args.seed, progress=False)
    train = [r for r in c.rows if r["fold"] == "train"]
    test = [r for r in c.rows if r["fold"] == "test"][: args.max_test]
    assert not {r["text"] for r in train} & {r["text"] for r in test}
    return train, test, c.path


def features(enc, files: list[Path], batch: int = 16) -> list[torch.Tensor]:
    out = []
    with torch.inference_mode():
        for i in range(0, len(files), batch):
            o = enc([str(f) for f in files[i:i + batch]])
            out += [t[m].clone() for t, m in zip(o.tokens, o.mask)]  # valid frames [T_i, D]
    return out


def stack(tokens: list[torch.Tensor]) -> EncoderOutput:
    padded, mask = pad_sequences(tokens)
    return EncoderOutput(padded, mask, padded.mean(1))


def transcripts(mllm: MultimodalLM, feats: list[torch.Tensor], batch: int = 8) -> list[str]:
    out = []
    for i in range(0, len(feats), batch):
        chunk = feats[i:i + batch]
        out += mllm.generate([PROMPT] * len(chunk), features={"audio": stack(chunk)}, max_new_tokens=40,
                             do_sample=False)
    return [t.strip() for t in out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=int, default=600)
    ap.add_argument("--max-words", type=int, default=12)
    ap.add_argument("--heldout", type=float, default=0.1)
    ap.add_argument("--max-test", type=int, default=60)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--loss", choices=["kd", "ce", "kd+ce"], default="kd")
    ap.add_argument("--stack", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/speech-llm"))
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    train, test, root = corpus(args)
    print(f"corpus: {len(train)} train clips ({len({r['text'] for r in train})} sentences, voices "
          f"{', '.join(TRAIN_VOICES)}), {len(test)} test clips (held-out sentences, voices {', '.join(TEST_VOICES)})"
          f"  [{time.perf_counter() - t0:.0f} s]", flush=True)
    whisper = asset_path("whisper-tiny.en")
    enc = create_encoder("whisper", pretrained=str(whisper), padding="longest")
    f_train = features(enc, [root / r["audio"] for r in train])
    f_test = features(enc, [root / r["audio"] for r in test])
    print(f"features (Whisper tiny.en, own length): {sum(len(f) for f in f_train + f_test)} frames  "
          f"[{time.perf_counter() - t0:.0f} s]", flush=True)

    gguf = next(asset_path("smollm2").glob("*.gguf"))
    llm, tok, source = load_llm(gguf.parent, gguf_file=gguf.name)
    adapter = build_adapter("audio", enc, llm_dim=int(llm.get_input_embeddings().embedding_dim),
                            llm_projector={"name": "stack_gated", "stack": args.stack})
    mllm = MultimodalLM(llm, tok, {"audio": adapter}, source=source)
    params = [p for p in adapter.parameters() if p.requires_grad]
    print(f"LLM {gguf.name}; stack_gated projector: {sum(p.numel() for p in params) / 1e6:.2f}M trainable",
          flush=True)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    rng = random.Random(args.seed)
    mllm.train()
    for step in range(1, args.steps + 1):
        idx = rng.sample(range(len(train)), args.batch_size)
        feats = {"audio": stack([f_train[i] for i in idx])}
        texts = [train[i]["text"] for i in idx]
        loss = torch.zeros(())
        if "kd" in args.loss:
            kd, _ = distill_loss(mllm, [PROMPT] * len(idx), texts, feats)
            loss = loss + kd
        if "ce" in args.loss:
            loss = loss + mllm([PROMPT] * len(idx), texts, features=feats).lm_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 25 == 0 or step == 1:
            print(f"step {step:4d}  loss {loss.item():.4f}  [{time.perf_counter() - t0:.0f} s]", flush=True)
    mllm.eval()
    refs_test = [r["text"] for r in test]
    hyp_test = transcripts(mllm, f_test)
    seen = rng.sample(range(len(train)), min(len(test), len(train)))
    hyp_seen = transcripts(mllm, [f_train[i] for i in seen])
    w_llm, w_seen = wer(refs_test, hyp_test), wer([train[i]["text"] for i in seen], hyp_seen)
    hyp_whisper = whisper_transcripts(whisper, [root / r["audio"] for r in test], quiet=True)
    w_whisper = wer(refs_test, hyp_whisper)
    print(f"\nLLM ({args.loss}, {args.steps} steps x {args.batch_size}) WER on {len(test)} held-out sentences x "
          f"held-out "
          f"voices: {w_llm:.3f}   (on {len(seen)} training clips: {w_seen:.3f})")
    print(f"Whisper tiny.en decoder WER on the same {len(test)} clips: {w_whisper:.3f}")
    print(f"ratio LLM / Whisper: {w_llm / max(w_whisper, 1e-9):.2f}x  (target <= 1.5x)   "
          f"[{time.perf_counter() - t0:.0f} s]")
    for r, h, w in list(zip(refs_test, hyp_test, hyp_whisper))[:8]:
        print(f"  ref: {r}\n  llm: {h}\n  whi: {w}")
    (args.work / "report.json").write_text(json.dumps({
        "loss": args.loss, "steps": args.steps, "batch_size": args.batch_size, "n_train": len(train),
        "n_test": len(test), "wer_llm_heldout": w_llm, "wer_llm_seen": w_seen, "wer_whisper": w_whisper,
        "rows": [{"ref": r, "llm": h, "whisper": w} for r, h, w in zip(refs_test, hyp_test, hyp_whisper)]}, indent=1))


if __name__ == "__main__":
    main()
