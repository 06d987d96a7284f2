"""Forward+backward cost of each registered projector per 1k input tokens, relative to a plain linear layer.

    python benchmarks/projectors.py [--device cuda] [--batch 8] [--tokens 256] [--in-dim 768] [--out-dim 576]

Every projector gets the same input `[batch, tokens, in_dim]` (with ragged lengths: a quarter of each row is
padding) and the same in/out dims, in training mode (RVQ's EMA updates included). The baseline is
`torch.nn.Linear(in_dim, out_dim)` on the same input, timed in the same process.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import torch
from torch import nn
from torch.utils.benchmark import Timer

from anyalign.projectors import create_projector, list_projectors

# Options a projector needs that have no default; everything else runs with its defaults.
REQUIRED: dict[str, dict[str, Any]] = {"universal": {"modalities": ["bench"]}}


def time_step(step: Any, min_run_time: float) -> float:
    """Median seconds of one forward+backward step, after a warm-up step."""
    step()
    stats = Timer("step()", globals={"step": step}).blocked_autorange(min_run_time=min_run_time)
    return stats.median


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--in-dim", type=int, default=768)
    ap.add_argument("--out-dim", type=int, default=576)
    ap.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per projector")
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device(args.device)
    x = torch.randn(args.batch, args.tokens, args.in_dim, device=dev)
    lengths = torch.randint(args.tokens * 3 // 4, args.tokens + 1, (args.batch,), device=dev)
    lengths[0] = args.tokens
    mask = torch.arange(args.tokens, device=dev)[None] < lengths[:, None]  # [B, T]
    n_tokens = int(mask.sum())

    baseline = nn.Linear(args.in_dim, args.out_dim).to(dev)

    def linear_step() -> None:
        baseline(x).square().mean().backward()

    base = time_step(linear_step, args.min_run_time)
    print(f"device={dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else os.cpu_count()} "
          f"{'' if dev.type == 'cuda' else 'cpu cores, ' + str(torch.get_num_threads()) + ' threads'}), "
          f"input [{args.batch}, {args.tokens}, {args.in_dim}] ({n_tokens} valid tokens), out_dim={args.out_dim}")
    print(f"{'projector':<12}{'out tokens':>11}{'params':>12}{'ms / 1k tok':>13}{'x linear':>10}")
    print(f"{'nn.Linear':<12}{args.tokens:>11}{sum(p.numel() for p in baseline.parameters()):>12,}"
          f"{1e3 * base * 1000 / n_tokens:>13.3f}{1.0:>10.2f}")
    for name in list_projectors():
        proj = create_projector(name, in_dim=args.in_dim, out_dim=args.out_dim, **REQUIRED.get(name, {}))
        proj = proj.to(dev).train()
        modality = REQUIRED.get(name, {}).get("modalities", [None])[0]

        def step(proj: nn.Module = proj, modality: str | None = modality) -> None:
            out = proj(x, mask, modality=modality)
            loss = out.tokens.square().mean() + sum(out.losses.values())
            loss.backward()

        sec = time_step(step, args.min_run_time)
        n_out = proj(x, mask, modality=modality).tokens.shape[1]
        params = sum(p.numel() for p in proj.parameters())
        print(f"{name:<12}{n_out:>11}{params:>12,}{1e3 * sec * 1000 / n_tokens:>13.3f}{sec / base:>10.2f}")


if __name__ == "__main__":
    main()
