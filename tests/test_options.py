"""Typed options of encoders and projectors: declared dataclasses, derived ones for plugins, one-line errors."""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess

import pytest
import torch

from anyalign.config import ConfigError
from anyalign.encoders import ENCODERS, create_encoder, list_encoders, register_encoder
from anyalign.encoders.custom import wrap_module
from anyalign.encoders.registry import ENCODER_INFO, ENCODER_OPTIONS, check_encoder_options, encoder_options
from anyalign.options import option_fields
from anyalign.projectors import (
    PROJECTORS,
    check_projector_options,
    create_projector,
    list_projectors,
    projector_options,
    register_projector,
)
from anyalign.projectors.linear import LinearProjector


def _params(fn: object) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(fn).parameters)


@pytest.mark.parametrize("name", list_encoders())
def test_encoder_options_are_declared_once(name: str) -> None:
    """A built-in factory takes `(pretrained, opts)`, its options dataclass whole (no default restated), plus
    `**extra` exactly where the dataclass says where extra keys go; every option has a help text."""
    cls = encoder_options(name)
    assert dataclasses.is_dataclass(cls) and not getattr(cls, "derived", False), name
    params = _params(ENCODERS.get(name))
    assert list(params)[:2] == ["pretrained", "opts"], name
    assert all(o.help for o in option_fields(cls)), name
    takes_more = any(p.kind is p.VAR_KEYWORD for p in params.values())
    assert takes_more == bool(getattr(cls, "extra_options", "")), name
    assert len(params) == 2 + takes_more, name


@pytest.mark.parametrize("name", list_projectors())
def test_projector_options_are_declared_once(name: str) -> None:
    """Each built-in projector reads its options as one dataclass (`self.opts`): declared once, with help texts,
    recorded whole in `spec()`, and given whole or as keywords alike."""
    cls = projector_options(name)
    assert PROJECTORS.get(name).options is cls
    fields = option_fields(cls)
    assert all(o.help for o in fields), f"{name}: an option without help text"
    required = {"universal": {"modalities": ["imu"]}}.get(name, {})
    proj = create_projector(name, in_dim=8, out_dim=16, **required)
    assert isinstance(proj.opts, cls)
    assert set(proj.spec()) == {"name", "in_dim", "out_dim", *(o.name for o in fields)}
    for o in fields:
        if not o.required and o.name not in ("in_dims",):
            assert proj.config[o.name] == o.default, (name, o.name)
    again = PROJECTORS.get(name)(8, 16, cls(**required))
    assert again.spec() == proj.spec()


def test_encoder_option_errors_are_one_line() -> None:
    with pytest.raises(ConfigError) as e:
        check_encoder_options("text", {"nosuchopt": 3})
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("--set nosuchopt=3: encoder 'text' has no option 'nosuchopt'; options: ")
    assert "max_length (int | None, default null)" in msg and "normalize (bool, default true)" in msg
    with pytest.raises(ConfigError, match=r"option 'max_length' expects int \| None, got str 'long'"):
        check_encoder_options("text", {"max_length": "long"}, source="recipe.yaml: anchors.text")
    with pytest.raises(ConfigError, match="'pretrained' is not an option of encoder 'text'"):
        check_encoder_options("text", {"pretrained": "x"})
    with pytest.raises(ConfigError, match="expects 'none' | 'window' | 'stats'"):
        check_encoder_options("imu", {"normalize": "zscore"})
    out = check_encoder_options("imu", {"dropout": 0, "dim": 16})
    assert out == {"dropout": 0.0, "dim": 16} and isinstance(out["dropout"], float)  # int given for a float
    with pytest.raises(ConfigError, match=r"expects float \| None, got bool"):
        check_encoder_options("whisper", {"window_seconds": True})
    # create_encoder checks before building: no TypeError traceback
    with pytest.raises(ConfigError, match="encoder 'imu' has no option 'dimm'"):
        create_encoder("imu", dimm=16)


def test_pass_through_options_are_checked_where_they_go() -> None:
    # video: extra keys are its image encoder's options
    assert check_encoder_options("video", {"model": "x", "num_frames": 2}) == {"model": "x", "num_frames": 2}
    with pytest.raises(ConfigError, match="clip encoders have no option 'modle'"):
        check_encoder_options("video", {"modle": "x"})
    with pytest.raises(ConfigError, match="encoder 'timm-image' option 'model' expects str, got int"):
        check_encoder_options("video", {"image_encoder": "timm-image", "model": 3})
    # clip: extra keys must be open_clip.create_model_and_transforms arguments
    assert check_encoder_options("clip-image", {"force_image_size": 64}) == {"force_image_size": 64}
    with pytest.raises(ConfigError, match="clip encoders have no option 'force_imag_size'.*force_image_size"):
        check_encoder_options("clip-image", {"force_imag_size": 64})
    # timm: model keywords go to timm; a wrong one is a one-line ValueError, not a TypeError traceback
    with pytest.raises(ValueError, match="timm: cannot create 'test_efficientnet' with options") as e:
        create_encoder("timm-image", model="test_efficientnet", no_such_timm_arg=1)
    assert not isinstance(e.value, TypeError) and "\n" not in str(e.value)


