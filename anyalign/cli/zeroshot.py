"""`anyalign classify FILES...` and `anyalign eval zeroshot DATASET`: zero-shot classification against text labels.

The model is one of `--clap P` (CLAP audio + text towers), `--clip P` (CLIP image + text towers; a video is the
mean of its frames' image embeddings) or `--adapter DIR` (a trained adapter against its text anchor, recorded by
`anyalign train` or given with `--text-encoder`/`--text-pretrained`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from . import options as o

_MODEL_HELP = "Model: exactly one of --encoder, --clap, --clip or --adapter."


HELP_ORDER = 50  # place of this module's commands in `anyalign --help`


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command("classify")(classify_cmd)
    eval_app.command("zeroshot")(eval_zeroshot_cmd)


def build_classifier(labels: list[str], templates: list[str] | None, *, clap: str | None, clip: str | None,
                     adapter: Path | None, text_encoder: str | None, text_pretrained: str | None,
                     encoder_args: list[str] | None, text_args: list[str] | None, device: str | None,
                     autocast: str | None, text_autocast: str | None, batch_size: int, workers: int,
                     temperature: float | None, no_cache: bool, files: list[str] | None = None,
                     encoder: str | None = None, pretrained: str | None = None, seen_classes: str | None = None,
                     calibration: float | None = None, no_calibration: bool = False) -> Any:
    """The classifier chosen by the model options (shared by `classify` and `eval zeroshot`). `--clap P` and
    `--clip P` are short for `--encoder clap-audio|clip-image --pretrained P` (CLIP's video path when all `files`
    are videos); the text side is the one the query's space names, unless `--text-encoder` says otherwise.
    Calibration: `--calibration G` overrides the gamma an adapter records, `--no-calibration` turns it off;
    `--seen-classes` overrides the seen classes it records."""
    from ..encoders.video import VIDEO_EXTENSIONS
    from ..zeroshot import ZeroShotClassifier
    from .options import CLIError

    chosen = [name for name, v in (("--encoder", encoder), ("--clap", clap), ("--clip", clip),
                                   ("--adapter", adapter)) if v is not None]
    if len(chosen) != 1:
        raise CLIError(f"choose the model with exactly one of --encoder NAME, --clap PRETRAINED, --clip PRETRAINED "
                       f"or --adapter DIR (got {', '.join(chosen) or 'none'})")
    if no_calibration and calibration is not None:
        raise CLIError("--calibration and --no-calibration contradict each other; give one")
    seen = [c.strip() for c in seen_classes.split(",") if c.strip()] if seen_classes else None
    opts = {"batch_size": batch_size, "num_workers": workers, "use_cache": not no_cache,
            "device": o.resolve_device(device), "seen": seen, **({} if temperature is None else
                                                                  {"temperature": temperature}),
            "calibration": 0.0 if no_calibration else calibration}
    text = o.encoder_spec(text_encoder, text_pretrained, text_args, text_autocast, prefix="text-") \
        if not (text_encoder and (Path(text_encoder) / "anyalign_adapter.json").is_file()) else text_encoder
    if adapter is not None:
        if encoder_args or pretrained:
            raise CLIError("--set/--pretrained do not apply to --adapter (the adapter records its encoder)")
        return ZeroShotClassifier.from_adapter(adapter, labels, templates, text=text, autocast=autocast, **opts)
    if calibration is not None and seen is None:
        raise CLIError("--calibration needs --seen-classes for this model (only an adapter records its seen classes)")
    if clap is not None:
        encoder, pretrained = "clap-audio", clap
    elif clip is not None:  # videos go through the same image tower, frame embeddings averaged (CLIP's space)
        videos = files and all(Path(f).suffix.lower() in VIDEO_EXTENSIONS for f in files)
        encoder, pretrained = ("video" if videos else "clip-image"), clip
    query = o.encoder_spec(encoder, pretrained, encoder_args, autocast)
    return ZeroShotClassifier.from_specs(query, labels, templates, text=text, **opts)


def _query_modality(clap: str | None, clip: str | None, adapter: Path | None, encoder: str | None) -> str | None:
    """The modality the chosen model classifies, known before any weights load (None when undecided)."""
    from ..adapter import read_adapter_config
    from ..encoders.spec import EncoderSpec

    if adapter is not None:
        return read_adapter_config(adapter).modality
    if encoder is not None:
        return EncoderSpec(encoder).modality
    return "audio" if clap is not None else "image" if clip is not None else None


# options shared by both commands
_CLAP = typer.Option(None, "--clap", help="CLAP weights (folder or hub id): audio and text towers. " + _MODEL_HELP)
_CLIP = typer.Option(None, "--clip", help="CLIP weights (open_clip tag, file, folder or hub id). " + _MODEL_HELP)
_TEMPLATE = typer.Option(None, "--template", "-t",
                         help="Prompt template with {} for the label (repeatable: an averaged ensemble). Default: "
                              "a few templates for the input modality.")
_BATCH = typer.Option(32, "--batch-size", min=1, help="Inputs per forward pass.")
_TEMP = typer.Option(None, "--temperature", help="Softmax temperature that turns scores into probabilities, "
                     "calibrated on validation data: with it, probabilities are reported (default: cosine scores "
                     "only; JSON probabilities at 0.01).")
_NO_CACHE = typer.Option(False, "--no-cache", help="Do not read or write the class-embedding cache.")
_SEEN = typer.Option(None, "--seen-classes", help="Comma-separated classes the model was trained on (default for "
                     "--adapter: the seen classes it records, named as its training captions named them).")
_CALIBRATION = typer.Option(None, "--calibration", help="Calibrated stacking: subtract this gamma from the seen "
                            "classes' scores when the labels also hold unseen classes (default for --adapter: the "
                            "gamma it records, tuned on its validation data at training). Applies to every score, "
                            "probability, prediction and metric. Never tune it on a test split.")
_NO_CALIBRATION = typer.Option(False, "--no-calibration", help="Raw cosine scores: ignore any recorded gamma.")


def classify_cmd(
    files: list[Path] = typer.Argument(..., help="Files to classify."),
    labels: str = typer.Option(None, "--labels", "-l", help="Comma-separated class labels."),
    labels_file: Path = typer.Option(None, "--labels-file", help="A file with one label per line."),
    template: list[str] = _TEMPLATE,
    top_k: int = typer.Option(None, "-k", "--top-k", min=1, help="Labels to show per file (default: 5 when there "
                                                                 "are more than 5 labels, else all of them)."),
    as_json: bool = o.JSON,
    clap: str = _CLAP, clip: str = _CLIP, adapter: Path = o.ADAPTER, encoder: str = o.ENCODER,
    pretrained: str = o.PRETRAINED, encoder_arg: list[str] = o.SET, autocast: str = o.AUTOCAST,
    text_encoder: str = o.TEXT_ENCODER, text_pretrained: str = o.TEXT_PRETRAINED, text_arg: list[str] = o.TEXT_SET,
    text_autocast: str = o.TEXT_AUTOCAST,
    batch_size: int = _BATCH, workers: int = o.WORKERS, temperature: float = _TEMP, no_cache: bool = _NO_CACHE,
    device: str = o.DEVICE,
    seen_classes: str = _SEEN, calibration: float = _CALIBRATION, no_calibration: bool = _NO_CALIBRATION,
) -> None:
    """Zero-shot classify files against text labels; prints the top-k labels with scores per file (cosine, minus
    the calibration gamma for seen classes when the labels mix seen and unseen classes).

    Files that cannot be read are reported and the rest classified (exit code 1 when any failed).
    """
    from ..zeroshot import parse_labels
    from .options import CLIError

    if labels is None and labels_file is None:
        raise CLIError("no labels: pass --labels 'dog barking,rain,siren' and/or --labels-file FILE")
    label_list = parse_labels(labels, labels_file)
    clf = build_classifier(label_list, template, clap=clap, clip=clip, adapter=adapter,
                           text_encoder=text_encoder, text_pretrained=text_pretrained, encoder_args=encoder_arg,
                           text_args=text_arg, encoder=encoder, pretrained=pretrained, device=device,
                           autocast=autocast, text_autocast=text_autocast, batch_size=batch_size, workers=workers,
                           temperature=temperature, no_cache=no_cache, files=[str(f) for f in files],
                           seen_classes=seen_classes, calibration=calibration, no_calibration=no_calibration)
    n = len(clf.labels)
    shown = top_k or (5 if n > 5 else n)
    preds = clf.classify([str(f) for f in files], top_k=shown)
    info = clf.calibration_info()
    if as_json:
        o.echo_json({"labels": clf.labels, "templates": clf.templates, "calibration": info,
                     "temperature": temperature, "results": [p.to_dict() for p in preds]})
    else:
        typer.echo(_calibration_line(info))
        typer.echo(f"cosine scores, {f'top {shown} of {n}' if shown < n else f'all {n}'} labels per file"
                   + (f"; p: softmax at temperature {temperature:g}" if temperature is not None else ""))
        width = max(len(lab) for lab in clf.labels)
        for p in preds:
            if not p.ok:
                typer.echo(f"{p.source}\n  error: {p.error}")
                continue
            typer.echo(p.source)
            for lab, s, pr in zip(p.labels, p.scores, p.probs):
                typer.echo(f"  {lab:<{width}}  {s:+.4f}" + (f"  p {pr:.3f}" if temperature is not None else ""))
    failed = [p for p in preds if not p.ok]
    if failed:
        typer.echo(f"{len(failed)} of {len(preds)} file(s) could not be classified", err=True)
        sys.exit(1)


def eval_zeroshot_cmd(
    dataset: Path = typer.Argument(..., help="A folder of class folders, a csv manifest (path,label[,fold]), an "
                                             "ESC-50 / UrbanSound8K folder, or a jsonl/tar dataset with labels."),
    fold: list[str] = typer.Option(None, "--fold", help="Evaluate only these folds (repeatable)."),
    probe: bool = typer.Option(False, "--probe", help="Also fit a linear probe on the same embeddings (cross-"
                                                      "validated over folds, else stratified) as an upper bound."),
    output: Path = typer.Option(Path("zeroshot-report"), "--output", "-o", help="Report folder (json + PNG)."),
    template: list[str] = _TEMPLATE,
    top_k: int = typer.Option(5, "-k", "--top-k", min=1, help="Labels kept per item in the report."),
    as_json: bool = o.JSON,
    clap: str = _CLAP, clip: str = _CLIP, adapter: Path = o.ADAPTER, encoder: str = o.ENCODER,
    pretrained: str = o.PRETRAINED, encoder_arg: list[str] = o.SET, autocast: str = o.AUTOCAST,
    text_encoder: str = o.TEXT_ENCODER, text_pretrained: str = o.TEXT_PRETRAINED, text_arg: list[str] = o.TEXT_SET,
    text_autocast: str = o.TEXT_AUTOCAST,
    batch_size: int = _BATCH, workers: int = o.WORKERS, temperature: float = _TEMP, no_cache: bool = _NO_CACHE,
    device: str = o.DEVICE,
    labels_file: Path = typer.Option(None, "--labels-file", help="Other phrasings of the classes (YAML/JSON "
                                     "{set: {class: phrase or [phrases]}}): accuracy per set, ratio to closed set."),
    seen_classes: str = _SEEN, calibration: float = _CALIBRATION, no_calibration: bool = _NO_CALIBRATION,
) -> None:
    """Zero-shot accuracy, top-5 and per-class accuracy on a labelled dataset; writes a json report and a
    confusion-matrix PNG (plus protocols.png with --labels-file or unseen classes)."""
    from ..datasets.records import read_labelled
    from ..zeroshot import evaluate_zeroshot, write_report

    modality = _query_modality(clap, clip, adapter, encoder)
    ds = read_labelled(dataset, modality=modality)
    clf = build_classifier(ds.classes, template, clap=clap, clip=clip, adapter=adapter,
                           text_encoder=text_encoder, text_pretrained=text_pretrained, encoder_args=encoder_arg,
                           text_args=text_arg, encoder=encoder, pretrained=pretrained, device=device,
                           autocast=autocast, text_autocast=text_autocast, batch_size=batch_size, workers=workers,
                           temperature=temperature, no_cache=no_cache, files=[str(p) for p in ds.paths],
                           seen_classes=seen_classes, calibration=calibration, no_calibration=no_calibration)
    if ds.layout == "folder" and clf.query.extensions:
        # leave out stray files of other kinds
        ds = read_labelled(dataset, extensions=clf.query.extensions, modality=modality)
        if ds.classes != clf.labels:
            clf = clf.with_labels(ds.classes)
    clf.check_inputs([str(p) for p in ds.paths])
    from ..zeroshot.protocols import write_protocols

    seen = clf.seen_labels  # --seen-classes, else what the adapter records (names or label_text phrases)
    if seen is not None and len(seen) == len(ds.classes):
        seen = None  # every class was seen: closed set, no unseen-class protocol
    if clf.seen is not None and not clf.seen_labels:
        typer.echo(f"note: none of the dataset's classes is one the model was trained on ({', '.join(clf.seen)}): "
                   "every class is unseen (pass --seen-classes with the dataset's class names if that is wrong)",
                   err=True)
    report = evaluate_zeroshot(clf, ds, eval_folds=fold or None, probe=probe, top_k=top_k)
    paths = write_report(report, output)
    lines = write_protocols(clf, ds, report, output, labels_file=labels_file, seen=seen, eval_folds=fold or None) \
        if labels_file or seen else []
    m = report["metrics"]
    if as_json:
        o.echo_json({"metrics": m, "per_class": report["per_class"], "probe": report["probe"],
                     "calibration": report["calibration"], "report": str(paths["json"]),
                     "confusion_matrix": str(paths["png"]), "protocols": report.get("protocols")})
        return
    kind = (f"{len(seen)} seen + {len(ds.classes) - len(seen)} unseen classes" if seen
            else "seen classes unknown" if clf.seen_labels is None
            else "closed set: every class was seen in training" if clf.seen_labels
            else "every class unseen by the model")
    typer.echo(f"{ds.layout} dataset {dataset}: {m['n']} items, {len(ds.classes)} classes ({kind})"
               + (f", folds {', '.join(fold)}" if fold else ""))
    typer.echo(_calibration_line(report["calibration"]))
    typer.echo(f"  top-1 accuracy (per item)     {m['top1']:.4f}")
    if len(ds.classes) > 5:  # with 5 classes or fewer top-5 is 1 by construction
        typer.echo(f"  top-5 accuracy (per item)     {m['top5']:.4f}")
    typer.echo(f"  mean per-class accuracy       {m['mean_per_class_accuracy']:.4f}  (chance {m['chance']:.4f})")
    if report["probe"] is not None:
        pr = report["probe"]
        typer.echo(f"  linear probe accuracy (per item, supervised) {pr['accuracy']:.4f} ± {pr['std']:.4f}  "
                   f"({pr['method']})")
    width = max(len(c) for c in ds.classes)
    for c, v in report["per_class"].items():
        acc = "n/a" if v["accuracy"] is None else f"{v['accuracy']:.3f}"
        typer.echo(f"    {c:<{width}}  {acc}  (n={v['support']})")
    if m["n_failed"]:
        typer.echo(f"  {m['n_failed']} file(s) could not be read (listed in the report)", err=True)
    for line in lines:
        typer.echo(line)
    typer.echo(f"report: {paths['json']}\nconfusion matrix: {paths['png']}")


def _calibration_line(info: dict[str, Any]) -> str:
    """One line saying which calibration the printed scores carry and where its gamma was tuned."""
    src = info.get("source") or {}
    where = f", tuned on {src['tuned_on']}" if isinstance(src, dict) and src.get("tuned_on") else ""
    if info["gamma"]:
        return (f"calibration: gamma {info['gamma']:.4f} subtracted from the seen classes "
                f"({', '.join(info['seen_labels'] or [])}){where}")
    return f"calibration: {info['status']}"
