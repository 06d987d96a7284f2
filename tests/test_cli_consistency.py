"""Every CLI command's options, walked through the click command the console script runs: the same thing has the
same name, type and default everywhere (the encoder spec group and its --text- variant, workers, device, autocast,
quiet, json); the commands that pick an encoder all take the group; every command has --quiet and every command
that produces a result --json; replaced flags are gone and answered with a one-line error naming what replaced them.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
import typer
from _cli import run_captured

from anyalign.cli import main as cli_main
from anyalign.cli.options import REPLACED

SHARED = ["--encoder", "--pretrained", "--set", "--autocast", "--adapter", "--text-encoder", "--text-pretrained",
          "--text-set", "--text-autocast", "--workers", "--device", "--quiet", "--json"]
GROUP = ["--encoder", "--pretrained", "--set", "--autocast"]
PICKS_ENCODER = {"extract": GROUP, "embed": [*GROUP, "--adapter"], "classify": [*GROUP, "--adapter"],
                 "eval zeroshot": [*GROUP, "--adapter"], "search": [*GROUP, "--adapter"],
                 "serve": [*GROUP, "--adapter"], "index build": [*GROUP, "--adapter"]}
TEXT_SIDE = ["--text-encoder", "--text-pretrained", "--text-set", "--text-autocast"]
NO_RESULT = {"serve"}  # runs until stopped: nothing to print as JSON
ADAPTER_PER_MODALITY = {"chat", "eval transcription"}  # LLM commands: one MODALITY=DIR adapter per modality


def _commands() -> dict[str, Any]:
    """'group sub' -> click command, for every leaf command of the console script."""
    if not cli_main.app.registered_commands:
        cli_main._register_all()
    root = typer.main.get_command(cli_main.app)
    out: dict[str, Any] = {}
    stack = [("", root)]
    while stack:
        path, cmd = stack.pop()
        if hasattr(cmd, "commands"):
            stack += [(f"{path} {name}".strip(), sub) for name, sub in cmd.commands.items()]
        else:
            out[path] = cmd
    return out


def _type(param: Any) -> str:
    """The option's value type as the command declares it (typer's annotation and bounds, or click's type)."""
    td = getattr(param, "type_descriptor", None)
    if td is not None:
        return f"{td.annotation} min={getattr(param, 'min', None)} max={getattr(param, 'max', None)}"
    return param.type.name


def _signature(param: Any) -> tuple:
    """What must agree between two uses of an option: its names, type, default, flag-ness and repeatability."""
    return (tuple(sorted(param.opts + param.secondary_opts)), _type(param), param.default, param.is_flag,
            param.multiple)


COMMANDS = _commands()


def test_every_help_renders(capsys: pytest.CaptureFixture) -> None:
    assert {"embed", "extract", "train", "classify", "eval zeroshot", "index build", "search", "serve", "chat",
            "quickstart", "encoders"} <= set(COMMANDS)
    for path, cmd in COMMANDS.items():
        code, out, err = run_captured(capsys, *path.split(), "--help")
        assert code == 0 and "--quiet" in out and not err, (path, err)


