"""Generalised zero-shot metrics of a score matrix (Xian et al. 2018; Chao et al. 2016): seen / unseen mean
per-class accuracy and their harmonic mean H, the calibrated-stacking curve and its area (AUSUC), and the gamma that
maximises H, on validation scores or over pseudo-unseen rotations. Pure functions of scores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


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


__all__ = ["seen_unseen_curve", "tune_calibration", "tune_calibration_rotated", "unseen_protocol"]
