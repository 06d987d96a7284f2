"""Shared fixtures: offline hub, small thread count, and the real assets (skip when absent)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["ANYALIGN_CACHE"] = __import__("tempfile").mkdtemp(prefix="anyalign-test-cache-")  # keep ~/.cache clean
# the session made this folder, so it removes it at exit (285 of them had piled up in /tmp)
__import__("atexit").register(__import__("shutil").rmtree, os.environ["ANYALIGN_CACHE"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


def _assets_root() -> Path | None:
    """Where the library keeps its assets (`anyalign.assets.assets_root`: `$ANYALIGN_ASSETS`, else
    `~/.cache/anyalign-assets`, which the README's install command fills), if that folder exists."""
    from anyalign.assets import assets_root

    root = assets_root()
    return root if root.is_dir() else None


@pytest.fixture(scope="session")
def assets() -> Path:
    """Root of the real offline assets; skips the test when the README's install command has not fetched them."""
    root = _assets_root()
    if root is None:
        pytest.skip("real assets not available: run the README's install command (`anyalign quickstart` fetches "
                    "them into ~/.cache/anyalign-assets) or set ANYALIGN_ASSETS")
    return root


@pytest.fixture(scope="session")
def minilm_dir(assets: Path) -> Path:
    path = assets / "text" / "all-MiniLM-L6-v2"
    if not path.is_dir():
        pytest.skip(f"{path} missing")
    return path


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
