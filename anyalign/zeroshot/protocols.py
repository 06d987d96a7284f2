"""Zero-shot protocols beyond the training label set: other phrasings of the classes, and unseen classes.

- Phrasings (`--labels-file`, YAML/JSON `{set: {class: phrase | [phrases]}}`): each set scored like the closed
  set, reported with its ratio to the closed-set accuracy (or to a set named `training`).
- Unseen classes (generalised zero-shot learning, Xian et al. 2018): all items among all classes; mean per-class
  accuracy on seen and unseen items, their harmonic mean H, unseen items among unseen classes alone, and the
  seen-unseen curve with its area (AUSUC, Chao et al. 2016: calibrated stacking). Gamma is tuned on validation
  data only; the curve's best point on the evaluated data is reported as an oracle bound. Metrics: `metrics.gzsl`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..io import save_figure
from ..metrics.gzsl import (  # noqa: F401 - re-exported: the protocols' metrics
    seen_unseen_curve,
    tune_calibration,
    tune_calibration_rotated,
    unseen_protocol,
)

PROTOCOLS_PNG = "protocols.png"
REPORT_JSON = "zeroshot_report.json"  # one report file, written by `eval zeroshot` and its protocols
logger = logging.getLogger(__name__)


def read_phrasings(path: str | os.PathLike, classes: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """Read a phrasing file and check that every set names every class (and no other)."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--labels-file {path}: not found (expected YAML/JSON {{set: {{class: phrase}}}})")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML/JSON ({e})") from None
    if not isinstance(doc, dict) or not doc or not all(isinstance(v, dict) for v in doc.values()):
        raise ValueError(f"{path}: expected a mapping of phrasing-set name -> {{class: phrase or [phrases]}}")
    out: dict[str, dict[str, list[str]]] = {}
    for name, mapping in doc.items():
        missing = [c for c in classes if c not in mapping]
        extra = [c for c in mapping if c not in classes]
        if missing or extra:
            raise ValueError(f"{path}: set {name!r}: " + "; ".join(
                ([f"no phrase for class(es) {missing}"] if missing else [])
                + ([f"unknown class(es) {extra} (classes: {', '.join(classes)})"] if extra else [])))
        sets = {}
        for c in classes:
            v = mapping[c]
            phrases = [v] if isinstance(v, str) else v
            if not isinstance(phrases, list) or not phrases or not all(isinstance(p, str) and p.strip()
                                                                       for p in phrases):
                raise ValueError(f"{path}: {name}.{c}: expected a phrase or a list of phrases, got {v!r}")
            sets[c] = [p.strip() for p in phrases]
        out[str(name)] = sets
    return out


def phrase_class_embeddings(embed_text: Callable[[list[str]], torch.Tensor], templates: Sequence[str],
                            phrases: dict[str, list[str]], classes: Sequence[str]) -> torch.Tensor:
    """`[C, E]`: per class, every phrase in every `{}` template, embedded, averaged and renormalised."""
    rows = []
    for c in classes:
        texts = [t.replace("{}", p) for p in phrases[c] for t in templates]
        rows.append(F.normalize(F.normalize(embed_text(texts).float(), dim=-1).mean(0), dim=-1))
    return torch.stack(rows)


def top1(scores: torch.Tensor, targets: Sequence[int]) -> float:
    return float((scores.argmax(1).cpu() == torch.as_tensor(list(targets))).float().mean())


def phrasing_protocol(embeddings: torch.Tensor, targets: Sequence[int], classes: Sequence[str],
                      embed_text: Callable[[list[str]], torch.Tensor], templates: Sequence[str],
                      phrasings: dict[str, dict[str, list[str]]], closed_set_top1: float, *,
                      offsets: torch.Tensor | None = None) -> dict[str, Any]:
    """Per-item accuracy per phrasing set and its ratio to the training phrasing (closed set, or the set
    `training`); `offsets` `[C]` (calibration) are subtracted from the class scores as the classifier does."""
    emb = F.normalize(embeddings.float(), dim=-1)
    sets = {}
    for name, phrases in phrasings.items():
        cls = phrase_class_embeddings(embed_text, templates, phrases, classes)
        scores = emb @ cls.t()
        if offsets is not None:
            scores = scores - offsets.to(scores.device)
        per_class = {}
        y = np.asarray(targets)
        pred = scores.argmax(1).cpu().numpy()
        for i, c in enumerate(classes):
            sel = y == i
            per_class[c] = float((pred[sel] == i).mean()) if sel.any() else None
        sets[name] = {"top1": top1(scores, targets), "per_class": per_class, "phrases": phrases}
    base_name = "training" if "training" in sets else "closed_set"
    base = sets["training"]["top1"] if "training" in sets else closed_set_top1
    for v in sets.values():
        v["ratio"] = v["top1"] / base if base > 0 else None
    others = [v["top1"] for k, v in sets.items() if k != "training"]
    return {"baseline": base_name, "baseline_top1": base, "closed_set_top1": closed_set_top1,
            "chance": 1.0 / len(classes), "sets": sets,
            "mean_top1": float(np.mean(others)) if others else None,
            "mean_ratio": float(np.mean(others)) / base if others and base > 0 else None}


