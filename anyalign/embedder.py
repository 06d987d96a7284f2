"""`Embedder`: inputs of one modality -> L2-normalised vectors `[N, E]` of a shared space (retrieval, zero-shot).

A frozen encoder, optionally behind a trained `ModalityAdapter`'s shared-space head. Its JSON *record*
(`{"encoder": EncoderSpec}` or `{"adapter": DIR}`) is stored by indexes and embedding folders, so `find_record`
finds the other side of a space from the artifact (an adapter's recorded anchors, a tower's partner). Decoding
(`load`) is apart from the network (`embed_collated`) so it runs in DataLoader workers and a bad input fails alone.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .adapter import CONFIG_NAME, WEIGHTS_NAME, ModalityAdapter, read_adapter_config, resolve_adapter
from .encoders import Encoder, EncoderOutput
from .encoders.spec import EncoderSpec, source_fingerprint
from .hub import is_hub_id

logger = logging.getLogger(__name__)


@dataclass
class EmbeddingResult:
    """Embeddings `[M, E]` of the inputs that worked, their positions in the input list, and the failures."""

    embeddings: torch.Tensor
    index: list[int]
    errors: dict[int, str]


class Embedder:
    """Raw inputs -> L2-normalised shared-space embeddings, through an encoder and an optional adapter head."""

    def __init__(self, encoder: Encoder | None, adapter: ModalityAdapter | None = None, *,
                 adapter_dir: str | os.PathLike | None = None) -> None:
        if adapter is not None and adapter.config.embed_dim is None:
            raise ValueError(f"{adapter_dir or adapter.modality} adapter has no shared-space head (embed_dim is "
                             f"None); embedding needs an adapter trained with an embed_projector")
        if encoder is None and adapter is None:
            raise ValueError("an Embedder needs an encoder or an adapter")
        self.encoder = encoder
        self.adapter = adapter
        # what records name: a local folder absolute, a Hub id (`org/name[@rev]`) as it is
        self.adapter_dir = None if adapter_dir is None else str(adapter_dir) if is_hub_id(str(adapter_dir)) else \
            str(Path(adapter_dir).resolve())

    # --- constructors ---------------------------------------------------------------------------------------
    @classmethod
    def from_encoder(cls, spec: EncoderSpec | str | dict[str, Any], *, device: str | torch.device | None = None,
                     autocast: str | None = None) -> Embedder:
        """A registered encoder used as is (its pooled output is the space)."""
        spec = EncoderSpec.from_dict(spec)
        if autocast is not None:
            spec = spec.replace(autocast=autocast)
        return cls(spec.build(device=device))

    @classmethod
    def from_adapter(cls, path: str | os.PathLike, *, encoder_pretrained: str | None = None, load_encoder: bool = True,
                     device: str | torch.device | None = None, autocast: str | None = None) -> Embedder:
        """A saved adapter folder: its encoder rebuilt from the recorded spec, its shared-space head."""
        adapter = ModalityAdapter.from_pretrained(path, encoder_pretrained=encoder_pretrained, device=device,
                                                  autocast=autocast, load_encoder=load_encoder)
        return cls(adapter.encoder, adapter, adapter_dir=path)

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, device: str | torch.device | None = None,
                    autocast: str | None = None) -> Embedder:
        """Rebuild from the JSON record an index or embeddings folder stores (see `record`)."""
        if record.get("adapter"):
            return cls.from_adapter(record["adapter"], device=device, autocast=autocast)
        if record.get("encoder"):
            return cls.from_encoder(_record_spec(record), device=device, autocast=autocast)
        raise ValueError(f"embedder record {dict(record)!r}: expected an 'adapter' folder or an 'encoder' spec")

    # --- what it is -----------------------------------------------------------------------------------------
    @property
    def modality(self) -> str:
        return self.adapter.modality if self.adapter is not None else self.encoder.modality  # type: ignore[union-attr]

    @property
    def dim(self) -> int:
        if self.adapter is not None:
            return int(self.adapter.config.embed_dim)  # type: ignore[arg-type]
        return int(self.encoder.pooled_dim)  # type: ignore[union-attr]

    @property
    def spec(self) -> EncoderSpec:
        """The encoder's spec (for an adapter: the frozen encoder behind it)."""
        if self.adapter is not None:
            return self.adapter.config.encoder
        return EncoderSpec.of(self.encoder)

    @property
    def name(self) -> str:
        if self.adapter is not None:
            return f"{self.spec.name} + adapter {Path(self.adapter_dir).name if self.adapter_dir else self.modality}"
        return self.spec.name

    def record(self) -> dict[str, Any]:
        """JSON record that rebuilds this embedder (an in-memory adapter must be saved first to be rebuildable)."""
        if self.adapter is not None:
            return {"adapter": self.adapter_dir, "modality": self.modality}
        return {"encoder": self.spec.to_dict(), "modality": self.modality}

    def space_records(self) -> dict[str, dict[str, Any]]:
        """Records of the other sides of this space that are known from this embedder itself."""
        out: dict[str, dict[str, Any]] = {self.modality: self.record()}
        if self.adapter is not None:
            for m, spec in self.adapter.config.space.items():
                out.setdefault(m, {"encoder": spec.to_dict(), "modality": m})
        return out

    @property
    def model_id(self) -> str | None:
        """Identity of the exact weights (for caches of embeddings); None when they cannot be identified."""
        if self.adapter is not None:
            if self.adapter_dir is None:
                return None
            enc = "in-adapter" if self.adapter.config.train_encoder else self.spec.fingerprint()
            if enc is None:
                return None
            folder = resolve_adapter(self.adapter_dir)
            return json.dumps(["adapter", source_fingerprint(folder / WEIGHTS_NAME),
                               source_fingerprint(folder / CONFIG_NAME), enc])
        return self.spec.fingerprint()

    @property
    def extensions(self) -> tuple[str, ...]:
        return tuple(self.encoder.extensions) if self.encoder is not None else ()

    def accepts_file(self, path: str | os.PathLike) -> bool:
        return self.encoder is not None and self.encoder.accepts_file(path)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "modality": self.modality, "dim": self.dim, "model_id": self.model_id}

    # --- embedding --------------------------------------------------------------------------------------------
    def _need_encoder(self) -> Encoder:
        if self.encoder is None:
            raise RuntimeError(f"{self.modality} embedder has no encoder loaded (built from cached features only)")
        return self.encoder

    def load(self, item: Any) -> list[Any]:
        """Decode one raw input into its windows (usually one); raises `InputError` naming a bad input."""
        from .encoders.inputs import load_item

        enc = self._need_encoder()
        return enc.split_long(load_item(enc, item))

    def collate(self, windows: Sequence[Any]) -> dict[str, Any]:
        """Decoded windows -> the encoder's batch (CPU preprocessing; may run in DataLoader workers)."""
        return self._need_encoder().collate(list(windows))

    @torch.no_grad()
    def embed_collated(self, batch: dict[str, Any]) -> torch.Tensor:
        """A collated batch -> `[B, E]` float32, L2-normalised (one row per window)."""
        return self._head(self._need_encoder().run(batch))

    @torch.no_grad()
    def embed_features(self, feats: EncoderOutput) -> np.ndarray:
        """Encoder outputs (e.g. cached by `anyalign extract`) -> `[B, E]` float32."""
        return self._head(feats).cpu().numpy()

    def _head(self, feats: EncoderOutput) -> torch.Tensor:
        if self.adapter is not None:
            cfg = self.adapter.config
            width = (feats.pooled if cfg.feature == "pooled" else feats.tokens).shape[-1]
            if width != cfg.in_dim:
                raise ValueError(f"{self.name}: features of width {width}, but the adapter takes {cfg.feature} of "
                                 f"width {cfg.in_dim} (features from another encoder: {cfg.encoder.describe()}?)")
        emb = self.adapter.embed(feats) if self.adapter is not None else feats.pooled
        return F.normalize(emb.float(), dim=-1)

    def embed_loaded(self, loaded: Sequence[list[Any]]) -> np.ndarray:
        """Outputs of `load` (a window list per input) -> `[N, E]` float32, windows pooled."""
        flat = [w for ws in loaded for w in ws]
        emb = self.embed_collated(self.collate(flat)).cpu()
        return pool_windows(emb, [len(ws) for ws in loaded]).numpy()

    def encode(self, inputs: Sequence[Any], *, batch_size: int = 32, num_workers: int = 0,
               progress: bool | None = None, desc: str = "embed") -> EmbeddingResult:
        """Embed many inputs in batches of `batch_size` windows, decoding and preprocessing in `num_workers`
        DataLoader workers; an input that cannot be decoded, preprocessed or embedded is recorded in `errors`
        (a failing batch is retried input by input) and the others go on."""
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        from .encoders.inputs import SafeDecode

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        loader = DataLoader(SafeDecode(inputs, self.load, describe=_Describe(inputs)), batch_size=batch_size,
                            num_workers=num_workers, collate_fn=_Collate(self, batch_size))
        rows: list[tuple[int, torch.Tensor]] = []
        errors: dict[int, str] = {}
        bar = tqdm(total=len(inputs), desc=desc, unit="file", disable=None if progress is None else not progress)
        with bar:
            for chunks, failed, size in loader:
                errors.update(failed)
                for group, batch in chunks:
                    rows += self._encode_chunk(group, batch, inputs, errors)
                bar.update(size)
        for i in sorted(errors):
            logger.info("%s", errors[i])
        emb = torch.stack([e for _, e in rows]) if rows else torch.zeros(0, self.dim)
        return EmbeddingResult(emb, [i for i, _ in rows], errors)

    def _encode_chunk(self, group: list[tuple[int, list[Any]]], batch: dict[str, Any] | None, inputs: Sequence[Any],
                      errors: dict[int, str]) -> list[tuple[int, torch.Tensor]]:
        """`(position, embedding)` of a chunk's inputs (windows pooled); a failing chunk is retried one by one."""
        try:
            batch = self.collate([w for _, ws in group for w in ws]) if batch is None else batch
            pooled = pool_windows(self.embed_collated(batch).cpu(), [len(ws) for _, ws in group])  # [n, E]
            return [(i, e) for (i, _), e in zip(group, pooled)]
        except Exception as e:  # noqa: BLE001 - find the input that breaks the batch
            if len(group) == 1:
                errors[group[0][0]] = _Describe(inputs)(group[0][0], e)
                return []
        return [row for item in group for row in self._encode_chunk([item], None, inputs, errors)]

    def embed(self, inputs: Sequence[Any] | str | Path, batch_size: int = 64) -> np.ndarray:
        """Raw inputs (sentences, paths, arrays) -> `[N, E]` float32 in input order; any bad input raises.
        Sentences are batched by length (in input order a batch pads to its longest sentence: ~1.4-2.4x the
        tokens on mixed real text)."""
        if isinstance(inputs, (str, Path)):
            inputs = [inputs]
        inputs = list(inputs)
        order = np.arange(len(inputs))
        if self.modality == "text" and all(isinstance(x, str) for x in inputs):
            order = np.argsort([len(x) for x in inputs], kind="stable")
        out = [self.embed_loaded([self.load(inputs[j]) for j in order[i:i + batch_size]])
               for i in range(0, len(inputs), batch_size)]
        if not out:
            return np.zeros((0, self.dim), np.float32)
        emb = np.concatenate(out)
        result = np.empty_like(emb)
        result[order] = emb
        return result

    def to(self, device: str | torch.device) -> Embedder:
        (self.adapter if self.adapter is not None else self.encoder).to(device)  # type: ignore[union-attr]
        return self


