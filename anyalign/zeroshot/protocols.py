"""Zero-shot protocols beyond the training label set: other phrasings of the classes, and unseen classes.

- Phrasings (`--labels-file`): a YAML/JSON file `{set name: {class: phrase | [phrases]}}` names every class in
  other words; each set is scored like the closed set (same templates, phrases of a class averaged) and reported
  with its ratio to the closed-set accuracy (or to a set named `training` when the file has one).
- Unseen classes (generalised zero-shot learning, Xian et al. 2018): the adapter was trained on `seen` classes
  only (`data.train[*].classes` in its recipe); items of all classes are classified among all classes and the
  report gives mean per-class accuracy on seen and on unseen items and their harmonic mean H, plus the
  conventional zero-shot accuracy of unseen items among the unseen classes alone. Adapters trained on seen classes
  score them higher than any unseen class (the GZSL bias), so the report also gives the seen-unseen accuracy curve
  and its area (AUSUC, Chao et al. 2016: calibrated stacking, seen scores lowered by gamma, swept over every gamma)
  and, with `calibration`, the metrics at one gamma; `tune_calibration` picks gamma on validation data (never on
  the test split: the curve's best point on the evaluated data is reported only as an oracle bound).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..io import save_figure

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


def _mean_per_class(pred: np.ndarray, y: np.ndarray, ids: Sequence[int]) -> float | None:
    accs = [float((pred[y == i] == i).mean()) for i in ids if (y == i).any()]
    return float(np.mean(accs)) if accs else None


def _class_groups(classes: Sequence[str], seen: Sequence[str]) -> tuple[list[int], list[int]]:
    unknown = [c for c in seen if c not in classes]
    if unknown:
        raise ValueError(f"seen classes {unknown} are not classes of the evaluation data ({', '.join(classes)})")
    seen_ids = [i for i, c in enumerate(classes) if c in set(seen)]
    unseen_ids = [i for i, c in enumerate(classes) if c not in set(seen)]
    if not unseen_ids:
        raise ValueError("unseen-class protocol: every evaluation class was seen in training")
    if not seen_ids:
        raise ValueError("unseen-class protocol: no evaluation class was seen in training")
    return seen_ids, unseen_ids


def seen_unseen_curve(scores: torch.Tensor, targets: Sequence[int], classes: Sequence[str],
                      seen: Sequence[str]) -> dict[str, np.ndarray | float]:
    """Mean per-class seen and unseen accuracy for every calibration gamma (seen scores minus gamma).

    An item goes to the unseen group exactly when (best seen score - best unseen score) <= gamma, and within its group
    the prediction does not depend on gamma, so the curve only changes at those margins: `gamma[k]` is the k-th
    distinct margin (plus -inf: no calibration can favour seen more), `seen[k]` / `unseen[k]` the accuracies there."""
    seen_ids, unseen_ids = _class_groups(classes, seen)
    s = scores.float().cpu()
    y = np.asarray(targets)
    best_s, arg_s = s[:, seen_ids].max(1)
    best_u, arg_u = s[:, unseen_ids].max(1)
    margin = (best_s - best_u).numpy().astype(np.float64)
    is_seen, is_unseen = np.isin(y, seen_ids), np.isin(y, unseen_ids)
    counts = np.bincount(y, minlength=len(classes)).astype(np.float64)
    n_s = sum(1 for i in seen_ids if counts[i]) or 1
    n_u = sum(1 for i in unseen_ids if counts[i]) or 1
    w = np.where(is_seen, 1.0 / (n_s * np.maximum(counts[y], 1)), 1.0 / (n_u * np.maximum(counts[y], 1)))
    hit_s = is_seen & (np.asarray(seen_ids)[arg_s.numpy()] == y)  # right if sent to the seen group
    hit_u = is_unseen & (np.asarray(unseen_ids)[arg_u.numpy()] == y)  # right if sent to the unseen group
    gammas = np.unique(margin)
    order = np.argsort(margin, kind="stable")
    cum_u = np.cumsum((w * hit_u)[order])
    cum_s = np.cumsum((w * hit_s)[order])
    upto = np.searchsorted(margin[order], gammas, side="right")  # items with margin <= gamma go unseen
    seen_acc = np.concatenate([[cum_s[-1]], cum_s[-1] - cum_s[upto - 1]])
    unseen_acc = np.concatenate([[0.0], cum_u[upto - 1]])
    gammas = np.concatenate([[-np.inf], gammas])
    x, yy = seen_acc[::-1], unseen_acc[::-1]  # seen accuracy ascending
    area = float(np.sum((x[1:] - x[:-1]) * (yy[1:] + yy[:-1]) / 2))
    return {"gamma": gammas, "seen": seen_acc, "unseen": unseen_acc, "ausuc": area}


def _harmonic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where(a + b > 0, 2 * a * b / np.maximum(a + b, 1e-12), 0.0)


def _best_point(curve: dict[str, Any]) -> tuple[int, float]:
    """Index of the curve's best harmonic mean and a gamma that reaches it: midway between that margin and the
    next, so the gamma does not sit on an item's decision boundary."""
    g, h = curve["gamma"], _harmonic(curve["seen"], curve["unseen"])
    k = int(np.argmax(h))
    if k == 0:
        return k, float(g[1] - 1e-3) if len(g) > 1 else 0.0
    return k, float((g[k] + g[k + 1]) / 2) if k + 1 < len(g) else float(g[k] + 1e-3)