def plot_protocols(protocols: dict[str, Any], path: str | os.PathLike, *, title: str = "zero-shot protocols") -> Path:
    """Bar charts: accuracy per phrasing set (vs the baseline) and seen / unseen / H (vs chance)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("phrasings", "unseen") if protocols.get(k)]
    if protocols.get("unseen", {}).get("curve"):
        panels.append("curve")
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.5 * max(1, len(panels)), 4), dpi=100, squeeze=False)
    for ax, key in zip(axes[0], panels):
        if key == "curve":
            u = protocols["unseen"]
            ax.plot(u["curve"]["seen"], u["curve"]["unseen"], color="tab:blue", label=f"AUSUC {u['ausuc']:.3f}")
            ax.scatter([u["seen_accuracy"] or 0], [u["unseen_accuracy"] or 0], color="tab:red", zorder=3,
                       label=f"gamma {u['calibration']:.3f}: H {u['harmonic_mean']:.2f}")
            ax.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="seen accuracy", ylabel="unseen accuracy",
                   title="seen-unseen curve (calibrated stacking)")
            ax.legend(fontsize=7, loc="upper right")
            continue
        p = protocols[key]
        if key == "phrasings":
            names = ["closed set"] + list(p["sets"])
            vals = [p["closed_set_top1"]] + [v["top1"] for v in p["sets"].values()]
            ax.set_title(f"phrasings (mean ratio {p['mean_ratio']:.2f})" if p["mean_ratio"] is not None
                         else "phrasings")
        else:
            names = ["seen", "unseen", "H", "unseen only"]
            vals = [p["seen_accuracy"] or 0, p["unseen_accuracy"] or 0, p["harmonic_mean"] or 0,
                    p["unseen_only_top1"] or 0]
            ax.axhline(p["chance_unseen_only"], ls=":", color="grey", label="chance (unseen only)")
            ax.set_title(f"unseen classes: {', '.join(p['unseen_classes'])}"[:60])
        ax.bar(range(len(vals)), vals, color="tab:blue")
        ax.axhline(p.get("chance", p.get("chance_all", 0)), ls="--", color="grey", label="chance")
        ax.set_xticks(range(len(vals)), names, rotation=30, ha="right", fontsize=8)
        for i, v in enumerate(vals):
            ax.text(i, v + 0.01, f"{v:.2f}", ha="center", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def _recipe_zeroshot(recipe: Path) -> dict[str, Any] | None:
    """Seen classes (mapped through `label_text`) of a run's `recipe.yaml` (adapters saved before they recorded it)."""
    import yaml

    data = yaml.safe_load(recipe.read_text()) or {}
    sources = [s for s in (data.get("data") or {}).get("train") or [] if isinstance(s, dict)]
    lists = [s.get("classes") for s in sources]
    if not (lists and all(isinstance(c, list) for c in lists)):
        if any(isinstance(c, list) for c in lists):
            logger.warning("%s: only some training sources restrict 'classes', so the classes this adapter saw "
                           "are unknown; pass --seen-classes for the unseen-class protocol", recipe)
        return None
    label_text = {str(k): str(v) for s in sources for k, v in (s.get("label_text") or {}).items()}
    seen = sorted({label_text.get(str(c), str(c)) for cs in lists for c in cs})
    return {"seen_classes": seen, "label_text": label_text, "calibration": None,
            "source": f"{recipe}: data.train[*].classes"}


def recorded_zeroshot(adapter_dir: str | os.PathLike) -> dict[str, Any] | None:
    """What an adapter records for zero-shot use: `seen_classes` (as its captions named them, through the recipe's
    `label_text`), `label_text`, `calibration` (gamma or None) and its provenance; read from the adapter's config
    (`AdapterConfig.zeroshot`), else from its run's `recipe.yaml`; None when neither says."""
    from ..adapter import CONFIG_NAME, read_adapter_config, resolve_adapter

    path = resolve_adapter(adapter_dir).resolve()  # a folder, or a Hub id's snapshot
    if (path / CONFIG_NAME).is_file():
        recorded = read_adapter_config(path).zeroshot
        if recorded:
            return dict(recorded)
    for recipe in (path.parent.parent / "recipe.yaml", path.parent / "recipe.yaml"):
        if recipe.is_file():
            return _recipe_zeroshot(recipe)
    return None


def recorded_seen_classes(adapter_dir: str | os.PathLike) -> list[str] | None:
    """The classes an adapter was trained on (as its captions named them), when its training restricted them."""
    rec = recorded_zeroshot(adapter_dir)
    return list(rec["seen_classes"]) if rec and rec.get("seen_classes") else None


