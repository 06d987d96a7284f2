"""One side of a shared embedding space for zero-shot use: a frozen encoder, optionally behind a trained adapter.

An `Embedder` turns raw inputs into L2-normalised embeddings `[B, E]`. Decoding (`load`) is separate from the
network (`embed_loaded`) so one corrupt file fails alone. Long audio is cut into windows of the encoder's clip
length whose normalised embeddings are averaged (unless the encoder windows audio itself). `model_id` names the
exact weights (a fingerprint of local files) so text-side results can be cached; it is None for random weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..adapter import CONFIG_NAME, WEIGHTS_NAME, ModalityAdapter
from ..encoders import Encoder, create_encoder
from ..encoders.audio_io import split_windows

logger = logging.getLogger(__name__)


def source_fingerprint(source: str | os.PathLike | None, *, max_files: int = 2000) -> str | None:
    """A string that changes when the weights behind `source` change: local files by (name, size, mtime),
    hub ids and tags as they are; None for no source (random weights, never cached)."""
    if source is None:
        return None
    path = Path(source).expanduser()
    if not path.exists():
        return str(source)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())[:max_files]
    h = hashlib.sha1(str(path.resolve()).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path) if f != path else f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def _audio_window_samples(encoder: Encoder) -> int | None:
    """Samples per window when this code must window long audio itself (None: the encoder does it, or not audio)."""
    if encoder.modality != "audio" or getattr(encoder, "window_seconds", None) is not None:
        return None
    rate = getattr(encoder, "sample_rate", None)
    seconds = next((getattr(encoder, a) for a in ("max_seconds", "clip_seconds", "max_duration")
                    if getattr(encoder, a, None)), None)
    if not rate or not seconds:
        return None
    return int(round(float(rate) * float(seconds)))


class Embedder:
    """Raw inputs -> L2-normalised shared-space embeddings, through an encoder and an optional adapter head."""

    def __init__(self, encoder: Encoder, adapter: ModalityAdapter | None = None, *, name: str = "",
                 model_id: str | None = None) -> None:
        if adapter is not None and adapter.config.embed_dim is None:
            raise ValueError(f"{name or adapter.modality} adapter has no shared-space head (embed_dim is None); "
                             f"zero-shot classification needs an adapter trained with an embed_projector")
        self.encoder = encoder
        self.adapter = adapter
        self.name = name or getattr(encoder, "registry_name", "") or type(encoder).__name__
        self.model_id = model_id
        self.window_samples = _audio_window_samples(encoder)

    @property
    def modality(self) -> str:
        return self.adapter.modality if self.adapter is not None else self.encoder.modality

    @property
    def dim(self) -> int:
        if self.adapter is not None:
            return int(self.adapter.config.embed_dim)
        return int(self.encoder.pooled_dim)

    @property
    def extensions(self) -> tuple[str, ...]:
        return tuple(self.encoder.extensions)

    def accepts_file(self, path: str | os.PathLike) -> bool:
        return self.encoder.accepts_file(path)

    def load(self, item: Any) -> list[Any]:
        """Decode one raw input into one or more windows (encoder `load` output); raises on a bad input."""
        loaded = self.encoder.load(item)
        if self.window_samples is not None and isinstance(loaded, (np.ndarray, torch.Tensor)) and loaded.ndim == 1:
            return split_windows(loaded, self.window_samples)
        return [loaded]

    def collate(self, items: Sequence[Any]) -> dict[str, Any]:
        """Decoded items (windows) -> the encoder's batch (CPU preprocessing; may run in DataLoader workers)."""
        return self.encoder.collate(list(items))

    @torch.no_grad()
    def embed_collated(self, batch: dict[str, Any]) -> torch.Tensor:
        """A collated batch -> `[B, E]` float32, L2-normalised."""
        feats = self.encoder.run(batch)
        emb = self.adapter.embed(feats) if self.adapter is not None else feats.pooled
        return F.normalize(emb.float(), dim=-1)

    def embed_loaded(self, items: Sequence[Any]) -> torch.Tensor:
        """Decoded items -> `[B, E]` float32, L2-normalised."""
        return self.embed_collated(self.collate(items))

    @torch.no_grad()
    def embed(self, inputs: Sequence[Any], batch_size: int = 64) -> torch.Tensor:
        """Raw inputs (e.g. sentences) -> `[N, E]`, windows averaged; any bad input raises."""
        out = []
        for i in range(0, len(inputs), batch_size):
            windows = [self.load(x) for x in inputs[i:i + batch_size]]
            flat = self.embed_loaded([w for ws in windows for w in ws])
            out.append(pool_windows(flat, [len(ws) for ws in windows]))
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    def to(self, device: str | torch.device) -> Embedder:
        (self.adapter if self.adapter is not None else self.encoder).to(device)
        return self

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "modality": self.modality, "dim": self.dim, "model_id": self.model_id}


