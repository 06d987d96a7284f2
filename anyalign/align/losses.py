"""Alignment losses: ImageBind/CLIP symmetric InfoNCE with a learnable temperature, gathered across ranks.

Under DDP every rank gathers all embeddings (with gradient) and computes the same global loss; the gather's
backward sums the gradients of all ranks and DDP averages them, so N processes with a global batch B train
exactly like one process with batch B (no hard-negative mining, the negatives are the whole global batch).
Several anchors (ImageBind): one `InfoNCE` per (modality, anchor) pair, each with its own temperature; the
trainer sums the weighted terms.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps the learned temperature at 1/100


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _sizes(n: int, device: torch.device) -> list[int]:
    out = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(out, torch.tensor([n], dtype=torch.long, device=device))
    return [int(t.item()) for t in out]


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    if x.shape[0] == rows:
        return x.contiguous()
    return torch.cat([x, x.new_zeros((rows - x.shape[0], *x.shape[1:]))], 0)


def _unpad(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    top = max(sizes)
    if all(s == top for s in sizes):
        return x
    return torch.cat([x[i * top: i * top + s] for i, s in enumerate(sizes)], 0)


def global_size(n: int, device: torch.device | str = "cpu") -> int:
    """Sum of a local count over all ranks (the local count when not distributed)."""
    return sum(_sizes(n, torch.device(device))) if _distributed() else n


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather `[B_r, ...]` from every rank into `[sum B_r, ...]` (rank order) keeping the autograd graph.

    Ranks may hold different numbers of rows (mixed-task batches); every rank must call this.
    """
    if not _distributed():
        return x
    sizes = _sizes(x.shape[0], x.device)
    padded = _pad_rows(x, max(sizes))
    import torch.distributed._functional_collectives as fc

    gather = getattr(fc, "all_gather_single_autograd", None) or fc.all_gather_tensor_autograd  # newest name first
    out = fc.wait_tensor(gather(padded, 0, dist.group.WORLD))  # [W*max, ...]; backward sums the ranks' gradients
    return _unpad(out, sizes)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather without gradient (labels, ids); unequal row counts allowed."""
    if not _distributed():
        return x
    sizes = _sizes(x.shape[0], x.device)
    padded = _pad_rows(x, max(sizes))
    out = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(out, padded)
    return _unpad(torch.cat(out, 0), sizes)


def info_nce(logits: torch.Tensor, positives: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric cross-entropy of a `[B, B]` similarity matrix: rows a->b and columns b->a, averaged.

    `positives` (`[B, B]` bool) marks several correct matches per row (e.g. windows of the same class);
    the target is then uniform over them. Default: the diagonal (the i-th a belongs with the i-th b).
    """
    if positives is None:
        target = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    pos = positives.to(logits.dtype)
    return _soft_ce(logits, pos / pos.sum(1, keepdim=True), pos.t() / pos.t().sum(1, keepdim=True))