def evaluate_protocols(classifier: Any, dataset: Any, report: dict[str, Any], *,
                       labels_file: str | os.PathLike | None = None, seen: Sequence[str] | None = None,
                       eval_folds: Sequence[str] | None = None, calibration: float | None = None) -> dict[str, Any]:
    """Add `report["protocols"]` (phrasings and/or unseen classes) for a `ZeroShotClassifier` on a labelled dataset;
    the unseen-class protocol at `calibration` (default: the classifier's own gamma, the one the report applies)."""
    folds = [str(f) for f in eval_folds] if eval_folds else None
    items = [it for it in dataset.items if folds is None or it.fold in folds]
    res = classifier.embed([it.input("path") for it in items])
    index = {c: i for i, c in enumerate(dataset.classes)}
    targets = [index[items[i].label] for i in res.index]
    emb = F.normalize(torch.as_tensor(res.embeddings).float(), dim=-1)
    gamma = float(getattr(classifier, "calibration", 0.0) or 0.0)
    offsets = classifier.offsets() if gamma else None
    closed = top1(classifier.scores(emb), targets)  # the classifier's own scores: calibrated as the report is
    out: dict[str, Any] = {"closed_set_top1": closed, "chance": 1.0 / len(dataset.classes),
                           "calibration": gamma}
    if labels_file is not None:
        phrasings = read_phrasings(labels_file, dataset.classes)
        out["phrasings"] = phrasing_protocol(emb, targets, dataset.classes,
                                             lambda texts: torch.as_tensor(np.asarray(classifier.text.embed(texts))),
                                             classifier.templates,
                                             phrasings, closed, offsets=offsets)
        out["phrasings"]["file"] = str(labels_file)
    if seen:
        if calibration is None:
            calibration = gamma if list(seen) == list(getattr(classifier, "seen_labels", None) or []) else 0.0
        out["unseen"] = unseen_protocol(classifier.raw_scores(emb), targets, dataset.classes, seen,
                                        calibration=calibration)
        out["unseen"]["calibration_source"] = getattr(classifier, "calibration_source", None) \
            if calibration and calibration == gamma else None
    report["protocols"] = out
    return out


def write_protocols(classifier: Any, dataset: Any, report: dict[str, Any], out_dir: str | os.PathLike, *,
                    labels_file: str | os.PathLike | None = None, seen: Sequence[str] | None = None,
                    eval_folds: Sequence[str] | None = None, calibration: float | None = None) -> list[str]:
    """Run the protocols, add them to the report, rewrite `zeroshot_report.json` and write `protocols.png`;
    returns the summary lines the CLI prints."""
    from ..io import write_json

    p = evaluate_protocols(classifier, dataset, report, labels_file=labels_file, seen=seen, eval_folds=eval_folds,
                           calibration=calibration)
    out = Path(out_dir)
    png = plot_protocols(p, out / PROTOCOLS_PNG, title=f"zero-shot protocols ({len(dataset.classes)} classes)")
    report["protocols"]["png"] = str(png)
    write_json(out / REPORT_JSON, report)
    lines = []
    if "phrasings" in p:
        ph = p["phrasings"]
        lines.append(f"  new wordings (per-item top-1; vs {ph['baseline']} {ph['baseline_top1']:.4f}, chance "
                     f"{ph['chance']:.4f}):")
        lines += [f"    {name:<20} top-1 {v['top1']:.4f}  ratio {v['ratio']:.3f}" for name, v in ph["sets"].items()]
    if "unseen" in p:
        u = p["unseen"]
        src = u.get("calibration_source") or {}
        where = f" tuned on {src['tuned_on']}" if isinstance(src, dict) and src.get("tuned_on") else ""
        cal = (f"calibration gamma {u['calibration']:.4f}{where}" if u["calibration"] else "uncalibrated")
        lines.append(f"  unseen classes {', '.join(u['unseen_classes'])} (generalised zero-shot, {cal}): "
                     f"seen {u['seen_accuracy']:.4f}  unseen {u['unseen_accuracy']:.4f}  H {u['harmonic_mean']:.4f} "
                     f"(mean per-class accuracy among all {len(dataset.classes)} classes, chance "
                     f"{u['chance_all']:.4f}); unseen items among the unseen classes only {u['unseen_only_top1']:.4f} "
                     f"per item (chance {u['chance_unseen_only']:.4f})")
        o = u["oracle"]
        lines.append(f"  seen-unseen curve: AUSUC {u['ausuc']:.4f}; best H {o['harmonic_mean']:.4f} at gamma "
                     f"{o['calibration']:.4f} (seen "
                     f"{o['seen_accuracy']:.4f}, unseen {o['unseen_accuracy']:.4f}), tuned on this very data: a "
                     "bound on test data; on validation data, that gamma is what --calibration takes")
    lines.append(f"protocols: {png}")
    return lines


__all__ = ["PROTOCOLS_PNG", "REPORT_JSON", "evaluate_protocols", "phrase_class_embeddings",
           "phrasing_protocol", "plot_protocols", "read_phrasings", "recorded_seen_classes", "recorded_zeroshot",
           "seen_unseen_curve", "tune_calibration", "tune_calibration_rotated", "unseen_protocol",
           "write_protocols"]
