"""Held-out evaluation of an `AlignmentModel`: zero-shot accuracy, retrieval recall@K and caption loss."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .data import Collator, PairedDataset
from .model import LLM_TASKS, AlignmentModel

logger = logging.getLogger(__name__)


def zero_shot_accuracy(emb: torch.Tensor, class_emb: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows of `emb` `[N, E]` whose most similar class embedding (`[C, E]`) is their label `[N]`."""
    pred = (F.normalize(emb, dim=-1) @ F.normalize(class_emb, dim=-1).t()).argmax(1)
    return float((pred == labels).float().mean())


def match_ranks(query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """1-based rank `[N]` of each query's match (query i <-> gallery i, both `[N, E]`), ties ranked
    pessimistically: an item scoring the same as the match counts as above it (as `anyalign eval retrieval`)."""
    sim = F.normalize(query, dim=-1) @ F.normalize(gallery, dim=-1).t()  # [N, N]
    return (sim >= sim.diagonal()[:, None]).sum(1)  # the match itself + every item not below it


def recall_at_k(query: torch.Tensor, gallery: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Recall@K where query i's match is gallery i (both `[N, E]`); ties count against the match."""
    rank = match_ranks(query, gallery)
    return {k: float((rank <= k).float().mean()) for k in ks}


@torch.no_grad()
def class_embeddings(model: AlignmentModel, anchor: str, prompts: dict[str, list[str]]) -> torch.Tensor:
    """One embedding per class: the normalised mean of its prompt templates (CLIP's prompt ensemble)."""
    rows = [F.normalize(model.anchor_texts(anchor, texts).mean(0), dim=-1) for texts in prompts.values()]
    return torch.stack(rows)


def _tag(ds: PairedDataset, used: set[str]) -> str:
    src = ds.sources[0]
    base = src.modality or next(iter(ds.records[0][1]["media"]), src.kind)
    tag, n = base, 1
    while tag in used:
        n += 1
        tag = f"{base}{n}"
    used.add(tag)
    return tag


@torch.no_grad()
def evaluate_model(model: AlignmentModel, datasets: Sequence[PairedDataset], collate_fns: dict[str, Any], *,
                   batch_size: int = 64, zero_shot: bool = True, recall_k: Sequence[int] = (1, 5, 10),
                   max_samples: int | None = None) -> dict[str, float]:
    """Metrics named `eval/<source>/<metric>` for each held-out source (one source per dataset)."""
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    used: set[str] = set()
    try:
        for ds in datasets:
            tag = _tag(ds, used)
            n = len(ds) if max_samples is None else min(len(ds), max_samples)
            loader = DataLoader(torch.utils.data.Subset(ds, range(n)), batch_size=batch_size,
                                collate_fn=Collator(collate_fns, ds.labels),  # label ids follow ds.labels
                                generator=torch.Generator())  # leave the global RNG alone (exact resume)
            task = ds.sources[0].task
            if task == "contrastive":
                out.update(_contrastive_metrics(model, ds, loader, tag, zero_shot, recall_k))
            elif task in LLM_TASKS and model.frozen.mllm is not None:
                total, count = 0.0, 0
                for batch in loader:
                    batch = batch.to(model.device)
                    feats = {m: model.features(m, mb) for m, mb in batch.media.items()}
                    loss = model.llm_loss(batch, feats, list(range(len(batch))), lm_only=True)
                    total += float(loss) * len(batch)
                    count += len(batch)
                out[f"eval/{tag}/{task}_loss"] = total / max(count, 1)
    finally:
        model.train(was_training)
    return out


def _contrastive_metrics(model: AlignmentModel, ds: PairedDataset, loader: Any, tag: str, zero_shot: bool,
                         recall_k: Sequence[int]) -> dict[str, float]:
    embs: dict[str, list[torch.Tensor]] = {}
    anchors: dict[str, list[torch.Tensor]] = {}
    labels: list[torch.Tensor] = []
    for batch in loader:
        batch = batch.to(model.device)
        labels.append(batch.labels.cpu())
        for m, mb in batch.media.items():
            feats = model.features(m, mb)
            if m in model.adapters and model.adapters[m].config.embed_dim is not None:
                embs.setdefault(m, []).append(model.embed(m, feats)[0].float().cpu())
            elif m in model.frozen.anchors:
                anchors.setdefault(m, []).append(F.normalize(feats.pooled.float(), dim=-1).cpu())
        if "text" in model.frozen.anchors and all(c is not None for c in batch.captions):
            anchors.setdefault("text", []).append(model.anchor_texts("text", batch.captions).cpu())
    out = {}
    y = torch.cat(labels)
    for m, chunks in embs.items():
        emb = torch.cat(chunks)
        if zero_shot and ds.labels and (y >= 0).all() and "text" in model.frozen.anchors:
            cls = class_embeddings(model, "text", ds.class_prompts()).cpu()
            out[f"eval/{tag}/zeroshot_acc"] = zero_shot_accuracy(emb, cls, y)
            out[f"eval/{tag}/chance"] = 1.0 / len(ds.labels)
        elif recall_k:
            for a, a_chunks in anchors.items():
                gal = torch.cat(a_chunks)
                if gal.shape[0] != emb.shape[0]:
                    continue
                for name, q, g in ((f"{m}->{a}", emb, gal), (f"{a}->{m}", gal, emb)):
                    rank = match_ranks(q, g)
                    for k in recall_k:
                        out[f"eval/{tag}/{name}_R@{k}"] = float((rank <= k).float().mean())
                    out[f"eval/{tag}/{name}_median_rank"] = float(torch.quantile(rank.float(), 0.5))
    return out


__all__ = ["class_embeddings", "evaluate_model", "match_ranks", "recall_at_k", "zero_shot_accuracy"]
