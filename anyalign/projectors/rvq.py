"""Residual vector quantiser: encoder tokens -> discrete codes (LLM vocabulary ids) and quantised soft tokens."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .base import Projector, ProjectorOutput, full_mask, pool_tokens, register_projector


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def nearest_code(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest (L2) code for each vector: `[M, C]`, `[K, C]` -> `[M]` long."""
    dist2 = x.pow(2).sum(-1, keepdim=True) - 2 * x @ codebook.t() + codebook.pow(2).sum(-1)  # [M, K]
    return dist2.argmin(-1)


def kmeans(x: torch.Tensor, k: int, iters: int = 10) -> torch.Tensor:
    """Lloyd's k-means on `[M, C]` vectors -> `[k, C]` centroids (seeded from random samples; empty clusters keep
    their centroid)."""
    m = x.shape[0]
    pick = torch.randperm(m, device=x.device)[:k] if m >= k else torch.randint(0, m, (k,), device=x.device)
    centroids = x[pick].clone()
    for _ in range(iters):
        assign = nearest_code(x, centroids)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)  # [k]
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centroids)
    return centroids


def _masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over valid tokens: `[B, N, C]` x2, `[B, N]` -> scalar (0 without valid tokens)."""
    per_token = (a - b).pow(2).mean(-1)  # [B, N]
    w = mask.to(per_token.dtype)
    return (per_token * w).sum() / w.sum().clamp_min(1.0)


@dataclass
class RVQOptions:
    """Options of the "rvq" projector."""

    num_quantizers: int = field(default=4, metadata={"help": "residual codebooks"})
    codebook_size: int = field(default=256, metadata={"help": "codes per codebook"})
    code_dim: int = field(default=64, metadata={"help": "code vector width"})
    stride: int = field(default=1, metadata={"help": "average-pool groups of this many tokens first (1 = off)"})
    commitment_weight: float = field(default=0.25, metadata={"help": "weight of the commitment loss"})
    codebook_weight: float = field(default=1.0, metadata={"help": "weight of the codebook loss (ema=false)"})
    ema: bool = field(default=True, metadata={"help": "update codebooks by EMA instead of the codebook loss"})
    decay: float = field(default=0.99, metadata={"help": "EMA decay"})
    eps: float = field(default=1e-5, metadata={"help": "EMA Laplace smoothing"})
    dead_code_steps: int = field(default=50, metadata={"help": "restart codes unused this many steps (0 = never)"})
    kmeans_init: bool = field(default=True, metadata={"help": "k-means initialisation on the first batch"})
    kmeans_iters: int = field(default=10, metadata={"help": "k-means iterations"})

    def __post_init__(self) -> None:
        if self.num_quantizers < 1 or self.codebook_size < 2 or self.code_dim < 1:
            raise ValueError(f"rvq: need num_quantizers >= 1, codebook_size >= 2, code_dim >= 1, got "
                             f"{self.num_quantizers}, {self.codebook_size}, {self.code_dim}")
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"rvq: decay must be in [0, 1), got {self.decay}")
        if self.dead_code_steps < 0:
            raise ValueError(f"rvq: dead_code_steps must be >= 0 (0 = no restarts), got {self.dead_code_steps}")


@register_projector("rvq", options=RVQOptions)
class ResidualVQProjector(Projector):
    """Residual vector quantiser (SoundStream, Zeghidour et al., 2021; VQ-VAE, van den Oord et al., 2017).

    `num_quantizers` codebooks each quantise the residual the previous ones left (straight-through gradients;
    "commitment" loss, and "codebook" loss unless the codebooks follow EMAs; k-means init, dead-code restarts;
    DDP-synchronised). Output: `codes` [B, N, Q] and the quantised tokens; `codes_to_vocab` maps codes to ids of
    an LLM vocabulary extended by `vocab_size_needed` entries.
    """

    def __init__(self, in_dim: int, out_dim: int, opts: RVQOptions | None = None, **options: Any) -> None:
        super().__init__(in_dim, out_dim, opts, **options)
        o = self.opts
        q, k = o.num_quantizers, o.codebook_size
        self.num_quantizers, self.codebook_size, self.code_dim, self.ema = q, k, o.code_dim, o.ema
        self.proj_in = nn.Linear(in_dim, o.code_dim)
        self.proj_out = nn.Linear(o.code_dim, out_dim)
        init = torch.randn(q, k, o.code_dim)  # [Q, K, C]
        if o.ema:
            self.register_buffer("codebooks", init)
            self.register_buffer("ema_cluster_size", torch.ones(q, k))  # [Q, K]
            self.register_buffer("ema_embed_sum", init.clone())  # [Q, K, C]; codebook = sum / size
        else:
            self.codebooks = nn.Parameter(init)
        self.register_buffer("unused_steps", torch.zeros(q, k, dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(not o.kmeans_init))
        self.register_buffer("usage_counts", torch.zeros(q, k), persistent=False)

    @property
    def vocab_size_needed(self) -> int:
        """How many extra vocabulary ids `codes_to_vocab` uses: num_quantizers * codebook_size."""
        return self.num_quantizers * self.codebook_size

    # --- quantisation ----------------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None, *,
                modality: str | None = None) -> ProjectorOutput:
        tokens, mask = pool_tokens(tokens, full_mask(tokens, mask), self.opts.stride)  # [B, N, D_in], [B, N]
        z = self.proj_in(tokens).float()  # [B, N, C]
        with torch.autocast(z.device.type, enabled=False):
            if self.training and not bool(self.initialized):
                self._kmeans_init(z.detach()[mask])
            residual = z
            quantized = torch.zeros_like(z)
            commitment = z.new_zeros(())
            codebook_loss = z.new_zeros(())
            codes = []
            for q in range(self.num_quantizers):
                idx = nearest_code(residual.detach().reshape(-1, self.code_dim), self.codebooks[q].detach())
                idx = idx.view(mask.shape)  # [B, N]
                chosen = F.embedding(idx, self.codebooks[q])  # [B, N, C]; grads reach a non-EMA codebook
                commitment = commitment + _masked_mse(residual, chosen.detach(), mask)
                if not self.ema:
                    codebook_loss = codebook_loss + _masked_mse(residual.detach(), chosen, mask)
                if self.training:
                    self._update_codebook(q, residual.detach()[mask], idx[mask])
                quantized = quantized + chosen
                residual = residual - chosen.detach()
                codes.append(idx)
            z_q = z + (quantized - z).detach()  # straight-through estimator
        losses = {"commitment": commitment * self.opts.commitment_weight}
        if not self.ema:
            losses["codebook"] = codebook_loss * self.opts.codebook_weight
        codes_t = torch.stack(codes, dim=-1).masked_fill(~mask[..., None], 0)  # [B, N, Q]
        return ProjectorOutput(self.proj_out(z_q.to(self.proj_out.weight.dtype)), mask, losses, codes_t)

    @torch.no_grad()
    def _kmeans_init(self, z: torch.Tensor) -> None:
        """Initialise each codebook by k-means on the residuals the previous codebooks leave (first batch)."""
        if z.shape[0] == 0:
            return
        residual = z
        for q in range(self.num_quantizers):
            centroids = kmeans(residual, self.codebook_size, self.opts.kmeans_iters)
            if _distributed():
                dist.broadcast(centroids, src=0)
            self.codebooks.data[q] = centroids
            if self.ema:
                self.ema_cluster_size[q].fill_(1.0)
                self.ema_embed_sum[q] = centroids
            residual = residual - centroids[nearest_code(residual, centroids)]
        self.initialized.fill_(True)

    @torch.no_grad()
    def _update_codebook(self, q: int, x: torch.Tensor, idx: torch.Tensor) -> None:
        """One training step's bookkeeping for quantiser `q` from its valid residuals `x` [M, C] and codes `idx`
        [M]: usage counts, EMA codebook update, dead-code restarts."""
        k = self.codebook_size
        counts = torch.bincount(idx, minlength=k).float()  # [K]
        sums = torch.zeros(k, self.code_dim, device=x.device).index_add_(0, idx, x) if self.ema else None
        if _distributed():
            dist.all_reduce(counts)
            if sums is not None:
                dist.all_reduce(sums)
        self.usage_counts[q] += counts
        if self.ema:
            decay = self.opts.decay
            size, embed_sum = self.ema_cluster_size[q], self.ema_embed_sum[q]
            size.mul_(decay).add_(counts, alpha=1 - decay)
            embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
            n = size.sum()
            eps = self.opts.eps
            smoothed = (size + eps) / (n + k * eps) * n  # Laplace smoothing keeps rare codes finite
            self.codebooks[q] = torch.where(size[:, None] > 0, embed_sum / smoothed[:, None], self.codebooks[q])
        steps = self.opts.dead_code_steps
        if not steps:
            return
        unused = self.unused_steps[q]
        unused.add_(1).masked_fill_(counts > 0, 0)
        dead = unused >= steps
        n_dead = int(dead.sum())
        if n_dead and x.shape[0]:
            fresh = x[torch.randint(0, x.shape[0], (n_dead,), device=x.device)]  # [n_dead, C]
            if _distributed():
                dist.broadcast(fresh, src=0)
            self.codebooks.data[q, dead] = fresh
            if self.ema:
                self.ema_cluster_size[q, dead] = 1.0
                self.ema_embed_sum[q, dead] = fresh
            unused[dead] = 0

    # --- codes <-> vocabulary ids ------------------------------------------------------------------------
    def codes_to_vocab(self, codes: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Codes `[B, N, Q]` -> vocabulary ids `[B, N*Q]`, token-major: id = offset + q * codebook_size + code."""
        if codes.dim() != 3 or codes.shape[-1] != self.num_quantizers:
            raise ValueError(f"rvq.codes_to_vocab: expected codes [B, N, {self.num_quantizers}], "
                             f"got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"rvq.codes_to_vocab: codes must lie in [0, {self.codebook_size}), "
                             f"got [{int(codes.min())}, {int(codes.max())}]")
        base = torch.arange(self.num_quantizers, device=codes.device) * self.codebook_size  # [Q]
        return (codes.long() + base + offset).flatten(1)

    def vocab_to_codes(self, ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Inverse of `codes_to_vocab`: ids `[B, N*Q]` -> codes `[B, N, Q]`; each id must fit its quantiser slot."""
        if ids.dim() != 2 or ids.shape[1] % self.num_quantizers:
            raise ValueError(f"rvq.vocab_to_codes: expected ids [B, N*{self.num_quantizers}], got {tuple(ids.shape)}")
        base = torch.arange(self.num_quantizers, device=ids.device) * self.codebook_size
        codes = ids.long().view(ids.shape[0], -1, self.num_quantizers) - offset - base  # [B, N, Q]
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"rvq.vocab_to_codes: ids are not codes of this quantiser at offset {offset} "
                             f"(slot q must hold ids in [offset + q*{self.codebook_size}, offset + "
                             f"(q+1)*{self.codebook_size}))")
        return codes

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes `[B, N, Q]` -> output tokens `[B, N, out_dim]` (sum of the chosen code vectors, projected)."""
        vectors = sum(F.embedding(codes[..., q], self.codebooks[q]) for q in range(self.num_quantizers))
        return self.proj_out(vectors.to(self.proj_out.weight.dtype))

    # --- statistics -----------------------------------------------------------------------------------
    @torch.no_grad()
    def usage(self, codes: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> dict[str, Any]:
        """Per-quantiser code perplexity (exp of the code entropy; `codebook_size` = uniform use) and fraction of
        codes used, over `codes` [B, N, Q] (valid positions of `mask`) or else over all training steps since the
        last `reset_usage()`."""
        if codes is not None:
            flat = codes[mask.bool()] if mask is not None else codes.reshape(-1, self.num_quantizers)  # [M, Q]
            counts = torch.stack([torch.bincount(flat[:, q], minlength=self.codebook_size)
                                  for q in range(self.num_quantizers)]).float()
        else:
            counts = self.usage_counts
        p = counts / counts.sum(-1, keepdim=True).clamp_min(1.0)  # [Q, K]
        entropy = -(p * p.clamp_min(1e-12).log()).sum(-1)
        return {"perplexity": entropy.exp().cpu(), "used_fraction": (counts > 0).float().mean(-1).cpu()}

    def reset_usage(self) -> None:
        """Restart the running usage counts behind `usage()`."""
        self.usage_counts.zero_()
