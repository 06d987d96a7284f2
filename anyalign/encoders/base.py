"""The one interface every frozen modality encoder implements.

`load(item)` decodes one raw input (may run in DataLoader workers), `collate(items)` batches decoded items as tensors,
`encode(batch)` runs the network: token features `[B, T, D]`, their mask and a pooled `[B, P]`. Calling the encoder on
raw inputs does all three (no grad when frozen, autocast when asked).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class EncoderOutput:
    """Token features, their mask and a pooled embedding for one batch."""

    tokens: torch.Tensor  # [B, T, D]
    mask: torch.Tensor  # [B, T] bool, True where a token is real
    pooled: torch.Tensor  # [B, P]

    def to(self, device: torch.device | str) -> EncoderOutput:
        return EncoderOutput(self.tokens.to(device), self.mask.to(device), self.pooled.to(device))

    def __getitem__(self, idx: Any) -> EncoderOutput:
        return EncoderOutput(self.tokens[idx], self.mask[idx], self.pooled[idx])


class InputError(ValueError):
    """A raw input cannot be decoded (corrupt, unreadable or of the wrong modality); names the input."""


class Encoder(nn.Module):
    """Base class of frozen encoders. Subclasses set the class/instance attributes and the three methods."""

    modality: ClassVar[str] = ""
    #: file suffixes this encoder reads (lower case, with dot); empty for non-file inputs such as text
    extensions: ClassVar[tuple[str, ...]] = ()
    #: human-readable description of the expected raw input
    input_spec: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.token_dim: int = 0
        self.pooled_dim: int = 0
        self.autocast_dtype: torch.dtype | None = None
        self.frozen = False
        self.spec: Any = None  # the EncoderSpec create_encoder built it from (adapters record it to rebuild it)

    # --- the three stages -------------------------------------------------------------------------------
    def load(self, item: Any) -> Any:
        """Decode one raw input (cheap to run in a worker). Raise `InputError` naming the input on failure."""
        if self.modality == "text" and not isinstance(item, str):  # every text encoder takes strings
            name = self.spec.name if self.spec else type(self).__name__
            raise InputError(f"{name} expects strings, got {type(item).__name__}: {item!r:.80}")
        return item

    def collate(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Preprocess decoded items into batched tensors."""
        raise NotImplementedError

    def encode(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        """Run the network on a collated batch (already on the encoder's device)."""
        raise NotImplementedError

    # --- conveniences -----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for `encode` (bf16 on CPU is ~3x faster than fp32 here); no-op when disabled."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def run(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        """Move a collated batch to the device and encode it under autocast; outputs are float32."""
        dev = self.device
        batch = {k: (v.to(dev, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        with self.autocast():
            out = self.encode(batch)
        return EncoderOutput(out.tokens.float(), out.mask.bool(), out.pooled.float())

    def forward(self, inputs: Sequence[Any]) -> EncoderOutput:
        """Encode raw inputs end to end (load -> collate -> encode); no gradients when frozen."""
        if isinstance(inputs, (str, Path)) or not isinstance(inputs, Sequence):
            inputs = [inputs]
        ctx = torch.no_grad() if self.frozen else contextlib.nullcontext()
        with ctx:
            return self.run(self.collate([self.load(x) for x in inputs]))

    def freeze(self) -> Encoder:
        """Eval mode, no gradients; `train()` keeps a frozen encoder in eval mode (dropout off)."""
        self.frozen = True
        self.requires_grad_(False)
        return super().train(False)

    def unfreeze(self) -> Encoder:
        """Make the encoder trainable (e.g. the IMU encoder trained from scratch)."""
        self.frozen = False
        self.requires_grad_(True)
        return self

    def train(self, mode: bool = True) -> Encoder:
        return super().train(False if self.frozen else mode)

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights an adapter saves when this encoder is trained (`train_encoder`): all of them by default; an
        encoder with a frozen pretrained part (e.g. the universal trunk) returns only what it trains."""
        return self.state_dict()

    def split_long(self, loaded: Any) -> list[Any]:
        """Cut one decoded input into windows the network can take whole, for the embedder to pool. Encoders that
        window long inputs themselves (Whisper, CLAP: `window_seconds`) or need no windows return `[loaded]`."""
        return [loaded]

    #: modality -> the registered encoder that embeds it into this space (a two-tower model's other tower), built
    #: from the same weights and these of this encoder's options
    partners: ClassVar[dict[str, str]] = {}
    shared_options: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def partner_spec(cls, spec: Any, modality: str) -> Any:
        """The `EncoderSpec` that embeds `modality` into this encoder's space, given the spec this encoder is built
        from (`partners` by default; a bridge overrides it); None when this family names none."""
        if modality not in cls.partners:
            return None
        shared = {k: v for k, v in spec.options.items() if k in cls.shared_options}
        return spec.replace(name=cls.partners[modality], options=shared)

    def accepts_file(self, path: str | Path) -> bool:
        """True when `path` has one of this encoder's file suffixes."""
        return Path(path).suffix.lower() in self.extensions


def pad_sequences(seqs: Sequence[torch.Tensor], pad_value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad `[T_i, ...]` tensors to `[B, T_max, ...]` and return them with a `[B, T_max]` bool mask."""
    lengths = torch.tensor([s.shape[0] for s in seqs])
    out = torch.nn.utils.rnn.pad_sequence(list(seqs), batch_first=True, padding_value=pad_value)
    mask = torch.arange(out.shape[1])[None, :] < lengths[:, None]
    return out, mask


def join_windows(tokens: torch.Tensor, mask: torch.Tensor, counts: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows' tokens `[W, T, D]` + mask `[W, T]` -> inputs' `[B, T', D]` + mask: the valid tokens of each input's
    `counts[b]` consecutive windows concatenated (returned unchanged when every input is one window)."""
    if all(c == 1 for c in counts):
        return tokens, mask
    seqs = [torch.cat([t[m] for t, m in zip(ts, ms)]) for ts, ms in zip(tokens.split(counts), mask.split(counts))]
    out, out_mask = pad_sequences(seqs)
    return out, out_mask.to(out.device)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid tokens: `[B, T, D]`, `[B, T]` -> `[B, D]`."""
    w = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * w).sum(1) / w.sum(1).clamp_min(1.0)