def _soft_ce(logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy against row-stochastic targets for the rows (a->b) and the columns (b->a)."""
    row = -(rows * F.log_softmax(logits, 1)).sum(1).mean()
    col = -(cols * F.log_softmax(logits.t(), 1)).sum(1).mean()
    return 0.5 * (row + col)


class InfoNCE(nn.Module):
    """Symmetric InfoNCE between two batches of embeddings with a learnable `logit_scale` (CLIP's 1/temperature).

    `forward(a [B, E], b [B, E], labels=None) -> loss`. Inputs are L2-normalised here. With `labels` (`[B]`
    ints, -1 = unlabelled), every pair sharing a label counts as positive, which removes false negatives when
    captions are class-level (activity recognition). Under DDP the embeddings are gathered from every rank
    first (ranks may hold different numbers of rows, but the global batch must not be empty).
    """

    def __init__(self, init_temperature: float = 0.07, learn_temperature: bool = True,
                 max_logit_scale: float = MAX_LOGIT_SCALE) -> None:
        super().__init__()
        if init_temperature <= 0:
            raise ValueError(f"InfoNCE: init_temperature must be > 0, got {init_temperature}")
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)),
                                        requires_grad=learn_temperature)
        self.max_logit_scale = max_logit_scale

    @property
    def scale(self) -> torch.Tensor:
        """The clamped multiplier applied to cosine similarities (no gradient beyond the clamp, as in CLIP)."""
        return self.logit_scale.clamp(max=self.max_logit_scale).exp()

    def forward(self, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if a.shape != b.shape or a.dim() != 2:
            raise ValueError(f"{type(self).__name__}: expected two [B, E] tensors of the same shape, got "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")
        a = gather_with_grad(F.normalize(a.float(), dim=-1))  # [W*B, E]
        b = gather_with_grad(F.normalize(b.float(), dim=-1))  # [W*B, E]
        labels = gather_no_grad(labels) if labels is not None else None
        return self.loss(self.scale * a @ b.t(), b, labels)  # logits [W*B, W*B]

    def loss(self, logits: torch.Tensor, b: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The loss of the gathered logits (`b`: the anchor side, `labels`: gathered)."""
        positives = None
        if labels is not None:
            unlabelled = -1 - torch.arange(labels.shape[0], device=labels.device)  # unique: only its own pair
            labels = torch.where(labels < 0, unlabelled, labels)
            positives = labels[:, None] == labels[None, :]  # [W*B, W*B]
        return info_nce(logits, positives)


def soft_targets(anchor: torch.Tensor, temperature: float, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Row-stochastic `[B, B]` targets from the anchor space's own similarities: softmax(cos(b_i, b_j) / T).

    With `labels`, pairs sharing a label count as identical (cosine 1), which generalises label positives.
    """
    sim = anchor @ anchor.t()  # [B, B], normalised inputs
    if labels is not None:
        same = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0)
        sim = torch.where(same, torch.ones_like(sim), sim)
    return F.softmax(sim / temperature, dim=1)


class SoftInfoNCE(InfoNCE):
    """Geometry-keeping InfoNCE: the target of modality item i over the batch's anchors is not one-hot but the
    anchor space's own similarity of anchor i to each anchor j (`soft_targets`), so an item is pulled towards
    close phrasings (synonyms, paraphrases, related classes) in proportion to how close the anchor says they are.

    Same call as `InfoNCE` (`forward(a, b, labels=None)`, `b` the anchor side); symmetric, gathered under DDP.
    """

    def __init__(self, init_temperature: float = 0.07, learn_temperature: bool = True,
                 max_logit_scale: float = MAX_LOGIT_SCALE, soft_temperature: float = 0.05) -> None:
        super().__init__(init_temperature, learn_temperature, max_logit_scale)
        if soft_temperature <= 0:
            raise ValueError(f"SoftInfoNCE: soft_temperature must be > 0, got {soft_temperature}")
        self.soft_temperature = soft_temperature

    def loss(self, logits: torch.Tensor, b: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            target = soft_targets(b.detach(), self.soft_temperature, labels)  # [W*B, W*B], symmetric
        return _soft_ce(logits, target, target.t())


def contrastive_loss(options: dict | None = None) -> InfoNCE:
    """The binding loss of one anchor from its recipe options (`AnchorSpec`): `loss` infonce (default) or soft,
    `temperature`, `learn_temperature`, `soft_temperature`."""
    o = dict(options or {})
    kind = o.get("loss", "infonce")
    base = (float(o.get("temperature", 0.07)), bool(o.get("learn_temperature", True)))
    if kind == "infonce":
        return InfoNCE(*base)
    if kind == "soft":
        return SoftInfoNCE(*base, soft_temperature=float(o.get("soft_temperature", 0.05)))
    raise ValueError(f"anchors.*.loss: expected 'infonce' or 'soft', got {kind!r}")


__all__ = ["InfoNCE", "MAX_LOGIT_SCALE", "SoftInfoNCE", "contrastive_loss", "gather_no_grad", "gather_with_grad",
           "global_size", "info_nce", "soft_targets"]