def test_same_option_same_name_type_default() -> None:
    seen: dict[str, dict[tuple, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path, cmd in COMMANDS.items():
        for p in cmd.params:
            for flag in SHARED:
                if flag in p.opts and not (flag == "--adapter" and path in ADAPTER_PER_MODALITY):
                    seen[flag][_signature(p)].append(path)
    for flag, variants in seen.items():
        assert len(variants) == 1, f"{flag} differs between commands: {dict(variants)}"


def test_one_name_per_concept() -> None:
    """No second spelling: whatever is about workers, device or precision uses the shared flag."""
    for path, cmd in COMMANDS.items():
        for p in cmd.params:
            names = " ".join(p.opts + p.secondary_opts)
            assert not set(p.opts + p.secondary_opts) & set(REPLACED), f"{path}: {names} was replaced"
            if "worker" in names:
                assert p.opts == ["--workers"], f"{path}: {names}"
            if "device" in names:
                assert p.opts == ["--device"], f"{path}: {names}"
            if any(w in names for w in ("autocast", "bf16", "fp16", "precision")):
                assert p.opts[0] in ("--autocast", "--text-autocast"), f"{path}: {names}"
            if "quiet" in names or "progress" in names:
                assert p.opts == ["--quiet", "-q"], f"{path}: {names}"


@pytest.mark.parametrize("path", sorted(PICKS_ENCODER))
def test_encoder_commands_take_the_group(path: str) -> None:
    opts = {o for p in COMMANDS[path].params for o in p.opts}
    assert set(PICKS_ENCODER[path]) <= opts, f"{path} lacks {set(PICKS_ENCODER[path]) - opts}"
    if path not in ("extract", "embed"):
        assert set(TEXT_SIDE) <= opts, f"{path} lacks {set(TEXT_SIDE) - opts}"
    assert "--workers" in opts or path in ("search", "serve", "index build"), path


def test_quiet_everywhere_json_wherever_a_result() -> None:
    for path, cmd in COMMANDS.items():
        opts = {o for p in cmd.params for o in p.opts}
        assert "--quiet" in opts, f"{path} has no --quiet"
        assert ("--json" in opts) != (path in NO_RESULT), f"{path}: --json expected on every command with a result"


def test_version_and_replaced_flags(capsys: pytest.CaptureFixture) -> None:
    from anyalign import __version__

    code, out, _ = run_captured(capsys, "--version")
    assert code == 0 and out.strip() == f"anyalign {__version__}"
    for args, fragment in ((["extract", "--bf16"], "--autocast bf16"),
                           (["classify", "x.wav", "--clip-model", "ViT-B-32"], "--set model=NAME"),
                           (["extract", "-e", "imu", "--model", "m"], "--set model=NAME"),
                           (["embed", "x", "-o", "y", "--num-workers", "2"], "--workers N"),
                           (["search", "idx", "--text", "a", "--embedder=text=encoder:text"], "--adapter DIR"),
                           (["data", "speech", "--no-progress"], "--quiet")):
        code, out, err = run_captured(capsys, *args)
        assert code == 2 and err.count("\n") == 1 and fragment in err and "replaced" in err, (args, err)


@pytest.mark.slow
def test_json_results_parse(tmp_path, capsys: pytest.CaptureFixture, assets) -> None:
    """--json of the retrieval and zero-shot commands prints one parseable document (progress stays on stderr);
    `embed` reads a UEA archive folder (the input layer's `uea` kind) into IMU embeddings with signal previews."""
    import json

    from _retrieval_helpers import image_corpus, tiny_bert, tiny_image_adapter
    from _served_space import tiny_imu_adapter

    def run(*args: object) -> Any:
        code, out, err = run_captured(capsys, *args, "--json")
        assert code == 0, (args, err[-2000:])
        return json.loads(out)

    corpus = image_corpus(tmp_path / "media")
    adapter, bert = tiny_image_adapter(tmp_path / "img"), tiny_bert(tmp_path / "bert")
    emb = run("embed", corpus, "--adapter", adapter, "-o", tmp_path / "emb", "--quiet")
    assert emb["count"] == 6 and emb["dim"] == 32 and emb["modality"] == "image"
    built = run("index", "build", tmp_path / "emb", "-o", tmp_path / "idx", "--text-encoder", "text",
                "--text-pretrained", bert)
    assert built["ntotal"] == 6 and set(built["embedders"]) == {"image", "text"}
    assert run("index", "info", tmp_path / "idx")["ntotal"] == 6
    hits = run("search", tmp_path / "idx", "--text", "a red square", "-k", "3")
    assert len(hits) == 3 and {h["modality"] for h in hits} == {"image"}
    assert run("index", "add", tmp_path / "idx", tmp_path / "emb")["ntotal"] == 12
    assert run("index", "delete", tmp_path / "idx", "--id", "0")["deleted"] == 1
    assert run("eval", "retrieval", tmp_path / "emb", tmp_path / "emb")["recall@1"] == pytest.approx(1.0)
    preds = run("classify", corpus.parent / "red.png", corpus.parent / "blue.png", "--adapter", adapter,
                "--text-encoder", "text", "--text-pretrained", bert, "-l", "red,blue,green")
    assert [len(r["predictions"]) for r in preds["results"]] == [3, 3]
    feats = run("extract", "-e", "timm-image", "--pretrained", tmp_path / "img" / "encoder.safetensors", "--set",
                "model=test_efficientnet", "-i", corpus, "-o", tmp_path / "feats", "--quiet")
    assert feats["count"] == 6 and feats["complete"]
    assert {e["name"] for e in run("encoders")} >= {"imu", "text", "timm-image"}
    imu = tiny_imu_adapter(tmp_path / "imu", bert)
    uea = run("embed", assets / "imu" / "BasicMotions", "--adapter", imu, "-o", tmp_path / "emb-imu", "--quiet")
    assert uea["count"] == 80 and uea["modality"] == "imu"  # BasicMotions: 40 train + 40 test windows
    row = json.loads((tmp_path / "emb-imu" / "metadata-00000.jsonl").open().readline())
    assert row["label"] and len(row["signal"]) == 6 and row["source"].startswith("BasicMotions/")


def test_quiet_lasts_one_invocation(capsys: pytest.CaptureFixture) -> None:
    import os

    from anyalign.cli import options

    code, out, err = run_captured(capsys, "projectors", "linear", "--quiet")
    assert code == 0 and out.startswith("linear") and not err
    assert not options.is_quiet() and "TQDM_DISABLE" not in os.environ


def test_command_groups_are_found_by_their_register_function_in_help_order(capsys: pytest.CaptureFixture) -> None:
    """A command group is one module with `register(app, eval_app)` and `HELP_ORDER`: no list names the modules."""
    import importlib

    names = cli_main.command_modules()
    assert names == ["encoders", "extract", "train", "retrieval", "zeroshot", "chat", "quickstart", "data", "share"]
    orders = [importlib.import_module(f"anyalign.cli.{n}").HELP_ORDER for n in names]
    assert orders == sorted(set(orders))  # distinct, so `anyalign --help` has one order
    code, out, _ = run_captured(capsys, "--help")
    listed = [ln.split()[1] for ln in out.splitlines() if ln.startswith("│ ") and ln[2:3].isalpha()]
    first = ["encoders", "projectors", "extract", "train", "embed", "search", "serve", "classify", "chat",
             "transcribe", "quickstart", "push"]
    assert code == 0 and listed[:len(first)] == first