def tune_calibration(scores: torch.Tensor, targets: Sequence[int], classes: Sequence[str],
                     seen: Sequence[str]) -> float:
    """The calibration gamma that maximises the seen / unseen harmonic mean on these (validation) scores."""
    return _best_point(seen_unseen_curve(scores, targets, classes, seen))[1]


def _curve_at(curve: dict[str, Any], gammas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Seen and unseen accuracy of a `seen_unseen_curve` at each of `gammas` (a step function of gamma)."""
    k = np.searchsorted(curve["gamma"], gammas, side="right") - 1  # the last breakpoint <= gamma (-inf first)
    k = np.clip(k, 0, len(curve["gamma"]) - 1)
    return curve["seen"][k], curve["unseen"][k]


def tune_calibration_rotated(runs: Sequence[tuple[torch.Tensor, Sequence[int], Sequence[str], Sequence[str]]]
                             ) -> dict[str, Any]:
    """One gamma for several pseudo-unseen rotations: each run is `(scores, targets, classes, seen)` of an adapter
    trained without some of the seen classes, scored on validation items of all of them; gamma maximises the mean
    harmonic mean over the runs. Returns gamma, the mean H there and at gamma 0, and each run's seen/unseen/H."""
    curves = [seen_unseen_curve(*run) for run in runs]
    if not curves:
        raise ValueError("calibration: no pseudo-unseen rotation to tune on")
    points = np.unique(np.concatenate([c["gamma"][1:] for c in curves]))
    candidates = np.concatenate([[0.0], (points[1:] + points[:-1]) / 2 if len(points) > 1 else points,
                                 [points[0] - 1e-3, points[-1] + 1e-3] if len(points) else []])
    hs = np.stack([_harmonic(*_curve_at(c, candidates)) for c in curves])  # [runs, candidates]
    mean_h = hs.mean(0)
    ties = np.flatnonzero(mean_h >= mean_h.max() - 1e-12)
    best = int(ties[np.argmin(np.abs(candidates[ties]))])  # of equal H, the smallest shift
    gamma = float(candidates[best])
    per_run = []
    for c, run in zip(curves, runs):
        s, u = _curve_at(c, np.array([gamma]))
        per_run.append({"pseudo_unseen": [x for x in run[2] if x not in set(run[3])],
                        "seen_accuracy": float(s[0]), "unseen_accuracy": float(u[0]),
                        "harmonic_mean": float(_harmonic(s, u)[0])})
    return {"calibration": gamma, "mean_harmonic_mean": float(mean_h[best]),
            "mean_harmonic_mean_uncalibrated": float(mean_h[0]), "rotations": per_run}


def unseen_protocol(scores: torch.Tensor, targets: Sequence[int], classes: Sequence[str],
                    seen: Sequence[str], *, calibration: float = 0.0) -> dict[str, Any]:
    """Generalised zero-shot metrics of `[N, C]` scores over all classes, given the classes seen in training;
    `calibration` (gamma, in score units) is subtracted from the seen classes' scores first (calibrated stacking)."""
    seen_ids, unseen_ids = _class_groups(classes, seen)
    s = scores.float().cpu().clone()
    s[:, seen_ids] -= float(calibration)
    y = np.asarray(targets)
    pred = s.argmax(1).numpy()
    acc_s, acc_u = _mean_per_class(pred, y, seen_ids), _mean_per_class(pred, y, unseen_ids)
    h = float(_harmonic(np.float64(acc_s), np.float64(acc_u))) if acc_s is not None and acc_u is not None else 0.0
    on_unseen = np.isin(y, unseen_ids)
    sub = s[torch.from_numpy(on_unseen)][:, unseen_ids]  # unseen items among unseen classes only
    zsl = float((np.asarray(unseen_ids)[sub.argmax(1).numpy()] == y[on_unseen]).mean()) if on_unseen.any() else None
    curve = seen_unseen_curve(scores, targets, classes, seen)
    hs = _harmonic(curve["seen"], curve["unseen"])
    best, best_gamma = _best_point(curve)
    keep = np.unique(np.linspace(0, len(curve["gamma"]) - 1, min(len(curve["gamma"]), 200)).round().astype(int))
    return {"seen_classes": [classes[i] for i in seen_ids], "unseen_classes": [classes[i] for i in unseen_ids],
            "seen_accuracy": acc_s, "unseen_accuracy": acc_u, "harmonic_mean": h, "calibration": float(calibration),
            "averaging": "seen_accuracy / unseen_accuracy: mean per-class accuracy among all classes; "
                         "unseen_only_top1: per item, unseen items among the unseen classes only",
            "unseen_items_predicted_unseen": float(np.isin(pred[on_unseen], unseen_ids).mean())
            if on_unseen.any() else None,
            "unseen_only_top1": zsl, "chance_all": 1.0 / len(classes), "chance_unseen_only": 1.0 / len(unseen_ids),
            "ausuc": curve["ausuc"],
            "oracle": {"note": "best calibration on this very data: an upper bound, not a result",
                       "calibration": best_gamma,
                       "seen_accuracy": float(curve["seen"][best]), "unseen_accuracy": float(curve["unseen"][best]),
                       "harmonic_mean": float(hs[best])},
            "curve": {k: curve[k][keep].round(4).tolist() for k in ("seen", "unseen")}}


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


class CachedEmbeddings:
    """A classifier whose `embed` returns embeddings computed once (so the report and the protocols share them)."""

    def __init__(self, classifier: Any) -> None:
        self._clf = classifier
        self._cache: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._clf, name)

    def embed(self, inputs: Sequence[Any], **options: Any) -> Any:
        key = json.dumps([str(x) for x in inputs])
        if key not in self._cache:
            self._cache[key] = self._clf.embed(inputs, **options)
        return self._cache[key]


