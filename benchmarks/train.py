"""Adapter-training throughput from cached features vs the frozen encoder run every step, and the step time vs
the projector's pure compute.

    python benchmarks/train.py                       # EfficientNet-Lite0 (real weights) on real video frames
    python benchmarks/train.py --images 256 --batch 32 --steps 30 --device cuda

Both runs use the same recipe and the real `Trainer` (accelerate loop, AdamW, cosine schedule, clipping, logging):
an MLP image adapter bound contrastively to the frozen MiniLM text space. The raw run decodes and encodes every
image each step with the frozen EfficientNet-Lite0; the cached run reads `anyalign extract`-style feature shards
written once beforehand. The pure-compute baseline is the projector's forward + backward + optimizer step on a batch
already in memory, and the machine's limit is a large fp32 GEMM timed in the same process. On a shared machine the
load changes from second to second, so the pure-compute step is also timed right after every trainer step (inside
the step callback, outside the trainer's timed step) and the ratio is the median of these adjacent pairs.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _frames(videos: Path, out: Path, n: int) -> list[Path]:
    """Save `n` real video frames as JPEG files (spread over the asset videos)."""
    import av

    files = sorted(videos.glob("*.mp4"))
    paths: list[Path] = []
    per = -(-n // len(files))
    for f in files:
        with av.open(str(f)) as c:
            for i, frame in enumerate(c.decode(video=0)):
                if i % 3:
                    continue
                p = out / f"{f.stem}-{i:04d}.jpg"
                frame.to_image().convert("RGB").save(p, quality=90)
                paths.append(p)
                if len(paths) % per == 0:
                    break
        if len(paths) >= n:
            break
    return paths[:n]


class StepTimer:
    """Trainer callback: wall time of every optimizer step, each followed (untimed for the trainer) by one timed
    pure-compute step when `pure` is given, so both see the same load."""

    def __init__(self, device: torch.device, pure: PureCompute | None = None) -> None:
        self.device, self.pure = device, pure
        self.times: list[float] = []
        self.pure_times: list[float] = []
        self.last: float | None = None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def on_step_end(self, trainer, step: int, logs: dict) -> None:  # noqa: ANN001
        self._sync()
        now = time.perf_counter()
        if self.last is not None:
            self.times.append(now - self.last)
            if self.pure is not None:
                self.pure_times.append(self.pure.timed_step())
                now = time.perf_counter()
        self.last = now


def _recipe(data: dict, args: argparse.Namespace, out: Path, assets: Path, steps: int) -> Path:
    recipe = {
        "name": "bench",
        "adapters": {"image": {"encoder": {"name": "timm-image",
                                           "pretrained": str(assets / "image" / "efficientnet-lite0.pth"),
                                           "options": {"model": "efficientnet_lite0"}},
                               "embed_projector": {"name": "mlp", "hidden_dim": args.hidden}}},
        "anchors": {"text": {"encoder": {"name": "text", "pretrained": str(assets / "text" / "all-MiniLM-L6-v2")}}},
        "data": {"train": [data]},
        "train": {"batch_size": args.batch, "max_steps": steps, "lr": 1e-3, "save_every": 10_000,
                  "log_every": 10_000, "tensorboard": False, "num_workers": args.workers,
                  "stream": data.pop("stream", "auto"), "stream_lanes": data.pop("lanes", None)},
        "eval": {"at_start": False},
    }
    path = out / f"{data['kind']}-{recipe['train']['stream']}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _train(recipe: Path, out: Path, device: torch.device, pure: PureCompute | None = None
           ) -> tuple[list[float], list[float]]:
    """Trainer step times (and the pure-compute step timed after each one, when `pure` is given)."""
    import shutil

    from anyalign.align import Trainer, load_recipe

    shutil.rmtree(out, ignore_errors=True)
    timer = StepTimer(device, pure)
    Trainer(load_recipe(recipe), output_dir=out, callbacks=[timer]).fit()
    return timer.times[1:], timer.pure_times[1:]  # the first timed step still warms caches


def _extract(images: list[Path], out: Path, assets: Path, batch: int) -> tuple[Path, int]:
    """Encode every image once with the frozen encoder into feature shards (the `anyalign extract` layout);
    returns the folder and the number of tokens per image."""
    from anyalign.encoders import create_encoder
    from anyalign.features import FeatureWriter, write_manifest

    pretrained = str(assets / "image" / "efficientnet-lite0.pth")
    enc = create_encoder("timm-image", pretrained=pretrained, model="efficientnet_lite0")
    out.mkdir()
    shards, tokens = [], 0
    for i in range(0, len(images), batch):
        chunk = images[i:i + batch]
        name = f"features-r00-{len(shards):05d}.tar"
        with FeatureWriter(out / name) as writer:
            feats = enc(chunk)
            writer.add_batch([p.stem for p in chunk], feats, [{"source": str(p), "caption": p.stem.replace("-", " ")}
                                                               for p in chunk])
        shards.append({"file": name, "count": len(chunk)})
        tokens = int(feats.mask[0].sum())
    write_manifest(out, {"encoder": "timm-image", "pretrained": pretrained, "modality": "image",
                         "token_dim": enc.token_dim, "pooled_dim": enc.pooled_dim, "dtype": "float16",
                         "shards": shards, "failures": []})
    return out, tokens


class PureCompute:
    """The projector's forward + backward + AdamW step on an in-memory batch (the trainer's compute, nothing else)."""

    def __init__(self, args: argparse.Namespace, device: torch.device, tokens: int) -> None:
        from anyalign.adapter import AdapterConfig, ModalityAdapter
        from anyalign.align.losses import InfoNCE
        from anyalign.encoders import EncoderOutput

        cfg = AdapterConfig(modality="image", encoder="timm-image", in_dim=1280, embed_dim=384,
                            embed_projector={"name": "mlp", "hidden_dim": args.hidden})
        self.device = device
        self.head = ModalityAdapter(cfg).to(device)
        self.loss_fn = InfoNCE().to(device)
        self.opt = torch.optim.AdamW([*self.head.parameters(), *self.loss_fn.parameters()], lr=1e-3,
                                     fused=True)  # as the Trainer
        self.x = EncoderOutput(torch.randn(args.batch, tokens, 1280, device=device),
                               torch.ones(args.batch, tokens, dtype=torch.bool, device=device),
                               torch.randn(args.batch, 1280, device=device))
        self.anchor = torch.nn.functional.normalize(torch.randn(args.batch, 384, device=device), dim=-1)
        self.flops = 3 * 2 * args.batch * tokens * (1280 * args.hidden + args.hidden * 384)  # fwd + 2x bwd matmuls
        for _ in range(3):
            self.timed_step()

    def step(self) -> None:
        emb, _ = self.head.embed_output(self.x)
        self.loss_fn(emb, self.anchor).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def timed_step(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        self.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0


def _ratio(steps: list[float], pure: list[float]) -> float:
    """Median of (trainer step / the pure-compute step timed right after it)."""
    return statistics.median(a / b for a, b in zip(steps, pure))


def _gemm_peak(device: torch.device, n: int = 2048) -> float:
    """Achieved fp32 GEMM FLOP/s on this machine (the practical compute limit)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assets", default=os.environ.get("ANYALIGN_ASSETS", ""))
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256, help="MLP projector width (tokens -> 384-d space)")
    parser.add_argument("--raw-steps", type=int, default=5, help="0: skip the frozen-encoder run")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of (raw, map, stream, pure)")
    parser.add_argument("--shard-size", type=int, default=32, help="records per feature shard")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args()
    assets = Path(args.assets)
    if not (assets / "image" / "efficientnet-lite0.pth").is_file():
        raise SystemExit("set ANYALIGN_ASSETS (or --assets) to the folder holding image/efficientnet-lite0.pth")
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        images = _frames(assets / "video", root / "images", args.images)
        t0 = time.perf_counter()
        feats, tokens = _extract(images, root / "features", assets, args.shard_size)
        extract_s = time.perf_counter() - t0
        raw = _recipe({"kind": "files", "path": str(root / "images"), "glob": "*.jpg", "modality": "image"},
                      args, root, assets, args.raw_steps + 2)
        cached = _recipe({"kind": "features", "path": str(feats), "stream": "map"}, args, root, assets,
                         args.steps + 2)
        streamed = _recipe({"kind": "features", "path": str(feats), "stream": "stream", "lanes": 2}, args, root,
                           assets, args.steps + 2)
        raw_ts, map_ts, stream_ts, pure_ts = [], [], [], []
        map_pure, stream_pure = [], []
        pure = PureCompute(args, device, tokens)
        for _ in range(args.rounds):  # interleaved: a load change on the machine hits every variant alike
            if args.raw_steps:
                raw_ts += _train(raw, root / "run-raw", device)[0]
            ts, ps = _train(cached, root / "run-map", device, pure)
            map_ts, map_pure = map_ts + ts, map_pure + ps
            ts, ps = _train(streamed, root / "run-stream", device, pure)
            stream_ts, stream_pure = stream_ts + ts, stream_pure + ps
            pure_ts.append(statistics.median(pure.timed_step() for _ in range(args.repeats)))
        flops = pure.flops
        raw_t, cached_t = statistics.median(raw_ts or [math.nan]), statistics.median(map_ts)
        stream_t, pure_t = statistics.median(stream_ts), statistics.median(pure_ts + map_pure + stream_pure)
    peak = _gemm_peak(device)
    print(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch}, {len(images)} real video frames")
    print(f"one-off extraction: {extract_s:.1f} s ({len(images) / extract_s:.1f} images/s)")
    print(f"frozen encoder every step: {raw_t * 1e3:8.1f} ms/step  {args.batch / raw_t:9.1f} samples/s")
    print(f"cached features (map):     {cached_t * 1e3:8.1f} ms/step  {args.batch / cached_t:9.1f} samples/s")
    print(f"cached features (stream):  {stream_t * 1e3:8.1f} ms/step  {args.batch / stream_t:9.1f} samples/s")
    print(f"  -> cached / on-the-fly throughput: map {raw_t / cached_t:.1f}x, stream {raw_t / stream_t:.1f}x "
          f"({args.rounds} interleaved rounds)")
    print(f"projector pure compute:    {pure_t * 1e3:8.1f} ms/step  ({flops / pure_t / 1e9:.1f} GFLOP/s; "
          f"fp32 GEMM peak {peak / 1e9:.1f} GFLOP/s = {flops / pure_t / peak:.0%} of the limit)")
    print(f"  -> trainer step / pure compute (median of adjacent pairs): map {_ratio(map_ts, map_pure):.2f}x, "
          f"stream {_ratio(stream_ts, stream_pure):.2f}x (data loading, anchor lookup, clipping, scheduler, "
          f"accelerate; goal <= 1.2x); ratio of medians: map {cached_t / pure_t:.2f}x, "
          f"stream {stream_t / pure_t:.2f}x")
    print(f"load: {os.getloadavg()}")
    if args.json:
        from anyalign.io import write_json

        write_json(args.json, {"device": str(device), "threads": torch.get_num_threads(), "batch": args.batch,
                               "images": len(images), "rounds": args.rounds, "workers": args.workers,
                               "raw_ms": raw_t * 1e3, "map_ms": cached_t * 1e3, "stream_ms": stream_t * 1e3,
                               "pure_ms": pure_t * 1e3, "map_over_pure": _ratio(map_ts, map_pure),
                               "stream_over_pure": _ratio(stream_ts, stream_pure), "gemm_gflops": peak / 1e9,
                               "load": os.getloadavg()})


if __name__ == "__main__":
    main()
