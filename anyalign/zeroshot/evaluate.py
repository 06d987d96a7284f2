"""Zero-shot evaluation on a labelled dataset: accuracy, top-5, per-class accuracy, confusion matrix, a linear
probe on the same embeddings (the supervised upper bound), and the report files (json + confusion-matrix PNG).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..datasets.records import LabelledDataset
from ..io import save_figure, write_json
from .classifier import ZeroShotClassifier
from .protocols import REPORT_JSON

logger = logging.getLogger(__name__)

#: what each accuracy averages over (written into every report)
AVERAGING = ("top1 / top5: per item (fraction of items); mean_per_class_accuracy: per class (the mean of the "
             "per_class accuracies, each class weighted equally)")
CONFUSION_PNG = "confusion_matrix.png"


def classification_metrics(scores: np.ndarray, targets: Sequence[int], classes: Sequence[str]) -> dict[str, Any]:
    """Top-1, top-5 (top-C when fewer classes), mean per-class accuracy, per-class accuracy and the confusion
    matrix (rows: true class, columns: predicted) of `[N, C]` scores."""
    from sklearn.metrics import confusion_matrix

    y = np.asarray(targets, dtype=np.int64)
    n_cls = len(classes)
    if len(y) == 0:
        raise ValueError("no item could be classified, so there is nothing to score")
    order = np.argsort(-scores, axis=1)  # [N, C] classes by decreasing score
    pred = order[:, 0]
    k5 = min(5, n_cls)
    top5 = float(np.mean([y[i] in order[i, :k5] for i in range(len(y))]))
    cm = confusion_matrix(y, pred, labels=list(range(n_cls)))  # rows: true class, columns: predicted
    support = cm.sum(1)
    per_class = {c: {"accuracy": float(cm[i, i] / support[i]) if support[i] else None, "support": int(support[i])}
                 for i, c in enumerate(classes)}
    present = [v["accuracy"] for v in per_class.values() if v["accuracy"] is not None]
    return {"top1": float(np.mean(pred == y)), "top5": top5, "mean_per_class_accuracy": float(np.mean(present)),
            "n": int(len(y)), "chance": 1.0 / n_cls, "averaging": AVERAGING, "per_class": per_class,
            "confusion_matrix": cm.tolist()}


def linear_probe(emb: np.ndarray, targets: Sequence[int], folds: Sequence[str | None] | None = None, *,
                 test_folds: Sequence[str] | None = None, max_splits: int = 5, c: float = 1.0,
                 seed: int = 0, groups: Sequence[str | None] | None = None) -> dict[str, Any]:
    """Logistic-regression accuracy on the embeddings, cross-validated.

    With `test_folds`: train on every other fold, test on those. Else with folds: leave-one-fold-out. Else with
    `groups` (what belongs together: a recording, a speaker): a stratified group k-fold, so overlapping windows of
    one recording never sit on both sides. Else a stratified k-fold (k = min(`max_splits`, smallest class size)).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = np.asarray(emb, dtype=np.float32), np.asarray(targets, dtype=np.int64)
    fold_arr = np.asarray([str(f) if f is not None else "" for f in folds]) if folds is not None else None
    if test_folds:
        if fold_arr is None:
            raise ValueError("probe: test folds given but the items have no folds")
        test = np.isin(fold_arr, [str(f) for f in test_folds])
        splits, method = [(np.where(~test)[0], np.where(test)[0])], f"train on other folds, test on {list(test_folds)}"
    elif fold_arr is not None and len(set(fold_arr) - {""}) >= 2:
        names = sorted(set(fold_arr) - {""})
        splits = [(np.where(fold_arr != f)[0], np.where(fold_arr == f)[0]) for f in names]
        method = f"leave-one-fold-out over {len(names)} folds"
    elif groups is not None and all(g is not None for g in groups) and len(set(groups)) >= 2:
        group_arr = np.asarray([str(g) for g in groups])
        k = min(max_splits, len(set(group_arr)))
        splits = list(StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(x, y, group_arr))
        method = f"stratified group {k}-fold over {len(set(group_arr))} groups (no group on both sides)"
    else:
        smallest = int(np.bincount(y)[np.bincount(y) > 0].min())
        k = min(max_splits, smallest)
        if k < 2:
            raise ValueError(f"probe: a class has only {smallest} item(s); a cross-validated probe needs >= 2 "
                             f"per class")
        splits = list(StratifiedKFold(k, shuffle=True, random_state=seed).split(x, y))
        method = f"stratified {k}-fold"
    accs = []
    for train_idx, test_idx in splits:
        if len(test_idx) == 0 or len(np.unique(y[train_idx])) < 2:
            raise ValueError(f"probe ({method}): a split has no test items or fewer than two training classes")
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        clf.fit(x[train_idx], y[train_idx])
        accs.append(float(np.mean(clf.predict(x[test_idx]) == y[test_idx])))
    return {"method": method, "accuracy": float(np.mean(accs)), "std": float(np.std(accs)), "splits": accs,
            "classifier": f"StandardScaler + LogisticRegression(C={c})"}


