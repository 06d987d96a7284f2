"""Hubness correction (anyalign.hubness): inverted softmax and QB-Norm demote hub items, wired into retrieval."""

from __future__ import annotations

import numpy as np
import pytest

from anyalign.hubness import Hubness, correct_scores, hub_occurrence
from anyalign.retrieval.evaluate import exact_metrics


def _hub_space(seed: int = 0, n: int = 40, dim: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gallery items, their queries (noisy copies) and a bank from the same distribution, with one hub item
    that every query leans towards (added to every query) and that no query belongs to."""
    rng = np.random.default_rng(seed)
    gallery = rng.standard_normal((n, dim))
    hub_dir = rng.standard_normal(dim)
    gallery[0] = hub_dir * 1.5  # item 0: the hub
    def queries(m: int) -> np.ndarray:
        idx = rng.integers(1, n, size=m)
        return gallery[idx] + 0.9 * rng.standard_normal((m, dim)) + 1.3 * hub_dir, idx
    q, idx = queries(200)
    bank, _ = queries(400)
    norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    return norm(q), idx, norm(gallery), norm(bank)


def test_qbnorm_and_inverted_softmax_demote_the_hub_and_raise_recall() -> None:
    q, idx, g, bank = _hub_space()
    raw = q @ g.T
    assert hub_occurrence(raw)["max_share"] > 0.3  # the hub answers many queries
    rel = [np.array([i]) for i in idx]
    before = exact_metrics(q, g, rel, (1, 5))
    for method in ("is", "qb-norm"):
        fixed = correct_scores(raw, bank @ g.T, method=method, beta=20.0)
        assert fixed.shape == raw.shape
        assert hub_occurrence(fixed)["max_share"] < hub_occurrence(raw)["max_share"] / 2
        after = exact_metrics(q, g, rel, (1, 5), hubness=Hubness(method, 20.0), bank=bank)
        assert after["recall@1"] > before["recall@1"] + 0.1, (method, before, after)
    assert np.array_equal(correct_scores(raw, bank @ g.T, method="none"), raw.astype(np.float32))


def test_qbnorm_leaves_queries_whose_top1_is_not_a_bank_hub() -> None:
    scores = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8]])
    bank = np.array([[0.9, 0.0, 0.1], [0.8, 0.1, 0.0]])  # the bank's top-1 is always item 0
    out = correct_scores(scores, bank, method="qb-norm", beta=10.0)
    assert np.allclose(out[1], 10.0 * scores[1])  # top-1 item 2 is not in the activation set: raw ranking kept
    assert not np.allclose(out[0], 10.0 * scores[0])


def test_bad_arguments_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="expected one of none, is, qb-norm"):
        Hubness("csls")
    with pytest.raises(ValueError, match="beta must be > 0"):
        Hubness("is", beta=0)
    with pytest.raises(ValueError, match="same gallery"):
        correct_scores(np.zeros((2, 3)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="needs a bank"):
        exact_metrics(np.eye(3), np.eye(3), [np.array([i]) for i in range(3)], (1,), hubness=Hubness())


@pytest.mark.slow  # imports open_clip (tens of seconds on a loaded machine)
def test_zeroshot_scores_take_the_correction_and_speech_templates(tmp_path) -> None:
    open_clip = pytest.importorskip("open_clip")
    import torch

    from anyalign.encoders.clip import register_model_configs
    from anyalign.encoders.spec import EncoderSpec
    from anyalign.io import save_weights
    from anyalign.zeroshot import ZeroShotClassifier
    from anyalign.zeroshot.prompts import SPEECH_TEMPLATES, default_templates

    register_model_configs()
    torch.manual_seed(0)
    path = tmp_path / "tiny-clip.safetensors"
    save_weights(path, open_clip.create_model("anyalign-tiny-vit").state_dict())
    clf = ZeroShotClassifier.from_specs(EncoderSpec("clip-image", str(path), {"model": "anyalign-tiny-vit"}),
                                        ["red", "green", "blue"], cache_dir=tmp_path / "cache", progress=False)
    assert clf.templates[0] == "a photo of a {}."  # an image encoder keeps its templates
    emb = torch.nn.functional.normalize(torch.randn(12, clf.text.dim), dim=-1)
    raw = clf.raw_scores(emb).numpy()
    bank = torch.nn.functional.normalize(torch.randn(50, clf.text.dim) + 3 * clf.weights[:, 0], dim=-1)
    clf.hubness = (Hubness("is", 10.0), bank)
    fixed = clf.raw_scores(emb).numpy()
    expected = correct_scores(raw, (bank @ clf.weights).numpy(), method="is", beta=10.0)
    assert np.allclose(fixed, expected, atol=1e-5) and not np.allclose(fixed, raw)
    assert default_templates("audio", "whisper") == SPEECH_TEMPLATES and "{}" in SPEECH_TEMPLATES
    assert default_templates("audio", "clap-audio")[0] == "the sound of {}."


def test_eval_retrieval_cli_hubness_option(tmp_path, capsys) -> None:
    import json

    from tests._cli import run_cli

    q, idx, g, bank = _hub_space()
    np.save(tmp_path / "q.npy", q.astype(np.float32))
    np.save(tmp_path / "g.npy", g[idx].astype(np.float32))  # row i of the gallery is query i's item
    np.save(tmp_path / "bank.npy", bank.astype(np.float32))
    base = [str(tmp_path / "q.npy"), str(tmp_path / "g.npy"), "--json"]
    assert run_cli(["eval", "retrieval", *base]) == 0
    raw = json.loads(capsys.readouterr().out)
    assert run_cli(["eval", "retrieval", *base, "--hubness", "qb-norm", "--bank", str(tmp_path / "bank.npy")]) == 0
    fixed = json.loads(capsys.readouterr().out)
    assert fixed["queries"] == raw["queries"] == len(q)
    assert run_cli(["eval", "retrieval", *base, "--hubness", "qb-norm"]) == 2
    assert "needs a bank" in capsys.readouterr().err
