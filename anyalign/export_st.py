"""A space as a sentence-transformers model: one `Router` whose `text` route is sentence-transformers' own modules
(when the space's text side is a sentence-transformers model) and whose other routes are `AnyAlignModule`s running an
adapter exactly as `Embedder.embed` does; loading needs anyalign installed (`trust_remote_code=True`)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Router
from sentence_transformers.base.modules.input_module import InputModule
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

from .adapter import CONFIG_NAME, ModalityAdapter, resolve_adapter
from .embedder import Embedder, pool_windows
from .encoders.spec import EncoderSpec
from .encoders.text import HFTextEncoder, st_config
from .hub import local_source

ENCODER_FILE = "anyalign_encoder.json"
_ST_POOLING = {"mean": "mean", "cls": "cls", "max": "max", "mean_sqrt_len": "mean_sqrt_len_tokens",
               "lasttoken": "lasttoken"}


class AnyAlignModule(InputModule):
    """A sentence-transformers input module running one anyalign `Embedder` (an adapter, or a bare encoder)."""

    config_keys: list[str] = ["modality"]
    save_in_root = False

    def __init__(self, embedder: Embedder, modality: str | None = None) -> None:
        super().__init__()
        self.embedder = embedder
        self.modality = modality or embedder.modality
        self.inner = embedder.adapter if embedder.adapter is not None else embedder.encoder  # registered weights

    @property
    def modalities(self) -> list[Any]:
        return [self.modality]

    def preprocess(self, inputs: Sequence[Any], prompt: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """Decode and collate a batch exactly as `Embedder.embed` does (long inputs become several windows)."""
        loaded = [self.embedder.load(x[self.modality] if isinstance(x, dict) and self.modality in x else x)
                  for x in inputs]
        batch = dict(self.embedder.collate([w for ws in loaded for w in ws]))
        batch["anyalign_windows"] = torch.tensor([len(ws) for ws in loaded])
        return batch

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        counts = features.pop("anyalign_windows")
        batch = {k: v for k, v in features.items() if k not in ("task", "modality")}
        emb = pool_windows(self.embedder.embed_collated(batch), counts.tolist())
        features["sentence_embedding"] = emb
        return features

    def get_embedding_dimension(self) -> int:
        return self.embedder.dim

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        """The adapter folder (config + trainable weights), or the encoder's spec; plus this module's config."""
        out = Path(output_path)
        out.mkdir(parents=True, exist_ok=True)
        if self.embedder.adapter is not None:
            self.embedder.adapter.save_pretrained(out)
        else:
            (out / ENCODER_FILE).write_text(json.dumps(self.embedder.spec.to_dict(), indent=2) + "\n")
        self.save_config(output_path)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token: bool | str | None = None,
             cache_folder: str | None = None, revision: str | None = None, local_files_only: bool = False,
             **kwargs: Any) -> AnyAlignModule:
        """Rebuild from a saved module folder (local, or inside a Hub repo)."""
        folder = Path(cls.load_dir_path(model_name_or_path, subfolder=subfolder, token=token,
                                        cache_folder=cache_folder, revision=revision,
                                        local_files_only=local_files_only))
        config = cls.load_config(model_name_or_path, subfolder=subfolder, token=token, cache_folder=cache_folder,
                                 revision=revision, local_files_only=local_files_only)
        if (folder / CONFIG_NAME).is_file():
            embedder = Embedder.from_adapter(folder)
        else:
            embedder = Embedder.from_encoder(json.loads((folder / ENCODER_FILE).read_text()))
        return cls(embedder, config.get("modality"))


def _text_route(spec: EncoderSpec) -> list[Any]:
    """sentence-transformers' own modules for a `text`-family sentence-transformers model, run as anyalign runs it;
    an `AnyAlignModule` for any other text encoder."""
    source = local_source(spec.pretrained or "sentence-transformers/all-MiniLM-L6-v2", what="text side")
    if spec.name != "text" or not st_config(source):
        return [AnyAlignModule(Embedder.from_encoder(spec), "text")]
    enc = spec.build()
    assert isinstance(enc, HFTextEncoder)
    if enc.prompt or enc.lowercase:  # sentence-transformers applies these through its own prompt/config handling
        return [AnyAlignModule(Embedder(enc), "text")]
    transformer = Transformer(source, max_seq_length=enc.max_length)
    modules: list[Any] = [transformer, Pooling(transformer.get_embedding_dimension(),
                                               pooling_mode=_ST_POOLING[enc.pooling])]
    return modules + [Normalize()]  # anyalign's space vectors are L2-normalised


def export_sentence_transformers(adapters: Sequence[str | os.PathLike], output: str | os.PathLike, *,
                                 text: EncoderSpec | None = None, overwrite: bool = False) -> Path:
    """Write a space (its text side + the given adapters' modalities) as a sentence-transformers model in `output`.

    The text side is the one the adapters were aligned to (`AdapterConfig.space["text"]`) unless `text` is given;
    adapters aligned to different text sides cannot share one model."""
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise ValueError(f"{output}: exists and is not empty; choose another -o or pass --overwrite")
    routes: dict[str, list[Any]] = {}
    texts: dict[str, EncoderSpec] = {}
    for a in adapters:
        folder = resolve_adapter(a)
        adapter = ModalityAdapter.from_pretrained(folder)
        if adapter.modality in routes:
            raise ValueError(f"{a}: a second {adapter.modality} adapter; one adapter per modality")
        if adapter.config.embed_dim is None:
            raise ValueError(f"{a}: this adapter has no shared-space head (embed_dim is None); nothing to export")
        routes[adapter.modality] = [AnyAlignModule(Embedder(adapter.encoder, adapter, adapter_dir=a))]
        if "text" in adapter.config.space:
            texts[str(a)] = adapter.config.space["text"]
    if text is None:
        keys = {s.key() for s in texts.values()}
        if len(keys) > 1:
            raise ValueError("the adapters were aligned to different text sides ("
                             + "; ".join(f"{a}: {s.describe()}" for a, s in texts.items()) + "); export them apart")
        if not texts:
            raise ValueError("no adapter records a text side (AdapterConfig.space['text']); pass the text encoder")
        text = next(iter(texts.values()))
    routes = {"text": _text_route(text), **{m: r for m, r in routes.items() if m != "text"}}
    router = Router(routes, default_route="text", route_mappings={(None, m): m for m in routes})
    model = SentenceTransformer(modules=[router], device="cpu")
    if output.exists():
        shutil.rmtree(output)
    model.save(str(output))
    return output


__all__ = ["AnyAlignModule", "export_sentence_transformers"]