def plot_confusion(cm: Sequence[Sequence[int]], classes: Sequence[str], path: str | os.PathLike, *,
                   title: str = "zero-shot confusion matrix") -> Path:
    """Write a row-normalised confusion-matrix heatmap as PNG (sklearn's display; values shown up to 20 classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    cm = np.asarray(cm, dtype=np.float64)
    n = len(classes)
    size = min(4 + 0.35 * n, 24)
    fig, ax = plt.subplots(figsize=(size, size * 0.9), dpi=100)
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)  # fraction of each true class
    ConfusionMatrixDisplay(rows, display_labels=list(classes)).plot(ax=ax, cmap="Blues", include_values=n <= 20,
                                                                   values_format=".2f", xticks_rotation=90,
                                                                   im_kw={"vmin": 0, "vmax": 1})
    if n > 60:  # too many to name
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    return save_figure(fig, path)


def evaluate_zeroshot(classifier: ZeroShotClassifier, dataset: LabelledDataset, *,
                      eval_folds: Sequence[str] | None = None, probe: bool = False, top_k: int = 5,
                      **embed_options: Any) -> dict[str, Any]:
    """Classify a labelled dataset (or its `eval_folds`) and build the report dict.

    The classifier's labels must be the dataset's classes (same order). With `probe`, all items are embedded
    (the probe may train on folds outside `eval_folds`); zero-shot metrics use the evaluated items only.
    """
    if list(classifier.labels) != list(dataset.classes):
        raise ValueError("the classifier's labels must be the dataset's classes, in the dataset's order")
    folds = [str(f) for f in eval_folds] if eval_folds else None
    if folds:
        dataset.select_folds(folds)  # validates the fold names
    in_eval = [folds is None or it.fold in folds for it in dataset.items]
    items = dataset.items if probe else [it for it, keep in zip(dataset.items, in_eval) if keep]
    evaluated = in_eval if probe else [True] * len(items)
    t0 = time.perf_counter()
    _ = classifier.weights
    t_text = time.perf_counter() - t0
    res = classifier.embed([it.input("path") for it in items], **embed_options)
    t_embed = time.perf_counter() - t_text - t0
    index = {c: i for i, c in enumerate(dataset.classes)}
    ok = [i for i in res.index if evaluated[i]]
    rows = [k for k, i in enumerate(res.index) if evaluated[i]]
    emb = res.embeddings[rows] if rows else torch.zeros(0, classifier.query.dim)
    if not ok:
        first = next(iter(res.errors.values()), "no items")
        raise ValueError(f"none of the {sum(evaluated)} items could be classified (first error: {first})")
    scores = classifier.scores(emb).numpy()  # [M, C], calibrated when the classifier says so (see describe())
    targets = [index[items[i].label] for i in ok]
    metrics = classification_metrics(scores, targets, dataset.classes)
    k = min(top_k, len(dataset.classes))
    predictions = []
    for row, i in enumerate(ok):
        top = np.argsort(-scores[row])[:k]
        predictions.append({"path": items[i].input("path"), "label": items[i].label, "fold": items[i].fold,
                            "predicted": dataset.classes[int(top[0])],
                            "top": [{"label": dataset.classes[int(c)], "score": round(float(scores[row, c]), 6)}
                                    for c in top]})
    per_fold = {}
    for f in sorted({items[i].fold for i in ok if items[i].fold is not None}):
        sel = [r for r, i in enumerate(ok) if items[i].fold == f]
        per_fold[f] = float(np.mean([predictions[r]["predicted"] == predictions[r]["label"] for r in sel]))
    report: dict[str, Any] = {
        "dataset": {"path": str(dataset.root), "layout": dataset.layout, "classes": dataset.classes,
                    "folds_evaluated": folds or dataset.folds or None, "n_items": sum(evaluated)},
        "model": classifier.describe(),
        "calibration": classifier.calibration_info(),  # applied to metrics, per_class, confusion and predictions
        "metrics": {key: metrics[key] for key in metrics if key not in ("per_class", "confusion_matrix")},
        "per_class": metrics["per_class"],
        "per_fold_top1": per_fold or None,
        "confusion_matrix": metrics["confusion_matrix"],
        "probe": None,
        "errors": [{"path": items[i].input("path"), "error": e} for i, e in sorted(res.errors.items())
                   if evaluated[i]],
        "predictions": predictions,
        "timing": {"class_embeddings_s": round(t_text, 3), "embed_s": round(t_embed, 3),
                   "items_per_s": round(len(items) / max(t_embed, 1e-9), 2),
                   "class_embeddings_cached": classifier.cache_hit},
    }
    report["metrics"]["n_failed"] = len(report["errors"])
    if probe:
        all_targets = [index[items[i].label] for i in res.index]
        all_folds = [items[i].fold for i in res.index]
        has_folds = any(f is not None for f in all_folds)
        groups = [getattr(items[i], "group", None) for i in res.index]
        report["probe"] = linear_probe(res.embeddings.numpy(), all_targets, all_folds if has_folds else None,
                                       test_folds=folds, groups=groups)
    return report


def write_report(report: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write `zeroshot_report.json` and `confusion_matrix.png` into `out_dir` (each atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = report["metrics"]
    title = f"zero-shot top-1 {m['top1']:.1%} ({m['n']} items)"
    png = plot_confusion(report["confusion_matrix"], report["dataset"]["classes"], out / CONFUSION_PNG, title=title)
    write_json(out / REPORT_JSON, report)
    return {"json": out / REPORT_JSON, "png": png}


__all__ = ["CONFUSION_PNG", "REPORT_JSON", "classification_metrics", "evaluate_zeroshot", "linear_probe",
           "plot_confusion", "write_report"]