def input_name(item: Any, i: int) -> str:
    """How an input is named in predictions and errors: its path, else its position."""
    return str(item) if isinstance(item, (str, os.PathLike)) else f"input {i}"


class _Describe:
    """Names the input in a failure message (picklable, for DataLoader workers)."""

    def __init__(self, inputs: Sequence[Any]) -> None:
        self.inputs = inputs

    def __call__(self, i: int, e: BaseException) -> str:
        name, msg = input_name(self.inputs[i], i), str(e) or type(e).__name__
        return msg if name in msg else f"{name}: {msg}"


class _Collate:
    """Groups decoded inputs into chunks of at most `max_windows` windows and preprocesses each (in the DataLoader
    worker); a chunk whose preprocessing fails goes back unprocessed, for `encode` to retry input by input."""

    def __init__(self, embedder: Embedder, max_windows: int) -> None:
        self.embedder, self.max_windows = embedder, max_windows

    def __call__(self, items: list[tuple[int, list[Any] | None, str | None]]) -> tuple[list[Any], dict[int, str], int]:
        chunks: list[tuple[list[tuple[int, list[Any]]], dict[str, Any] | None]] = []
        errors: dict[int, str] = {}
        groups: list[list[tuple[int, list[Any]]]] = [[]]
        for i, windows, err in items:
            if err is not None:
                errors[i] = err
            elif groups[-1] and sum(len(ws) for _, ws in groups[-1]) + len(windows) > self.max_windows:
                groups.append([(i, windows)])
            else:
                groups[-1].append((i, windows))
        for group in filter(None, groups):
            try:
                chunks.append((group, self.embedder.collate([w for _, ws in group for w in ws])))
            except Exception:  # noqa: BLE001 - retried input by input in the main process
                chunks.append((group, None))
        return chunks, errors, len(items)


