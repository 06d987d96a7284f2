"""Alignment losses against hand-computed values: symmetric InfoNCE, label positives, temperature clamp."""

from __future__ import annotations

import math

import pytest
import torch

from anyalign.align.evaluate import recall_at_k, zero_shot_accuracy
from anyalign.align.losses import MAX_LOGIT_SCALE, InfoNCE, gather_with_grad, info_nce


def _ce(logits_row: list[float], target: int) -> float:
    return -(logits_row[target] - math.log(sum(math.exp(v) for v in logits_row)))


def test_info_nce_matches_hand_computation() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # normalised inside: [1, 0], [0, 1]
    b = torch.tensor([[3.0, 0.0], [0.6, 0.8]])  # -> [1, 0], [0.6, 0.8]
    loss_fn = InfoNCE(init_temperature=0.5)  # scale 2
    sim = [[1.0, 0.6], [0.0, 0.8]]  # cosine a_i . b_j
    logits = [[2 * v for v in row] for row in sim]
    rows = (_ce(logits[0], 0) + _ce(logits[1], 1)) / 2
    cols = (_ce([logits[0][0], logits[1][0]], 0) + _ce([logits[0][1], logits[1][1]], 1)) / 2
    expected = 0.5 * (rows + cols)
    got = loss_fn(a, b)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert loss_fn(b, a).item() == pytest.approx(expected, rel=1e-6)  # symmetric


def test_info_nce_label_positives_hand_computed() -> None:
    # rows 0 and 1 share a label: each has two positives with target weight 1/2
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.5, 1.5, -1.0], [0.0, 0.0, 3.0]])
    pos = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    lsm = lambda row: [v - math.log(sum(math.exp(x) for x in row)) for v in row]  # noqa: E731
    l_rows = [lsm(r) for r in logits.tolist()]
    l_cols = [lsm(r) for r in logits.t().tolist()]
    row = (-(l_rows[0][0] + l_rows[0][1]) / 2 - (l_rows[1][0] + l_rows[1][1]) / 2 - l_rows[2][2]) / 3
    col = (-(l_cols[0][0] + l_cols[0][1]) / 2 - (l_cols[1][0] + l_cols[1][1]) / 2 - l_cols[2][2]) / 3
    assert info_nce(logits, pos).item() == pytest.approx(0.5 * (row + col), rel=1e-6)
    # with only the diagonal as positives it equals the plain version
    assert info_nce(logits, torch.eye(3, dtype=torch.bool)).item() == pytest.approx(info_nce(logits).item(), rel=1e-6)


def test_info_nce_labels_and_unlabelled_rows() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    loss_fn = InfoNCE()
    plain = loss_fn(a, b)
    assert loss_fn(a, b, torch.tensor([-1, -1, -1, -1])).item() == pytest.approx(plain.item(), rel=1e-6)
    assert loss_fn(a, b, torch.tensor([0, 1, 2, 3])).item() == pytest.approx(plain.item(), rel=1e-6)
    assert loss_fn(a, b, torch.tensor([0, 0, 1, -1])).item() != pytest.approx(plain.item(), rel=1e-3)


def test_temperature_is_learned_and_clamped() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4)
    loss_fn = InfoNCE(init_temperature=0.07)
    assert loss_fn.scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    loss_fn(a, b).backward()
    assert loss_fn.logit_scale.grad is not None and loss_fn.logit_scale.grad.abs() > 0
    with torch.no_grad():
        loss_fn.logit_scale.fill_(10.0)
    loss_fn.logit_scale.grad = None
    loss_fn(a, b).backward()
    assert loss_fn.scale.item() == pytest.approx(math.exp(MAX_LOGIT_SCALE), rel=1e-5)
    assert loss_fn.logit_scale.grad.item() == 0.0  # no gradient past CLIP's clamp
    frozen = InfoNCE(init_temperature=0.1, learn_temperature=False)
    assert not frozen.logit_scale.requires_grad


def test_info_nce_rejects_bad_shapes_and_single_process_gather_is_identity() -> None:
    with pytest.raises(ValueError, match=r"\[B, E\]"):
        InfoNCE()(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="init_temperature"):
        InfoNCE(init_temperature=0.0)
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x


def test_eval_metrics() -> None:
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    cls = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert zero_shot_accuracy(emb, cls, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    g = torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0]])  # query 1's match is item 1, but item 2 is closer
    r = recall_at_k(q, g, [1, 2, 3])
    assert r[1] == pytest.approx(1 / 3) and r[3] == 1.0
