"""Time to first token and tokens/s: MultimodalLM with one adapter input vs the plain LLM, same total prompt length.

    python benchmarks/llm.py                       # SmolLM2-135M-Instruct from $ANYALIGN_ASSETS
    python benchmarks/llm.py --llm DIR [--gguf-file NAME] --media-tokens 64 --device cuda

The adapter path includes everything MultimodalLM adds: prompt planning/tokenization, the encoder (a small
Conv1d IMU net on a [6, 100] window), the projector, the splice and `generate(inputs_embeds=...)`. The baseline
is the unmodified `llm.generate(input_ids)` on a prompt of identical length (the soft positions replaced by a
text token). Target: overhead under 10% on both numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from anyalign.adapter import build_adapter
from anyalign.encoders.custom import wrap_module
from anyalign.llm import MultimodalLM


class ImuNet(nn.Module):
    """[B, 6, 100] IMU windows -> [B, 25, 64] tokens (two strided convolutions)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(6, 64, 5, stride=2, padding=2), nn.GELU(),
                                 nn.Conv1d(64, 64, 5, stride=2, padding=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).transpose(1, 2)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_pair(fns: list, device: torch.device, repeats: int) -> list[float]:
    """Median wall time of each `fn()`, runs interleaved (so machine load hits both alike) after a warm-up."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main() -> None:
    assets = Path(os.environ.get("ANYALIGN_ASSETS", "/tmp/assets"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm", default=str(assets / "llm" / "SmolLM2-135M-Instruct"))
    parser.add_argument("--gguf-file", default="SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--media-tokens", type=int, default=32, help="soft tokens of the one adapter input")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gguf = args.gguf_file if args.gguf_file and (Path(args.llm) / args.gguf_file).is_file() else None

    torch.manual_seed(0)
    encoder = wrap_module(ImuNet(), modality="imu", token_dim=64,
                          collate=lambda xs: torch.stack([torch.as_tensor(x, dtype=torch.float32) for x in xs]))
    mm = MultimodalLM.from_pretrained(args.llm, gguf_file=gguf, device=device)
    adapter = build_adapter("imu", encoder.freeze(), llm_dim=mm.hidden_size,
                            llm_projector={"name": "perceiver", "num_latents": args.media_tokens}).eval()
    mm = MultimodalLM(mm.llm, mm.tokenizer, {"imu": adapter.to(device)}, source=mm.source)
    window = torch.randn(6, 100)
    prompt = "<imu>\nThe recording above comes from a wrist sensor. What is the person doing, and how fast?"
    gen = {"do_sample": False}

    with torch.no_grad():
        prep = mm.prepare([prompt], inputs={"imu": [window]})
    filler = mm.tokenizer(" the", add_special_tokens=False)["input_ids"][0]
    plain_ids = prep.layout.input_ids.masked_fill(prep.layout.soft_mask, filler)  # same length, all text
    plain_mask = torch.ones_like(plain_ids)
    length = plain_ids.shape[1]

    def plain(n: int) -> None:
        out = mm.llm.generate(plain_ids, attention_mask=plain_mask, max_new_tokens=n, min_new_tokens=n,
                              pad_token_id=mm.pad_id, **gen)
        assert out.shape[1] - length == n

    def ours(n: int) -> None:
        mm.generate([prompt], inputs={"imu": [window]}, max_new_tokens=n, min_new_tokens=n, **gen)

    ttfts = timed_pair([lambda: plain(1), lambda: ours(1)], device, args.repeats)
    totals = timed_pair([lambda: plain(args.new_tokens), lambda: ours(args.new_tokens)], device, args.repeats)
    rows = {}
    for name, ttft, total in zip(("plain LLM", "MultimodalLM + 1 imu input"), ttfts, totals):
        rows[name] = (ttft, args.new_tokens / total, (args.new_tokens - 1) / max(total - ttft, 1e-9))

    print(f"LLM: {args.llm}{' / ' + gguf if gguf else ''}  device: {device}  threads: {args.threads}")
    print(f"prompt: {length} positions ({int(prep.layout.soft_mask.sum())} soft tokens from one imu input), "
          f"{args.new_tokens} new tokens, median of {args.repeats}")
    print(f"{'':30s} {'TTFT ms':>9s} {'tokens/s':>9s} {'decode tok/s':>13s}")
    for name, (ttft, tps, dec) in rows.items():
        print(f"{name:30s} {ttft * 1e3:9.1f} {tps:9.1f} {dec:13.1f}")
    (b_ttft, b_tps, b_dec), (m_ttft, m_tps, m_dec) = rows.values()
    print(f"ratios (MultimodalLM / plain): TTFT x{m_ttft / b_ttft:.3f}, tokens/s x{m_tps / b_tps:.3f}, "
          f"decode tokens/s x{m_dec / b_dec:.3f}  (target: TTFT <= x1.10, tokens/s >= x0.91)")


if __name__ == "__main__":
    main()