def evaluate_protocols(classifier: Any, dataset: Any, report: dict[str, Any], *,
                       labels_file: str | os.PathLike | None = None, seen: Sequence[str] | None = None,
                       eval_folds: Sequence[str] | None = None, calibration: float | None = None) -> dict[str, Any]:
    """Add `report["protocols"]` (phrasings and/or unseen classes) for a `ZeroShotClassifier` on a labelled dataset;
    the unseen-class protocol at `calibration` (default: the classifier's own gamma, the one the report applies)."""
    folds = [str(f) for f in eval_folds] if eval_folds else None
    items = [it for it in dataset.items if folds is None or it.fold in folds]
    res = classifier.embed([str(it.path) for it in items])
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


def resolve_seen(seen_classes: str | None, adapter: str | os.PathLike | None) -> list[str] | None:
    """`--seen-classes a,b` or, for an adapter, the classes its training run was restricted to (None: closed set)."""
    if seen_classes:
        return [c.strip() for c in seen_classes.split(",") if c.strip()]
    return recorded_seen_classes(adapter) if adapter is not None else None


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


__all__ = ["CachedEmbeddings", "PROTOCOLS_PNG", "REPORT_JSON", "evaluate_protocols", "phrase_class_embeddings",
           "phrasing_protocol", "plot_protocols", "read_phrasings", "recorded_seen_classes", "recorded_zeroshot",
           "resolve_seen", "seen_unseen_curve", "tune_calibration", "tune_calibration_rotated", "unseen_protocol",
           "write_protocols"]