def pool_windows(emb: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """Average the normalised window embeddings of each input and renormalise: `[sum counts, E]` -> `[N, E]`."""
    if all(c == 1 for c in counts):
        return emb
    return F.normalize(torch.stack([chunk.mean(0) for chunk in torch.split(emb, list(counts))]), dim=-1)


def _model_id(*parts: Any) -> str | None:
    """Cache identity of a model assembled from parts; None if any part has no fingerprint (random weights)."""
    if any(p is None for p in parts):
        return None
    return json.dumps(parts, sort_keys=True, default=str)


def encoder_embedder(name: str, pretrained: str | None = None, *, device: str | torch.device | None = None,
                     autocast: str | None = None, **kwargs: Any) -> Embedder:
    """A registered encoder used as is (its pooled output is the shared space, e.g. CLAP / CLIP towers)."""
    enc = create_encoder(name, pretrained=pretrained, device=device, autocast=autocast, **kwargs)
    return Embedder(enc, name=name, model_id=_model_id(name, source_fingerprint(pretrained), kwargs))


def adapter_embedder(path: str | os.PathLike, *, encoder_pretrained: str | None = None,
                     device: str | torch.device | None = None, autocast: str | None = None) -> Embedder:
    """A saved adapter (its encoder rebuilt, weights loaded) whose shared-space head gives the embeddings."""
    path = Path(path)
    adapter = ModalityAdapter.from_pretrained(path, encoder_pretrained=encoder_pretrained, device=device,
                                              autocast=autocast)
    cfg = adapter.config
    enc_src = encoder_pretrained or cfg.encoder.pretrained
    # an encoder trained with the adapter lives in the adapter's weights; a frozen one needs its own source
    enc_id = "in-adapter" if cfg.train_encoder else source_fingerprint(enc_src)
    model_id = _model_id("adapter", source_fingerprint(path / WEIGHTS_NAME), source_fingerprint(path / CONFIG_NAME),
                         cfg.encoder.name, enc_id, cfg.encoder.options)
    return Embedder(adapter.encoder, adapter, name=f"{cfg.encoder} + adapter {path.name}", model_id=model_id)


def text_embedder(text_encoder: str, pretrained: str | None = None, **kwargs: Any) -> Embedder:
    """The text side: a saved (identity or trained) text adapter folder, or a registered text encoder name."""
    if (Path(text_encoder).expanduser() / CONFIG_NAME).is_file():
        emb = adapter_embedder(Path(text_encoder).expanduser(), encoder_pretrained=pretrained,
                               device=kwargs.get("device"), autocast=kwargs.get("autocast"))
    else:
        emb = encoder_embedder(text_encoder, pretrained, **kwargs)
    if emb.modality != "text":
        raise ValueError(f"text encoder {text_encoder!r} embeds {emb.modality!r}, expected a text encoder "
                         f"(e.g. 'text', 'clap-text', 'clip-text' or a text adapter folder)")
    return emb


def recorded_text_anchor(adapter_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The text anchor an adapter was trained against, read from the training run's `recipe.yaml`
    (`<run>/adapters/<modality>/` next to `<run>/recipe.yaml`); None when not recorded."""
    import yaml

    from ..adapter import read_adapter_config

    path = Path(adapter_dir).resolve()
    recorded = read_adapter_config(path).space.get("text")
    if recorded is not None:
        return {"encoder": recorded.name, "pretrained": recorded.pretrained, "kwargs": recorded.options,
                "recipe": str(path)}
    for recipe in (path.parent.parent / "recipe.yaml", path.parent / "recipe.yaml", path / "recipe.yaml"):
        if recipe.is_file():
            try:
                data = yaml.safe_load(recipe.read_text()) or {}
            except yaml.YAMLError as e:
                raise ValueError(f"{recipe}: invalid YAML ({e})") from None
            anchor = (data.get("anchors") or {}).get("text")
            if isinstance(anchor, dict) and anchor.get("encoder"):
                return {"encoder": anchor["encoder"], "pretrained": anchor.get("pretrained"),
                        "kwargs": anchor.get("kwargs") or {}, "recipe": str(recipe)}
    return None


__all__ = ["Embedder", "adapter_embedder", "encoder_embedder", "pool_windows", "recorded_text_anchor",
           "source_fingerprint", "split_windows", "text_embedder"]