def pool_windows(emb: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """Average the normalised window embeddings of each input and renormalise: `[sum counts, E]` -> `[N, E]`."""
    if all(c == 1 for c in counts):
        return emb
    return F.normalize(torch.stack([chunk.mean(0) for chunk in torch.split(emb, list(counts))]), dim=-1)


def _record_spec(record: Mapping[str, Any]) -> EncoderSpec:
    enc = record["encoder"]
    if isinstance(enc, str):  # the short form: name + pretrained + kwargs beside it
        enc = {"name": enc, "pretrained": record.get("pretrained"), "options": record.get("kwargs") or {}}
    return EncoderSpec.from_dict(enc, source="embedder record")


def find_record(records: Mapping[str, Mapping[str, Any]], modality: str) -> dict[str, Any] | None:
    """The record for `modality` among `records`, directly or through a recorded adapter's space or a tower's
    partner (no weights are loaded); None when the space has no such side."""
    if modality in records:
        return dict(records[modality])
    for record in records.values():
        if record.get("adapter"):
            space = read_adapter_config(record["adapter"]).space
            if modality in space:
                return {"encoder": space[modality].to_dict(), "modality": modality}
        elif record.get("encoder"):
            partner = _record_spec(record).partner(modality)
            if partner is not None:
                return {"encoder": partner.to_dict(), "modality": modality}
    return None


def as_embedder(obj: Any, *, device: str | torch.device | None = None) -> Embedder:
    """Accept an `Embedder`, adapter, encoder, adapter folder, `EncoderSpec`, record dict or encoder name."""
    if isinstance(obj, Embedder):
        return obj
    if isinstance(obj, ModalityAdapter):
        return Embedder(obj.encoder, obj)
    if isinstance(obj, Encoder):
        return Embedder(obj)
    if isinstance(obj, EncoderSpec):
        return Embedder.from_encoder(obj, device=device)
    if isinstance(obj, Mapping):
        return Embedder.from_record(obj, device=device)
    if isinstance(obj, (str, os.PathLike)):
        if (Path(obj) / CONFIG_NAME).is_file():
            return Embedder.from_adapter(obj, device=device)
        return Embedder.from_encoder(str(obj), device=device)
    raise TypeError(f"cannot use {type(obj).__name__} as an embedder (expected an adapter, encoder or path)")


__all__ = ["Embedder", "EmbeddingResult", "as_embedder", "find_record", "input_name", "pool_windows"]
