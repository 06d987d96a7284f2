"""Registry, config io, weights io and atomic writes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from anyalign.config import ConfigError, apply_overrides, from_dict, load_config
from anyalign.io import atomic_path, load_weights, resolve_pretrained, save_weights
from anyalign.registry import Registry, UnknownNameError


def test_registry_finds_a_package_builtins_by_their_decorator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A component is one decorated module: asking for it imports only that module; listing imports every one."""
    pkg = tmp_path / "widgets_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from anyalign.registry import Registry\n"
                                     "WIDGETS = Registry('widget', package=__name__, decorator='register_widget')\n"
                                     "register_widget = WIDGETS.register\n")
    for mod, names in (("small", ["a"]), ("pair", ["b", "c"])):
        body = "".join(f"\n@register_widget('{n}')\ndef w_{n}():\n    return {n!r}\n" for n in names)
        (pkg / f"{mod}.py").write_text(f"from . import register_widget\n{body}")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys

    widgets = importlib.import_module("widgets_pkg").WIDGETS
    assert widgets.declared() == {"a": "widgets_pkg.small", "b": "widgets_pkg.pair", "c": "widgets_pkg.pair"}
    assert widgets.create("c") == "c" and "widgets_pkg.pair" in sys.modules and "widgets_pkg.small" not in sys.modules
    assert "a" in widgets and "widgets_pkg.small" in sys.modules
    assert widgets.names() == ["a", "b", "c"]
    with pytest.raises(UnknownNameError, match="unknown widget 'd'; expected one of: a, b, c"):
        widgets.get("d")


@pytest.mark.parametrize("package, registry, at_least", [("anyalign.encoders", "ENCODERS", 7),
                                                         ("anyalign.projectors", "PROJECTORS", 7),
                                                         ("anyalign.datasets.records", "DATA_KINDS", 7),
                                                         ("anyalign.align.config", "TASK_REGISTRY", 5)])
def test_builtins_read_from_decorators_are_what_the_modules_register(package: str, registry: str,
                                                                      at_least: int) -> None:
    """The decorator is the only registration: what the scan reads equals what importing each module registers."""
    import importlib
    import pkgutil

    registry = getattr(importlib.import_module(package), registry)
    package = registry.package
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{package}.{info.name}")
    registered = {n: f.__module__ for n, f in registry._items.items() if f.__module__.startswith(package + ".")}
    assert registry.declared() == registered and len(registered) >= at_least


def test_registry_lists_names_in_error() -> None:
    reg: Registry[int] = Registry("widget")

    @reg.register("one")
    def one() -> int:
        return 1

    assert reg.create("one") == 1 and reg.names() == ["one"] and "one" in reg
    with pytest.raises(UnknownNameError, match="unknown widget 'two'; expected one of: one"):
        reg.get("two")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("one")(lambda: 2)


@dataclass
class _Inner:
    lr: float = 1e-3
    steps: int = 10


@dataclass
class _Outer:
    name: str
    inner: _Inner = field(default_factory=_Inner)
    tags: list[str] = field(default_factory=list)
    dim: int | None = None


def test_config_strict_and_lenient(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = from_dict(_Outer, {"name": "a", "inner": {"lr": 1, "steps": 3}, "dim": None})
    assert cfg.inner.lr == 1 and cfg.inner.steps == 3
    with pytest.raises(ConfigError, match=r"recipe.yaml: unknown key\(s\) bogus"):
        from_dict(_Outer, {"name": "a", "bogus": 1}, source="recipe.yaml")
    with pytest.raises(ConfigError, match=r"recipe.yaml: inner: field 'steps' expects int, got 'x'"):
        from_dict(_Outer, {"name": "a", "inner": {"steps": "x"}}, source="recipe.yaml")
    with pytest.raises(ConfigError, match="name"):
        from_dict(_Outer, {}, source="recipe.yaml")
    cfg = from_dict(_Outer, {"name": "a", "future_key": 1}, strict=False)
    assert cfg.name == "a" and "future_key" in caplog.text

    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: base\ninner:\n  lr: 0.1\n")
    cfg = load_config(_Outer, recipe, ["inner.steps=7", "tags=[a, b]", "inner.lr=1e-4"])
    assert cfg.inner.steps == 7 and cfg.tags == ["a", "b"] and cfg.inner.lr == 1e-4
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["novalue"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(_Outer, tmp_path / "missing.yaml")


def test_weights_roundtrip_and_no_pickle(tmp_path: Path) -> None:
    state = {"w": torch.randn(3, 4), "b": torch.zeros(4)}
    save_weights(tmp_path / "w.safetensors", state)
    loaded = load_weights(tmp_path / "w.safetensors")
    assert all(torch.equal(state[k], loaded[k]) for k in state)
    torch.save({"state_dict": state}, tmp_path / "w.pt")
    assert torch.equal(load_weights(tmp_path / "w.pt")["w"], state["w"])
    torch.save({"evil": object.__new__(_Inner)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights-only"):
        load_weights(tmp_path / "evil.pt")


def test_atomic_path_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    target.write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "good" and list(tmp_path.iterdir()) == [target]
    with atomic_path(tmp_path / "new.txt") as tmp:
        tmp.write_text("x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o666 & ~umask  # not left private like a temp file
    with atomic_path(tmp_path / "d", is_dir=True) as tmp:
        (tmp / "f").write_text("1")
    assert (tmp_path / "d" / "f").read_text() == "1"


def test_resolve_pretrained(tmp_path: Path) -> None:
    f = tmp_path / "m.safetensors"
    f.write_bytes(b"")
    assert resolve_pretrained(f).kind == "file"
    assert resolve_pretrained(tmp_path).kind == "dir"
    assert resolve_pretrained("hf-hub:org/model").location == "org/model"
    assert resolve_pretrained("org/model").kind == "hub"
    assert resolve_pretrained("laion2b_s34b_b79k").kind == "tag"
    with pytest.raises(FileNotFoundError, match="no such file"):
        resolve_pretrained("./nope.safetensors")


def test_readme_component_table_names_real_files_and_decorators() -> None:
    """README's "where a new component goes": every path exists and every decorator is a registry's (no lists)."""
    import importlib
    import re

    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text(encoding="utf-8")
    section = text.split("Where a new component goes", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ") and not ln.startswith("| new ...")]
    assert len(rows) >= 5 and "_BUILTIN" not in section
    paths = re.findall(r"`(anyalign/[^`]+|examples/[^`]+)`", section)
    for p in paths:
        target = root / re.sub(r"/?<[a-z]+>\.py$", "", p)
        assert target.exists(), p
    owners = {"register_encoder": "anyalign.encoders", "register_projector": "anyalign.projectors",
              "register_task": "anyalign.align.tasks", "register_data_kind": "anyalign.datasets.records"}
    decorators = set(re.findall(r"@(\w+)\(", section))
    assert decorators == set(owners)
    for name, module in owners.items():
        assert callable(getattr(importlib.import_module(module), name))
