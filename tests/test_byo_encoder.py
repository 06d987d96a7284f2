"""Bring-your-own-encoder regressions: the encoder spec travels with every artifact, text is never a path,
transparent images are composited, and saved adapters of every format keep loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from anyalign.adapter import ModalityAdapter
from anyalign.cli.main import main
from anyalign.encoders import EncoderOutput, create_encoder
from anyalign.encoders.spec import EncoderSpec
from anyalign.io import load_weights
from anyalign.retrieval import Retriever

FIXTURES = Path(__file__).parent / "fixtures"


def _cli(capsys: pytest.CaptureFixture, *args: object) -> str:
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        assert e.code in (0, None), capsys.readouterr().err
    return capsys.readouterr().out


def _text(minilm: Path, sentences: list[str], **options: object) -> np.ndarray:
    out = create_encoder("text", pretrained=str(minilm), **options)(sentences).pooled
    return torch.nn.functional.normalize(out, dim=-1).numpy()


def test_jsonl_text_rows_embed_the_text(tmp_path: Path, minilm_dir: Path, capsys: pytest.CaptureFixture) -> None:
    rows = [{"text": "a blackbird."}, {"text": "a cello in a concert hall.", "label": "music"}]
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _cli(capsys, "embed", tmp_path / "captions.jsonl", "--encoder", "text", "--pretrained", minilm_dir,
         "-o", tmp_path / "emb")
    vecs = np.load(tmp_path / "emb" / "embeddings-00000.npy")
    assert np.allclose(vecs, _text(minilm_dir, [r["text"] for r in rows]), atol=1e-5)
    meta = [json.loads(x) for x in (tmp_path / "emb" / "metadata-00000.jsonl").read_text().splitlines()]
    assert meta[1]["label"] == "music" and meta[0]["caption"] == "a blackbird."


def test_features_with_options_are_searched_with_the_same_options(tmp_path: Path, minilm_dir: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    texts = ["the quick brown fox jumps over the lazy dog near the river bank", "a cup of coffee", "rain on a roof"]
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
    _cli(capsys, "extract", "-e", "text", "--pretrained", minilm_dir, "--set", "max_length=6", "-i",
         tmp_path / "t.txt", "-o", tmp_path / "feats", "--quiet")
    _cli(capsys, "index", "build", tmp_path / "feats", "-o", tmp_path / "idx")
    query = texts[0]
    got = Retriever(tmp_path / "idx").embed_text(query)
    assert np.allclose(got, _text(minilm_dir, [query], max_length=6), atol=1e-5)
    assert not np.allclose(got, _text(minilm_dir, [query]), atol=1e-3)  # the default options would differ
    hits = json.loads(_cli(capsys, "search", tmp_path / "idx", "--text", query, "-k", "1", "--json"))
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_transparent_png_is_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # transparent pixels hold black, as clip art often does
    ImageDraw.Draw(img).ellipse((16, 16, 48, 48), fill=(200, 30, 30, 255))
    img.save(tmp_path / "stamp.png")
    Image.new("RGB", (64, 64), (0, 0, 0)).save(tmp_path / "black.png")
    img.convert("P").save(tmp_path / "palette.png", transparency=0)
    from anyalign.encoders.image_io import load_image

    enc = create_encoder("timm-image", model="test_efficientnet")
    loaded = load_image(str(tmp_path / "stamp.png"))
    assert np.asarray(loaded)[0, 0].tolist() == [255, 255, 255] and np.asarray(loaded)[32, 32, 0] == 200
    out = torch.nn.functional.normalize(enc([str(tmp_path / "stamp.png"), str(tmp_path / "black.png")]).pooled, dim=-1)
    assert float(out[0] @ out[1]) < 0.999
    assert np.asarray(load_image(str(tmp_path / "palette.png")))[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize("version", [1, 2])
def test_saved_adapter_formats_load_with_identical_outputs(version: int) -> None:
    folder = FIXTURES / f"adapter_format_v{version}"
    adapter = ModalityAdapter.from_pretrained(folder, load_encoder=False)
    assert adapter.config.encoder == EncoderSpec("imu", None, {"dim": 16, "depth": 1, "heads": 2})
    if version == 2:
        assert adapter.config.space["text"].name == "text" and adapter.config.format_version == 2
    ref = load_weights(folder / "expected.safetensors")
    feats = EncoderOutput(ref["tokens"], ref["mask"].bool(), ref["tokens"].mean(1))
    with torch.no_grad():
        assert torch.allclose(adapter.embed(feats), ref["embed"], atol=1e-6)
        assert torch.allclose(adapter.soft_tokens(feats).tokens, ref["soft"], atol=1e-6)


def test_spec_round_trip_and_one_line_errors() -> None:
    spec = EncoderSpec.from_cli("text", None, ["max_length=16"], "bf16")
    assert EncoderSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.options == {"max_length": 16} and spec.partner("text") == spec
    with pytest.raises(ValueError, match="has no option 'nosuchopt'"):
        EncoderSpec.from_cli("text", None, ["nosuchopt=3"])
    with pytest.raises(ValueError, match="unknown key.*kwargs"):
        EncoderSpec.from_dict({"name": "text", "kwargs": {}}, source="anchors.text.encoder")
    assert EncoderSpec("clip-image", "w.pt", {"model": "ViT-B-32", "layer": -2}).partner("text") == \
        EncoderSpec("clip-text", "w.pt", {"model": "ViT-B-32"})


def test_probe_splits_by_group_when_the_data_says_what_belongs_together() -> None:
    from anyalign.zeroshot.evaluate import linear_probe

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    groups = [f"recording{i // 5}" for i in range(40)]  # 5 overlapping windows per recording
    x = rng.normal(size=(40, 8)) + y[:, None]
    report = linear_probe(x, y, groups=groups)
    assert report["method"].startswith("stratified group")
    from sklearn.model_selection import StratifiedGroupKFold

    for train, test in StratifiedGroupKFold(5, shuffle=True, random_state=0).split(x, y, groups):
        assert not {groups[i] for i in train} & {groups[i] for i in test}
    assert linear_probe(x, y)["method"].startswith("stratified 5-fold")  # no groups: the old split, said so