@pytest.fixture
def plugin_encoder():
    """An encoder registered the way a user's plugin does, without `options=`."""

    def tiny_plugin(pretrained: str | None = None, *, width: int = 4, scale: float = 1.0, tag: str = "a"):
        torch.manual_seed(0)
        return wrap_module(torch.nn.Linear(3, width), modality="ecg", token_dim=width)

    register_encoder("tiny-plugin", modality="ecg", token_dim=4, pooled_dim=4, input_spec="[3] arrays")(tiny_plugin)
    yield "tiny-plugin"
    ENCODERS._items.pop("tiny-plugin", None)
    ENCODER_INFO.pop("tiny-plugin", None)
    ENCODER_OPTIONS.pop("tiny-plugin", None)


def test_plugin_options_are_derived_from_the_signature(plugin_encoder: str) -> None:
    fields = {o.name: o for o in option_fields(encoder_options(plugin_encoder))}
    assert {n: (o.type, o.default) for n, o in fields.items()} == {"width": ("int", 4), "scale": ("float", 1.0),
                                                                    "tag": ("str", "a")}
    with pytest.raises(ConfigError, match="encoder 'tiny-plugin' has no option 'widht'; options: width \\(int"):
        create_encoder(plugin_encoder, widht=8)
    with pytest.raises(ConfigError, match="option 'width' expects int, got str"):
        create_encoder(plugin_encoder, width="8")
    enc = create_encoder(plugin_encoder, width=8, scale=2)
    assert enc([torch.ones(3)]).pooled.shape == (1, 8)


def test_projector_option_errors() -> None:
    with pytest.raises(ConfigError) as e:
        create_projector("mlp", in_dim=8, out_dim=4, dept=2)
    msg = str(e.value)
    assert "\n" not in msg and "projector 'mlp' has no option 'dept'" in msg and "depth (int, default 2)" in msg
    with pytest.raises(ConfigError, match=r"adapters.imu.embed_projector depth='2': projector 'mlp' option 'depth' "
                                          r"expects int"):
        check_projector_options("mlp", {"depth": "2"}, source="adapters.imu.embed_projector")
    with pytest.raises(ConfigError, match="projector 'universal' needs option 'modalities'"):
        create_projector("universal", in_dim=8, out_dim=4)
    assert check_projector_options("rvq", {"decay": 0.9, "commitment_weight": 1}) == {"decay": 0.9,
                                                                                      "commitment_weight": 1.0}
    # a plugin projector registered without options: derived from __init__
    name = "tiny-linear-plugin"

    class Plugin(LinearProjector):
        def __init__(self, in_dim: int, out_dim: int, *, stride: int = 1, gain: float = 1.0) -> None:
            super().__init__(in_dim, out_dim, stride=stride)

    try:
        register_projector(name)(Plugin)
        assert [o.name for o in option_fields(projector_options(name))] == ["stride", "gain"]
        with pytest.raises(ConfigError, match=f"projector '{name}' has no option 'gian'"):
            create_projector(name, in_dim=8, out_dim=4, gian=2.0)
        assert create_projector(name, in_dim=8, out_dim=4, gain=2).out_dim == 4
    finally:
        PROJECTORS._items.pop(name, None)


def test_listing_shows_options_untruncated_at_80_columns(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    from anyalign.cli.main import main

    monkeypatch.setenv("COLUMNS", "80")

    def _cli(*args: str) -> subprocess.CompletedProcess:
        main(list(args))
        return subprocess.CompletedProcess(args, 0, capsys.readouterr().out, "")

    out = _cli("encoders").stdout
    for name in list_encoders():
        assert f"\n{name}  (" in "\n" + out
    assert "max_length  int | None = null" in out and "vit_small_patch14_dinov2" in out
    assert "window_seconds  float | None = null" in out
    data = json.loads(_cli("encoders", "--json").stdout)
    imu = next(d for d in data if d["name"] == "imu")
    assert {"name": "normalize", "type": "'none' | 'window' | 'stats'", "default": "none", "required": False,
            "help": imu["options"][11]["help"]} == imu["options"][11]
    proj = _cli("projectors").stdout
    assert "num_latents" in proj and "modalities           list[str] (required)" in proj
    data = json.loads(_cli("projectors", "--json").stdout)
    assert {d["name"] for d in data} == set(list_projectors())
    assert next(d for d in data if d["name"] == "mlp")["options"][0] == {
        "name": "depth", "type": "int", "default": 2, "required": False,
        "help": "linear layers (GELU between them); 2 = LLaVA-1.5"}
