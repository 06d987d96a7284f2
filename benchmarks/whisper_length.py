"""Whisper on the clip's own length vs Whisper's 30 s pad: extraction speed of short clips, and how far apart the
features of the two paths are, in one process on real Whisper tiny.en and espeak-ng speech.

    python benchmarks/whisper_length.py [--n 16] [--seconds 2] [--batch-size 8] [--repeats 3]

speed: `n` clips of exactly `--seconds` (espeak-ng sentences in several voices, cut or padded with silence), as
    the extractor processes them: collate (log-mel) + encoder forward, batch `--batch-size`, fp32, for
    `padding="window"` (every clip padded to 30 s: the default) and `padding="longest"` (the clip's own frames).
    Runs alternate; medians of `--repeats` and their ratio (Done-when of issue 22: >= 5x on 2 s clips).
agreement: per clip length (0.5 ... 10 s of speech + silence), the cosine between the two paths' tokens on the
    valid frames (mean and the lowest frame), their largest absolute difference (next to the largest |value| of
    the padded tokens), and the pooled (masked-mean) cosine. The paths are NOT equal: in the padded path the
    real frames also attend to the padding, which Whisper was trained with; only a full 30 s clip gives the same
    tokens (checked last).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from anyalign.assets import asset_path
from anyalign.encoders import create_encoder
from anyalign.encoders.audio_io import resample

SENTENCES = ["Please turn on the kitchen light.", "What time does the train leave?", "Open the door and go outside.",
             "I would like a cup of coffee.", "The meeting starts at nine tomorrow.", "Call my sister after lunch.",
             "The weather will be sunny tomorrow afternoon.", "She bought three apples and a loaf of bread."]
VOICES = ["en-us", "en-us+f1", "en+m2", "en-gb-x-rp+f3"]
RATE = 16000


def speech(n: int) -> list[np.ndarray]:
    """`n` espeak-ng sentences (sentence x voice) at 16 kHz, float32."""
    from anyalign.demos.speech_corpus import EspeakEngine

    eng = EspeakEngine.get()
    out = []
    for i in range(n):
        text, voice = SENTENCES[i % len(SENTENCES)], VOICES[(i // len(SENTENCES)) % len(VOICES)]
        pcm = eng.synthesize(text, voice, 150 + 10 * (i % 4), 45 + 5 * (i % 3))
        out.append(resample(pcm.astype(np.float32) / 32768.0, eng.sample_rate, RATE).astype(np.float32))
    return out


def fit(wave: np.ndarray, seconds: float) -> np.ndarray:
    """`wave` cut to, or padded with silence to, exactly `seconds`."""
    n = int(round(seconds * RATE))
    return wave[:n] if len(wave) >= n else np.pad(wave, (0, n - len(wave)))


def part_speed(args: argparse.Namespace, window, longest) -> None:
    waves = [fit(w, args.seconds) for w in speech(args.n)]
    chunks = [waves[i:i + args.batch_size] for i in range(0, len(waves), args.batch_size)]

    def rate(enc) -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            for c in chunks:
                enc.run(enc.collate(c))
        return len(waves) / (time.perf_counter() - t)

    rate(window), rate(longest)  # warm-up
    runs_w, runs_l = [], []
    for _ in range(args.repeats):  # alternate, so load changes hit both
        runs_w.append(rate(window))
        runs_l.append(rate(longest))
    rw, rl = statistics.median(runs_w), statistics.median(runs_l)
    print(f"[speed] Whisper tiny.en, {len(waves)} clips of {args.seconds:g} s, batch {args.batch_size}, collate + "
          f"forward, fp32, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"  padding='window'  (30 s pad): {rw:8.2f} clips/s   runs: {', '.join(f'{r:.2f}' for r in runs_w)}")
    print(f"  padding='longest' (own length): {rl:6.2f} clips/s   runs: {', '.join(f'{r:.2f}' for r in runs_l)}")
    print(f"  ratio longest / window: {rl / rw:.2f}x")


def part_agreement(args: argparse.Namespace, window, longest) -> None:
    waves = speech(8)
    print("[agreement] the two paths' tokens on the valid frames, 8 espeak clips per length (speech cut or padded "
          "with silence to the length)")
    print("  length  frames  cos mean  cos min  max|diff|  max|padded|  pooled cos mean/min")
    with torch.inference_mode():
        for seconds in args.lengths:
            clips = [fit(w, seconds) for w in waves]
            a, b = window(clips), longest(clips)
            n = int(a.mask[0].sum())
            x, y = a.tokens[:, :n], b.tokens[:, :n]
            cos = F.cosine_similarity(x, y, dim=-1)  # [8, n]
            pooled = F.cosine_similarity(a.pooled, b.pooled, dim=-1)
            unit = F.normalize(a.pooled, dim=-1)
            others = (unit @ unit.T)[~torch.eye(len(clips), dtype=torch.bool)]  # different sentences, padded path
            print(f"  {seconds:5.1f} s  {n:6d}  {cos.mean():8.4f}  {cos.min():7.4f}  {(x - y).abs().max():9.3f}  "
                  f"{x.abs().max():11.3f}  {pooled.mean():.4f} / {pooled.min():.4f}   (different clips, padded: "
                  f"pooled cos mean {others.mean():.4f})")
        full = np.tile(waves[0], 30 * RATE // len(waves[0]) + 1)[: 30 * RATE]
        diff = (window([full]).tokens - longest([full]).tokens).abs().max()
        print(f"  a full 30 s clip: max|diff| {diff:.2e} (the same computation)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--whisper", default=None, help="Whisper folder (default: the whisper-tiny.en asset)")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lengths", type=float, nargs="+", default=[0.5, 1.0, 2.0, 3.0, 5.0, 10.0])
    ap.add_argument("--parts", default="speed,agreement")
    args = ap.parse_args()
    folder = args.whisper or str(asset_path("whisper-tiny.en"))
    window = create_encoder("whisper", pretrained=folder)
    longest = create_encoder("whisper", pretrained=folder, padding="longest")
    parts = args.parts.split(",")
    if "speed" in parts:
        part_speed(args, window, longest)
    if "agreement" in parts:
        part_agreement(args, window, longest)


if __name__ == "__main__":
    main()
