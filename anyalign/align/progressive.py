"""Progressive alignment (OneLLM, Han et al., 2024): modalities join the shared projector one stage at a time.

A recipe with `progressive:` runs one ordinary stage per entry into `<output>/stage<k>/`, each starting from the
previous stage's adapters and `_shared/` projectors. Earlier modalities' data stay in the mix at about `replay` of the
training items (whole sources repeated, never subsampled); every stage evaluates every modality it has, and
`progressive.json` holds one row per stage, so forgetting is visible.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..io import read_json, write_json
from .config import DataSource, DataSpec, Recipe
from .sources import read_source, source_modality

logger = logging.getLogger(__name__)

MAX_REPEAT = 8  # the largest number of copies of one source used to reach a replay share


def _modality(src: DataSource, where: str) -> str:
    m = source_modality(src)
    if not m:
        raise ConfigError(f"{where}: a progressive recipe needs each data source's modality (set modality: ...)")
    return str(m)


def replay_repeats(earlier: int, new: int, share: float) -> tuple[int, int, float]:
    """Copies `(k_earlier, k_new)` of the earlier and new items (each at most MAX_REPEAT) whose mix puts the earlier
    modalities' share closest to `share`, and that share."""
    if earlier == 0 or share == 0:
        return 0, 1, 0.0
    best = min(((ke, kn) for ke in range(1, MAX_REPEAT + 1) for kn in range(1, MAX_REPEAT + 1)),
               key=lambda k: (abs(k[0] * earlier / (k[0] * earlier + k[1] * new) - share), k[0] + k[1]))
    ke, kn = best
    return ke, kn, ke * earlier / (ke * earlier + kn * new)


@dataclass
class StagePlan:
    """One stage as it will run: its recipe and the data mix it was given."""

    index: int
    recipe: Recipe
    added: list[str]
    modalities: list[str]
    replay_share: float  # share of the stage's training items from earlier modalities


def plan_stages(recipe: Recipe, output_dir: str | os.PathLike) -> list[StagePlan]:
    """The ordinary recipes of a progressive recipe's stages (stage k reads stage k-1's saved outputs)."""
    if recipe.progressive is None:
        raise ValueError("plan_stages: the recipe has no progressive section")
    out = Path(output_dir)
    train = [(s, _modality(s, f"data.train[{i}]")) for i, s in enumerate(recipe.data.train)]
    evals = [(s, _modality(s, f"data.eval[{i}]")) for i, s in enumerate(recipe.data.eval)]
    plans, seen, prev = [], [], None
    for k, stage in enumerate(recipe.progressive.stages, start=1):
        earlier, seen = list(seen), seen + list(stage.add)
        share = recipe.progressive.replay if stage.replay is None else stage.replay
        new_src = [s for s, m in train if m in stage.add]
        old_src = [s for s, m in train if m in earlier]
        if not new_src:
            raise ConfigError(f"progressive.stages[{k - 1}]: no training data for {stage.add}")
        count = {id(s): len(read_source(s, seen)) for s in new_src + old_src}
        ke, kn, achieved = replay_repeats(sum(count[id(s)] for s in old_src), sum(count[id(s)] for s in new_src),
                                          share)
        adapters = {m: dataclasses.replace(recipe.adapters[m], init_from=str(prev / "adapters" / m))
                    if m in earlier else recipe.adapters[m] for m in seen}
        used = {ref for a in adapters.values() for ref in (a.embed_projector, a.llm_projector) if isinstance(ref, str)}
        projectors = {n: ({**p, "init_from": str(prev / "adapters")} if plans and n in plans[-1].recipe.projectors
                          else dict(p)) for n, p in recipe.projectors.items() if n in used}
        data = DataSpec(train=[s for s in old_src for _ in range(ke)] + [s for s in new_src for _ in range(kn)],
                        eval=[s for s, m in evals if m in seen])
        train_spec = dataclasses.replace(recipe.train, max_steps=stage.max_steps or recipe.train.max_steps)
        stage_recipe = Recipe(adapters=adapters, data=data, name=f"{recipe.name}-stage{k}", seed=recipe.seed,
                              output_dir=str(out / f"stage{k}"), model=recipe.model, anchors=recipe.anchors,
                              projectors=projectors, train=train_spec, eval=recipe.eval)
        plans.append(StagePlan(k, stage_recipe, list(stage.add), list(seen), achieved))
        prev = out / f"stage{k}"
    return plans


def train_progressive(recipe: Recipe, *, output_dir: str | os.PathLike | None = None, resume: bool = False,
                      callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Run every stage in order; returns (and writes to `progressive.json`) each stage's metrics per modality."""
    from .trainer import train

    out = Path(output_dir or recipe.output_path)
    rows = []
    for plan in plan_stages(recipe, out):
        stage_dir = Path(plan.recipe.output_dir)
        if resume and (stage_dir / "eval.json").is_file():
            metrics = {k: v for k, v in read_json(stage_dir / "eval.json").items() if k.startswith("eval/")}
            logger.info("stage %d already finished in %s", plan.index, stage_dir)
        else:
            logger.info("stage %d: adds %s (modalities %s, earlier share %.2f)", plan.index, plan.added,
                        plan.modalities, plan.replay_share)
            result = train(plan.recipe, output_dir=stage_dir, resume=resume and stage_dir.exists(),
                           callbacks=callbacks)
            metrics = {k: v for k, v in result.metrics.items() if k.startswith("eval/")}
        rows.append({"stage": plan.index, "added": plan.added, "modalities": plan.modalities,
                     "replay_share": round(plan.replay_share, 4), "output_dir": str(stage_dir), "metrics": metrics})
    report = {"name": recipe.name, "stages": rows}
    write_json(out / "progressive.json", report)
    logger.info("progressive alignment:\n%s", format_table(rows))
    return report


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table: one line per stage, one column per metric (forgetting shows down a column)."""
    keys = sorted({k for r in rows for k in r["metrics"]})
    lines = ["stage  added          " + "  ".join(k.removeprefix("eval/") for k in keys)]
    for r in rows:
        cells = [f"{r['metrics'][k]:.3f}" if k in r["metrics"] else "-" for k in keys]
        lines.append(f"{r['stage']:<6} {','.join(r['added']):<14} " + "  ".join(
            c.rjust(len(k.removeprefix("eval/"))) for c, k in zip(cells, keys)))
    return "\n".join(lines)


__all__ = ["StagePlan", "format_table", "plan_stages", "replay_repeats", "train_progressive"]
