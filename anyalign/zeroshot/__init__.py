"""Zero-shot classification in a shared embedding space: CLAP/CLIP towers or any trained adapter against text.

    clf = ZeroShotClassifier.from_clap(["dog barking", "rain", "siren"], pretrained="path/to/clap")
    for p in clf.classify(["a.wav", "b.flac"], top_k=3):
        print(p.source, p.labels, p.scores, p.error)

    clf = ZeroShotClassifier.from_adapter("runs/imu/adapters/imu", ["running", "walking"])  # text anchor from the run
    clf.calibration_info()  # the gamma the adapter records (tuned on its validation data) when labels mix seen/unseen
    report = evaluate_zeroshot(clf, read_labelled("ESC-50-master"), probe=True)
"""

from __future__ import annotations

from .classifier import Prediction, ZeroShotClassifier, default_cache_dir
from .evaluate import classification_metrics, evaluate_zeroshot, linear_probe, plot_confusion, write_report
from .prompts import DEFAULT_TEMPLATES, check_labels, check_templates, default_templates, parse_labels

__all__ = ["DEFAULT_TEMPLATES", "Prediction", "ZeroShotClassifier", "check_labels", "check_templates",
           "classification_metrics", "default_cache_dir", "default_templates", "evaluate_zeroshot", "linear_probe",
           "parse_labels", "plot_confusion", "write_report"]
