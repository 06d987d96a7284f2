"""Training metrics: one JSON line per log/eval event, optional TensorBoard, and a PNG of the curves."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..io import atomic_path

logger = logging.getLogger(__name__)


class MetricsLog:
    """Appends `{"step": ..., **metrics}` lines to `metrics.jsonl` (main process only) and mirrors them to
    TensorBoard through accelerate's tracker when enabled."""

    def __init__(self, path: str | os.PathLike, accelerator: Any = None, *, enabled: bool = True) -> None:
        self.path = Path(path)
        self.accelerator = accelerator
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after `step` (a resumed run re-logs them), atomically."""
        if not self.enabled or not self.path.is_file():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(line + "\n" for line in keep))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if self.accelerator is not None and getattr(self.accelerator, "trackers", None):
            self.accelerator.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def plot_curves(records: list[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path | None:
    """Loss terms, learning rate and eval metrics against the step, as one PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if "loss" in r]
    evals = [r for r in records if any(k.startswith("eval/") for k in r)]
    if not train and not evals:
        return None
    terms = sorted({k for r in train for k in r if k.startswith("loss/")})
    loss_keys = ["loss"] + (terms if len(terms) > 1 else [])  # one term alone would just repeat the total
    eval_keys = sorted({k for r in evals for k in r if k.startswith("eval/")})
    panels = 2 + bool(eval_keys)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8))
    for k in loss_keys:
        pts = [(r["step"], r[k]) for r in train if k in r]
        axes[0].plot(*zip(*pts), label=k, lw=1.8 if k == "loss" else 1.0)
    axes[0].set(xlabel="step", ylabel="loss", title="training loss")
    axes[0].legend(fontsize=7)
    lr = [(r["step"], r["lr"]) for r in train if "lr" in r]
    if lr:
        axes[1].plot(*zip(*lr))
    axes[1].set(xlabel="step", ylabel="learning rate", title="schedule")
    if eval_keys:
        for k in eval_keys:
            pts = [(r["step"], r[k]) for r in evals if k in r]
            axes[2].plot(*zip(*pts), marker="o", label=k.removeprefix("eval/"),
                         ls="--" if k.endswith("/chance") else "-")
        axes[2].set(xlabel="step", title="evaluation")
        axes[2].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


__all__ = ["MetricsLog", "plot_curves"]
