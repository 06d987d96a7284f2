"""Speech benchmarks on real Whisper tiny.en and synthesised speech, each part against a baseline in this process.

    python benchmarks/speech.py [--parts whisper-bf16,extract] [--n 8] [--batch-size 4] [--repeats 3]

whisper-bf16: the Whisper tiny.en encoder (`python -m anyalign.assets whisper-tiny.en`) in fp32 vs under bf16
    autocast on the same collated batches: clips/s of each, the ratio, and the accuracy cost as the cosine between
    the two runs' features (per valid frame, and pooled). The CPU's bf16 support (avx512_bf16, amx) is printed:
    without it bf16 is emulated and slower.
extract: the extraction pipeline (`anyalign.encoders.extract.extract`: input discovery, DataLoader worker, shards,
    manifest) vs a bare loop of `encoder.run(encoder.collate([encoder.load(x) ...]))` on the same wav files.
Clips are espeak-ng sentences in several voices (pip espeakng-loader), written as 16 kHz wavs. Runs alternate
and medians of `--repeats` are reported. Whisper always encodes a 30 s window, so the cost per clip does not
depend on its length. About a minute on 2 cores with the defaults.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from anyalign.assets import asset_path
from anyalign.encoders import create_encoder
from anyalign.encoders.audio_io import resample
from anyalign.encoders.extract import extract

SENTENCES = ["Please turn on the kitchen light.", "What time does the train leave?", "Open the door and go outside.",
             "I would like a cup of coffee.", "The meeting starts at nine tomorrow.", "Call my sister after lunch."]
VOICES = ["en-us", "en-us+f1", "en+m2", "en-gb-x-rp+f3"]


def cpu_bf16_flags() -> str:
    """The CPU's bf16-relevant instruction-set flags from /proc/cpuinfo (empty on other systems)."""
    try:
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown (no /proc/cpuinfo)"
    wanted = ["avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx_vnni"]
    return ", ".join(f"{f}={'yes' if f in flags else 'no'}" for f in wanted)


