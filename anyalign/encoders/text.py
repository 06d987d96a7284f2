"""Any Hugging Face sentence encoder ("text"), run as its own sentence-transformers configuration says: pooling mode,
max_seq_length, lowercasing and default prompt (explicit options win). A plain transformers folder is mean-pooled with
128 tokens; sentence-transformers modules beyond Transformer/Pooling/Normalize are refused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from ..config import ConfigError
from .base import Encoder, EncoderOutput, masked_mean
from .registry import register_encoder

logger = logging.getLogger(__name__)

DEFAULT_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_MAX_LENGTH = 128  # for a model without a sentence-transformers max_seq_length
Pooling = Literal["mean", "cls", "max", "mean_sqrt_len", "lasttoken"]  # sentence-transformers' modes
_ST_POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                    "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
                    "pooling_mode_lasttoken": "lasttoken"}
_ST_MODULES = ("Transformer", "Pooling", "Normalize")


class HFTextEncoder(Encoder):
    """Transformer text encoder: token states `[B, T, H]`, pooled `[B, H]` (mean by default), L2-normalised."""

    modality = "text"
    input_spec = "str: one sentence per item"

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, max_length: int = DEFAULT_MAX_LENGTH,
                 normalize: bool = True, pooling: str = "mean", lowercase: bool = False, prompt: str = "") -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.normalize = normalize
        self.pooling = pooling
        self.lowercase = lowercase
        self.prompt = prompt
        self.token_dim = self.pooled_dim = int(model.config.hidden_size)

    def collate(self, items: Sequence[str]) -> dict[str, torch.Tensor]:
        texts = [self.prompt + (t.lower() if self.lowercase else t) for t in items]
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return dict(enc)

    def encode(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        mask = batch["attention_mask"].bool()
        tokens = self.model(**batch).last_hidden_state  # [B, T, H]
        pooled = pool_tokens(tokens.float(), mask, self.pooling)
        if self.normalize:
            pooled = F.normalize(pooled, dim=-1)
        return EncoderOutput(tokens, mask, pooled)


def pool_tokens(tokens: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """`[B, T, H]` token states -> `[B, H]` by a sentence-transformers pooling mode (padding masked out)."""
    if mode == "mean":
        return masked_mean(tokens, mask)
    if mode == "mean_sqrt_len":
        return (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1).sqrt()
    if mode == "cls":
        return tokens[:, 0]
    if mode == "max":
        return tokens.masked_fill(~mask[..., None], torch.finfo(tokens.dtype).min).max(1).values
    last = mask.long().cumsum(1).argmax(1)  # lasttoken: the last unmasked position (right or left padding)
    return tokens[torch.arange(tokens.shape[0], device=tokens.device), last]


def _st_file(source: str, name: str) -> dict[str, Any] | list[Any] | None:
    """A JSON file of the model's sentence-transformers configuration (local folder or Hub cache), or None."""
    folder = Path(source).expanduser()
    path: Path | None = folder / name if folder.is_dir() else None
    if path is None:
        try:
            from huggingface_hub import hf_hub_download

            from ..hub import hub_offline

            path = Path(hf_hub_download(source, name, local_files_only=hub_offline()))
        except Exception:  # noqa: BLE001 - not a sentence-transformers model, or not reachable: plain defaults
            return None
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None


def st_config(source: str) -> dict[str, Any]:
    """What a sentence-transformers model folder says about running it: `pooling`, `max_length`, `normalize`,
    `lowercase`, `prompt` (only the keys it sets; empty for a plain transformers folder)."""
    modules = _st_file(source, "modules.json")
    if not isinstance(modules, list):
        return {}
    out: dict[str, Any] = {"normalize": False}
    for m in modules:
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        if kind not in _ST_MODULES:
            raise ConfigError(f"{source}: its sentence-transformers module {m.get('type')!r} is not run by anyalign's "
                              f"'text' encoder (it runs {', '.join(_ST_MODULES)})")
        if kind == "Normalize":
            out["normalize"] = True
        if kind == "Pooling":
            cfg = _st_file(source, f"{m.get('path') or '1_Pooling'}/config.json") or {}
            modes = [mode for key, mode in _ST_POOLING_KEYS.items() if cfg.get(key)]
            if len(modes) > 1:
                raise ConfigError(f"{source}: pooling combines {modes}; anyalign's 'text' encoder runs one mode")
            if modes:
                out["pooling"] = modes[0]
    bert = _st_file(source, "sentence_bert_config.json") or {}
    if isinstance(bert, dict):
        if bert.get("max_seq_length"):
            out["max_length"] = int(bert["max_seq_length"])
        out["lowercase"] = bool(bert.get("do_lower_case", False))
    st = _st_file(source, "config_sentence_transformers.json") or {}
    if isinstance(st, dict) and st.get("default_prompt_name"):
        out["prompt"] = (st.get("prompts") or {}).get(st["default_prompt_name"], "")
    return out


@dataclass
class TextOptions:
    """Options of the "text" encoder (the model itself is `pretrained`); unset ones follow the model's own
    sentence-transformers configuration."""

    max_length: int | None = field(default=None, metadata={
        "help": "tokens per sentence, longer ones truncated (default: the model's max_seq_length, else 128)",
        "min": 1})
    normalize: bool = field(default=True, metadata={"help": "L2-normalise the pooled embedding"})
    pooling: Pooling | None = field(default=None, metadata={"help": "default: the model's pooling, else mean"})


@register_encoder("text", modality="text", token_dim=384, pooled_dim=384, input_spec=HFTextEncoder.input_spec,
                  default_model=DEFAULT_TEXT_MODEL, options=TextOptions)
def text_encoder(pretrained: str | None, opts: TextOptions) -> HFTextEncoder:
    """A sentence encoder from a local folder or hub id (default: all-MiniLM-L6-v2), run as its own
    sentence-transformers configuration says unless options override it."""
    source = str(pretrained or DEFAULT_TEXT_MODEL)
    if source.startswith("hf-hub:"):
        source = source[len("hf-hub:"):]
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModel.from_pretrained(source)
    except OSError as e:
        raise FileNotFoundError(
            f"text encoder: cannot load {source!r} (expected a Hugging Face model folder or a reachable hub id): {e}"
        ) from None
    own = st_config(source)
    return HFTextEncoder(model, tokenizer, max_length=opts.max_length or own.get("max_length", DEFAULT_MAX_LENGTH),
                         normalize=opts.normalize, pooling=opts.pooling or own.get("pooling", "mean"),
                         lowercase=own.get("lowercase", False), prompt=own.get("prompt", ""))
