"""CLAP towers as frozen encoders: "clap-audio" (HTSAT) and "clap-text" (RoBERTa), through transformers.

`pretrained` is a transformers CLAP hub id (default `laion/clap-htsat-unfused`) or a `save_pretrained` folder; each
encoder keeps only its own tower and projection. Audio is cut into windows of at most the model's 10 s clip, so the
extractor only repeat-pads and inference is deterministic (fused checkpoints get `is_longer=False`). Audio tokens are
HTSAT's final feature map, time-major, windows concatenated; text tokens RoBERTa's last hidden states. Pooled is the
normalised projected embedding (averaged over windows), one space for both towers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import (
    AutoTokenizer,
    ClapAudioModelWithProjection,
    ClapFeatureExtractor,
    ClapTextModelWithProjection,
)

from ..io import resolve_pretrained
from .audio_io import AUDIO_INPUT_SPEC, AudioEncoder, split_windows
from .base import Encoder, EncoderOutput, join_windows
from .registry import register_encoder

DEFAULT_CLAP_MODEL = "laion/clap-htsat-unfused"


def hf_source(pretrained: str | None, family: str, default: str) -> str:
    """The local folder or hub id to hand to `from_pretrained` (the default model when None)."""
    if pretrained is None:
        return default
    src = resolve_pretrained(pretrained)
    if src.kind in ("dir", "hub"):
        return src.location
    raise FileNotFoundError(f"{family}: pretrained={pretrained!r} must be a Hugging Face model folder (written by "
                            f"save_pretrained) or a hub id such as {default!r}")


def load_tower(cls: type, source: str, family: str, *, prefix: str = "") -> Any:
    """`cls.from_pretrained(source)` in float32 and eval mode; every weight whose name starts with `prefix` must be
    in the checkpoint (transformers' load report, which lists a two-tower checkpoint's other tower, is hidden)."""
    log = logging.getLogger("transformers.modeling_utils")
    drop_report = lambda record: "LOAD REPORT" not in str(record.msg)  # noqa: E731
    log.addFilter(drop_report)
    try:
        model, info = cls.from_pretrained(source, output_loading_info=True, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as e:
        raise FileNotFoundError(f"{family}: cannot load {source!r} (expected a {cls.__name__} model folder or a "
                                f"reachable hub id): {e}") from None
    finally:
        log.removeFilter(drop_report)
    missing = sorted(k for k in info.get("missing_keys") or [] if k.startswith(prefix))
    if missing:
        raise ValueError(f"{family}: {source!r} has no weights for {missing[:5]} (of {len(missing)} missing): not a "
                         f"{cls.__name__} checkpoint of this size")
    return model.eval()


class ClapAudioEncoder(AudioEncoder):
    """HTSAT audio tower: tokens `[B, T, D]` (windows concatenated), pooled = normalised CLAP embedding `[B, P]`."""

    partners = {"text": "clap-text"}  # the text tower of the same checkpoint

    def __init__(self, model: ClapAudioModelWithProjection, extractor: ClapFeatureExtractor, *,
                 window_seconds: float | None = None) -> None:
        super().__init__()
        self.model = model
        self.extractor = extractor
        self.sample_rate = int(extractor.sampling_rate)
        self.clip_seconds = float(extractor.nb_max_samples) / self.sample_rate
        self.window_seconds = float(window_seconds or self.clip_seconds)
        if not 0 < self.window_seconds <= self.clip_seconds:
            raise ValueError(f"clap-audio: window_seconds must be in (0, {self.clip_seconds:g}] (the model's clip "
                             f"length; longer windows would be randomly cropped), got {window_seconds}")
        self.window_samples = int(round(self.window_seconds * self.sample_rate))
        self.fusion = bool(model.config.enable_fusion)
        self.token_dim = int(model.audio_model.audio_encoder.num_features)
        self.pooled_dim = int(model.config.projection_dim)

    def collate(self, items: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        windows = [split_windows(w, self.window_samples) for w in items]
        flat = [w.astype(np.float64) for ws in windows for w in ws]
        feats = self.extractor(flat, sampling_rate=self.sample_rate, truncation="fusion" if self.fusion else
                               "rand_trunc", padding="repeatpad", return_tensors="pt")
        return {
            "input_features": feats["input_features"].float(),  # [W, 1 or 4, frames, mels]
            "is_longer": torch.zeros(len(flat), 1, dtype=torch.bool),  # [W, 1]: windows never exceed one clip
            "windows": torch.tensor([len(ws) for ws in windows]),  # [B]
        }

    def encode(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        out = self.model.audio_model(input_features=batch["input_features"], is_longer=batch["is_longer"])
        fmap = out.last_hidden_state  # [W, D, F, T]
        tokens = fmap.permute(0, 3, 2, 1).flatten(1, 2)  # [W, T*F, D], time-major
        emb = F.normalize(self.model.audio_projection(out.pooler_output).float(), dim=-1)  # [W, P]
        counts = batch["windows"].tolist()
        pooled = torch.stack([F.normalize(e.mean(0), dim=-1) for e in torch.split(emb, counts)])  # [B, P]
        valid = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        tokens, mask = join_windows(tokens, valid, counts)  # [B, T_max, D]: an input's windows concatenated
        return EncoderOutput(tokens, mask, pooled)


class ClapTextEncoder(Encoder):
    """RoBERTa text tower: tokens `[B, L, H]` with the attention mask, pooled = normalised CLAP embedding."""

    modality = "text"
    input_spec = "str: one sentence per item"

    partners = {"audio": "clap-audio"}

    def __init__(self, model: ClapTextModelWithProjection, tokenizer: Any, *, max_length: int = 77) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = min(int(max_length), int(model.config.max_position_embeddings) - 2)
        self.token_dim = int(model.config.hidden_size)
        self.pooled_dim = int(model.config.projection_dim)

    def collate(self, items: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(items), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}  # [B, L] each

    def encode(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        out = self.model.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        pooled = F.normalize(self.model.text_projection(out.pooler_output).float(), dim=-1)  # [B, P]
        return EncoderOutput(out.last_hidden_state, batch["attention_mask"].bool(), pooled)


@dataclass
class ClapAudioOptions:
    """Options of the "clap-audio" encoder (the checkpoint is `pretrained`)."""

    window_seconds: float | None = field(default=None, metadata={
        "help": "window length for long audio, at most the model's clip (None = the clip, 10 s)"})


@dataclass
class ClapTextOptions:
    """Options of the "clap-text" encoder (the checkpoint is `pretrained`)."""

    max_length: int = field(default=77, metadata={"help": "tokens per caption (LAION's 77); longer are cut"})


@register_encoder("clap-audio", modality="audio", token_dim=768, pooled_dim=512, input_spec=AUDIO_INPUT_SPEC,
                  default_model=DEFAULT_CLAP_MODEL, options=ClapAudioOptions)
def clap_audio_encoder(pretrained: str | None, opts: ClapAudioOptions) -> ClapAudioEncoder:
    """CLAP audio tower from a hub id or local folder (default laion/clap-htsat-unfused); long audio is windowed."""
    source = hf_source(pretrained, "clap-audio", DEFAULT_CLAP_MODEL)
    model = load_tower(ClapAudioModelWithProjection, source, "clap-audio")
    try:
        extractor = ClapFeatureExtractor.from_pretrained(source)
    except OSError as e:
        raise FileNotFoundError(f"clap-audio: no feature extractor config in {source!r}: {e}") from None
    return ClapAudioEncoder(model, extractor, window_seconds=opts.window_seconds)


@register_encoder("clap-text", modality="text", token_dim=768, pooled_dim=512, input_spec=ClapTextEncoder.input_spec,
                  default_model=DEFAULT_CLAP_MODEL, options=ClapTextOptions)
def clap_text_encoder(pretrained: str | None, opts: ClapTextOptions) -> ClapTextEncoder:
    """CLAP text tower from a hub id or local folder (default laion/clap-htsat-unfused); `max_length` as in LAION."""
    source = hf_source(pretrained, "clap-text", DEFAULT_CLAP_MODEL)
    model = load_tower(ClapTextModelWithProjection, source, "clap-text")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as e:
        raise FileNotFoundError(f"clap-text: no tokenizer in {source!r}: {e}") from None
    return ClapTextEncoder(model, tokenizer, max_length=opts.max_length)