def synthesise(out: Path, n: int) -> list[Path]:
    """`n` espeak-ng clips (sentence x voice) as 16 kHz wavs in `out`."""
    from anyalign.demos.speech_corpus import EspeakEngine

    eng = EspeakEngine.get()
    paths = []
    for i in range(n):
        text, voice = SENTENCES[i % len(SENTENCES)], VOICES[(i // len(SENTENCES)) % len(VOICES)]
        pcm = eng.synthesize(text, voice, 150 + 10 * (i % 4), 45 + 5 * (i % 3))
        paths.append(out / f"{i:04d}.wav")
        sf.write(paths[-1], resample(pcm.astype(np.float32) / 32768.0, eng.sample_rate, 16000), 16000)
    return paths


def median_of(fn: Callable[[], float], repeats: int) -> tuple[float, list[float]]:
    runs = [fn() for _ in range(repeats)]
    return statistics.median(runs), runs


def part_whisper_bf16(args: argparse.Namespace, clips: list[Path], work: Path) -> None:
    """Whisper tiny.en encoder: fp32 vs bf16 autocast throughput, and the cosine of their features."""
    fp32 = create_encoder("whisper", pretrained=args.whisper)
    bf16 = create_encoder("whisper", pretrained=args.whisper, autocast="bf16")
    waves = [fp32.load(p) for p in clips]
    batches = [fp32.collate(waves[i:i + args.batch_size]) for i in range(0, len(waves), args.batch_size)]

    def rate(enc) -> Callable[[], float]:
        def run() -> float:
            t = time.perf_counter()
            with torch.inference_mode():
                for b in batches:
                    enc.run(b)
            return len(waves) / (time.perf_counter() - t)
        return run

    with torch.inference_mode():  # warm-up, and the features compared
        a = [fp32.run(b) for b in batches]
        c = [bf16.run(b) for b in batches]
    frame_cos = torch.cat([F.cosine_similarity(x.tokens[x.mask], y.tokens[y.mask], dim=-1) for x, y in zip(a, c)])
    pooled_cos = torch.cat([F.cosine_similarity(x.pooled, y.pooled, dim=-1) for x, y in zip(a, c)])
    runs32, runs16 = [], []
    for _ in range(args.repeats):  # alternate, so load changes hit both
        runs32.append(rate(fp32)())
        runs16.append(rate(bf16)())
    r32, r16 = statistics.median(runs32), statistics.median(runs16)
    print(f"[whisper-bf16] Whisper tiny.en encoder, {len(waves)} clips ({sum(len(w) for w in waves) / 16000:.1f} s "
          f"of speech, each padded to 30 s), batch {args.batch_size}, median of {args.repeats}")
    print(f"  cpu: {cpu_bf16_flags()}")
    print(f"  fp32:          {r32:7.2f} clips/s   runs: {', '.join(f'{r:.2f}' for r in runs32)}")
    print(f"  bf16 autocast: {r16:7.2f} clips/s   runs: {', '.join(f'{r:.2f}' for r in runs16)}")
    print(f"  ratio bf16 / fp32: {r16 / r32:.3f}")
    print(f"  accuracy cost: cosine(bf16, fp32) per valid frame mean {frame_cos.mean():.5f} min {frame_cos.min():.5f}"
          f" ({frame_cos.numel()} frames); pooled mean {pooled_cos.mean():.5f} min {pooled_cos.min():.5f}")


def part_extract(args: argparse.Namespace, clips: list[Path], work: Path) -> None:
    """The extraction pipeline vs a bare load/collate/forward loop on the same wav files."""
    enc = create_encoder("whisper", pretrained=args.whisper)
    folder = clips[0].parent
    values = [str(p) for p in clips]

    def bare() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(values), args.batch_size):
                enc.run(enc.collate([enc.load(v) for v in values[i:i + args.batch_size]]))
        return len(values) / (time.perf_counter() - t)

    counter = iter(range(10_000))

    def pipeline() -> float:
        t = time.perf_counter()
        summary = extract(enc, folder, work / f"features{next(counter)}", batch_size=args.batch_size,
                          num_workers=args.workers, shard_size=10_000, progress=False)
        assert summary.n_ok == len(values), summary.failures[:3]
        return summary.n_ok / (time.perf_counter() - t)

    bare()  # warm-up
    runs = [(bare(), pipeline()) for _ in range(args.repeats)]
    b, p = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
    print(f"[extract] Whisper tiny.en, {len(values)} wav files, batch {args.batch_size}, workers {args.workers}, "
          f"median of {args.repeats}")
    print(f"  bare loop (load + collate + forward): {b:7.2f} clips/s   runs: {', '.join(f'{r[0]:.2f}' for r in runs)}")
    print(f"  extract pipeline (workers + shards):  {p:7.2f} clips/s   runs: {', '.join(f'{r[1]:.2f}' for r in runs)}")
    print(f"  ratio pipeline / bare: {p / b:.3f}  (overhead {100 * (b / p - 1):+.1f}%)")


# --- speech adapter step vs pure compute ------------------------------------------------------------------------
def part_adapter(args: argparse.Namespace, clips: list[Path], work: Path) -> None:
    """One training step of the Whisper -> perceiver -> text-space adapter (configs/speech_text_contrastive.yaml's
    head) through the adapter API on wav files, vs the pure compute it contains (frozen encoder forward + head
    forward/backward + AdamW on pre-collated tensors), vs a step from cached features (head only)."""
    from anyalign.adapter import build_adapter
    from anyalign.align.losses import InfoNCE
    from anyalign.encoders.spec import EncoderSpec

    spec = EncoderSpec("whisper", args.whisper)
    adapter = build_adapter("audio", spec, embed_dim=384,
                            embed_projector={"name": "perceiver", "num_latents": 8, "dim": 256, "depth": 2})
    enc = adapter.encoder
    loss_fn = InfoNCE(0.05)
    params = [p for p in adapter.parameters() if p.requires_grad] + list(loss_fn.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    values = [str(p) for p in clips[: args.batch_size]]
    torch.manual_seed(0)
    targets = F.normalize(torch.randn(len(values), 384), dim=-1)  # stands in for the frozen text embeddings

    def update(feats: object) -> None:
        emb, _ = adapter.embed_output(feats)
        loss = loss_fn(emb, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def api_step() -> float:
        t = time.perf_counter()
        with torch.no_grad():
            feats = enc.run(enc.collate([enc.load(v) for v in values]))
        update(feats)
        return time.perf_counter() - t

    batch = enc.collate([enc.load(v) for v in values])

    def pure_step() -> float:
        t = time.perf_counter()
        with torch.no_grad():
            feats = enc.encode(batch)
        update(feats)
        return time.perf_counter() - t

    with torch.no_grad():
        cached = enc.encode(batch)

    def cached_step() -> float:
        t = time.perf_counter()
        update(cached)
        return time.perf_counter() - t

    api_step()  # warm-up
    runs = [(api_step(), pure_step(), cached_step()) for _ in range(args.repeats)]
    a, p, c = (statistics.median(r[i] for r in runs) for i in range(3))
    print(f"[adapter] Whisper tiny.en + perceiver head -> 384-d InfoNCE, batch {len(values)}, "
          f"median of {args.repeats}")
    print(f"  step via the adapter API on wav files: {a * 1000:8.1f} ms")
    print(f"  pure compute (pre-collated tensors):   {p * 1000:8.1f} ms   ratio step / pure {a / p:.3f}")
    print(f"  step from cached features (head only): {c * 1000:8.1f} ms   ratio step / cached {a / c:.1f}x "
          f"(why the speech recipes train from `anyalign extract` features)")


# ------------------------------------------------------------------------------------------------------------------

PARTS: dict[str, Callable[[argparse.Namespace, list[Path], Path], None]] = {
    "whisper-bf16": part_whisper_bf16,
    "extract": part_extract,
    "adapter": part_adapter,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of: {', '.join(PARTS)}")
    ap.add_argument("--whisper", default=None, help="Whisper folder (default: the converted whisper-tiny.en asset)")
    ap.add_argument("--n", type=int, default=8, help="synthesised clips")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise SystemExit(f"error: unknown part(s) {', '.join(unknown)}; expected: {', '.join(PARTS)}")
    args.whisper = args.whisper or str(asset_path("whisper-tiny.en"))
    if not (Path(args.whisper) / "config.json").is_file():
        raise SystemExit(f"error: {args.whisper} is not a Whisper folder; run `python -m anyalign.assets "
                         f"whisper-tiny.en` or pass --whisper")
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpu count {os.cpu_count()}, "
          f"load average {load[0]}")
    work = Path(tempfile.mkdtemp(prefix="anyalign-bench-speech-"))
    try:
        (work / "clips").mkdir()
        t = time.perf_counter()
        clips = synthesise(work / "clips", args.n)
        print(f"synthesised {len(clips)} clips with espeak-ng in {time.perf_counter() - t:.1f} s")
        for name in parts:
            PARTS[name](args, clips, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
