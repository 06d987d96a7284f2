"""One modality's way into the shared space: a `ModalityAdapter`, or a bare encoder (identity on its pooled output).

An `Embedder` also knows how to rebuild itself from the small JSON spec an index records
(`{"adapter": DIR}` or `{"encoder": NAME, "pretrained": SRC, "kwargs": {...}}`), so `anyalign search --text`
embeds the query exactly the way the corpus was embedded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..adapter import CONFIG_NAME as ADAPTER_CONFIG
from ..adapter import ModalityAdapter
from ..encoders import Encoder, EncoderOutput, create_encoder


class Embedder:
    """Raw inputs (or cached encoder features) -> L2-normalised shared-space vectors `[N, E]` float32."""

    def __init__(self, model: ModalityAdapter | Encoder, spec: dict[str, Any] | None = None) -> None:
        if isinstance(model, ModalityAdapter):
            if model.config.embed_dim is None:
                raise ValueError(f"{model.modality} adapter has no shared-space head (embed_dim is None)")
            self.adapter: ModalityAdapter | None = model
            self.encoder = model.encoder
            self.modality = model.modality
            self.dim = int(model.config.embed_dim)
        elif isinstance(model, Encoder):
            self.adapter, self.encoder = None, model
            self.modality, self.dim = model.modality, int(model.pooled_dim)
        else:
            raise TypeError(f"expected a ModalityAdapter or an Encoder, got {type(model).__name__}")
        self.spec = spec or _spec_of(model)

    @property
    def extensions(self) -> tuple[str, ...]:
        return tuple(self.encoder.extensions) if self.encoder is not None else ()

    def accepts_file(self, path: str | os.PathLike) -> bool:
        return self.encoder is not None and self.encoder.accepts_file(path)

    def load(self, item: Any) -> Any:
        """Decode one raw input (runs in DataLoader workers); raises `InputError` naming the input."""
        if self.encoder is None:
            raise RuntimeError(f"{self.modality} embedder has no encoder loaded")
        return self.encoder.load(item)

    @torch.no_grad()
    def embed_loaded(self, items: Sequence[Any]) -> np.ndarray:
        """Embed already-decoded items (output of `load`)."""
        assert self.encoder is not None
        return self.embed_features(self.encoder.run(self.encoder.collate(list(items))))

    @torch.no_grad()
    def embed_features(self, feats: EncoderOutput) -> np.ndarray:
        """Encoder outputs -> normalised embeddings (the adapter's head, or the pooled vector)."""
        emb = self.adapter.embed(feats) if self.adapter is not None else F.normalize(feats.pooled.float(), dim=-1)
        return emb.float().cpu().numpy()

    def embed(self, inputs: Sequence[Any], batch_size: int = 32) -> np.ndarray:
        """Raw inputs (paths, strings, arrays) -> `[N, E]` float32."""
        if isinstance(inputs, (str, Path)):
            inputs = [inputs]
        out = [self.embed_loaded([self.load(x) for x in inputs[i: i + batch_size]])
               for i in range(0, len(inputs), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    @classmethod
    def from_spec(cls, spec: dict[str, Any], *, device: str | None = None) -> Embedder:
        """Rebuild from `{"adapter": DIR}` or `{"encoder": NAME, "pretrained": ..., "kwargs": {...}}`."""
        if spec.get("adapter"):
            adapter = ModalityAdapter.from_pretrained(spec["adapter"], device=device)
            return cls(adapter, spec)
        if spec.get("encoder"):
            from ..encoders.spec import EncoderSpec

            enc_spec = spec["encoder"] if isinstance(spec["encoder"], dict) else \
                {"name": spec["encoder"], "pretrained": spec.get("pretrained"), "options": spec.get("kwargs") or {}}
            return cls(EncoderSpec.from_dict(enc_spec).build(device=device), spec)
        raise ValueError(f"embedder spec {spec!r}: expected an 'adapter' folder or an 'encoder' name")


def _spec_of(model: ModalityAdapter | Encoder) -> dict[str, Any]:
    if isinstance(model, ModalityAdapter):
        return {"modality": model.modality}  # an in-memory adapter: save_pretrained it to make it rebuildable
    return {"encoder": model.registry_name or None, "modality": model.modality}


def as_embedder(obj: Any, *, device: str | None = None) -> Embedder:
    """Accept an `Embedder`, adapter, encoder, adapter folder path, or spec dict."""
    if isinstance(obj, Embedder):
        return obj
    if isinstance(obj, (ModalityAdapter, Encoder)):
        return Embedder(obj)
    if isinstance(obj, dict):
        return Embedder.from_spec(obj, device=device)
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if (path / ADAPTER_CONFIG).is_file():
            return Embedder.from_spec({"adapter": str(path.resolve())}, device=device)
        return Embedder.from_spec({"encoder": str(obj)}, device=device)
    raise TypeError(f"cannot use {type(obj).__name__} as an embedder (expected an adapter, encoder or path)")


def parse_embedder_option(text: str) -> tuple[str | None, dict[str, Any]]:
    """CLI `MODALITY=ADAPTER_DIR`, `MODALITY=encoder:NAME[@PRETRAINED]`, or a bare adapter folder."""
    modality, _, value = text.partition("=") if "=" in text else (None, "", text)
    if value.startswith("encoder:"):
        name, _, pretrained = value[len("encoder:"):].partition("@")
        return modality, {"encoder": name, "pretrained": pretrained or None}
    path = Path(value)
    if not (path / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(f"{value}: not an adapter folder (missing {ADAPTER_CONFIG}); "
                                "use MODALITY=encoder:NAME[@PRETRAINED] for a bare encoder")
    return modality, {"adapter": str(path.resolve())}


__all__ = ["Embedder", "as_embedder", "parse_embedder_option"]
