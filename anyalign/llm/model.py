"""`MultimodalLM`: modality adapters plugged into an unmodified Hugging Face causal LM.

The LLM class is never subclassed: prompts are planned and tokenized and adapter soft tokens spliced into
`inputs_embeds` (`prompt.py`); the stock `forward` / `generate` of the LLM run on the result.
Discrete adapters (the `rvq` projector) instead extend the vocabulary: their codes become token ids past the
LLM's original vocabulary, embedded by a small trainable table that is mirrored into the resized embedding matrix.
A `heard` LLM head hands the LLM its adapter's words-head transcript as ordinary text ids (projectors/heard.py).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..adapter import ModalityAdapter
from ..encoders import EncoderOutput
from ..language_model import LLMBackend, register_llm_backend
from ..projectors.heard import reads_transcript
from .lora import LoraMixin
from .prompt import Layout, MediaTokens, check_media, layout_batch, plan_prompts, row_lengths, soft_pool, splice

if TYPE_CHECKING:
    from .bundle import LLMSource

logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 64


@dataclass
class MultimodalLMOutput(CausalLMOutputWithPast):
    """The LLM's output; `loss` = LM loss on target tokens + adapter auxiliary losses (listed separately)."""

    lm_loss: torch.FloatTensor | None = None
    aux_losses: dict[str, torch.Tensor] | None = None
    attention_mask: torch.LongTensor | None = None  # [B, L] 0 on left padding, aligned with `logits`


@dataclass
class Prepared:
    """A batch ready for the LLM: layout tensors, spliced embeddings and adapter auxiliary losses."""

    layout: Layout
    embeds: torch.Tensor  # [B, L, H]
    aux_losses: dict[str, torch.Tensor]


def is_discrete(adapter: ModalityAdapter) -> bool:
    """True when the adapter's LLM head emits discrete codes that map to vocabulary ids (the `rvq` projector)."""
    return adapter.llm_head is not None and hasattr(adapter.llm_head, "codes_to_vocab")


def context_length(config: Any) -> int | None:
    """The LLM's maximum sequence length from its config (Llama/Qwen style or GPT-2 style), if recorded."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class MultimodalLM(LoraMixin, nn.Module):
    """A frozen causal LM plus per-modality adapters; prompts carry `<modality>` placeholders for media."""

    def __init__(self, llm: nn.Module, tokenizer: Any, adapters: Mapping[str, ModalityAdapter] | None = None, *,
                 source: LLMSource | None = None, base_vocab_size: int | None = None) -> None:
        super().__init__()
        self.llm = llm
        self.tokenizer = tokenizer
        self.source = source
        embed = llm.get_input_embeddings()
        self.hidden_size: int = embed.embedding_dim
        self.context_length = context_length(llm.config)
        self.adapters = nn.ModuleDict()
        for modality, adapter in (adapters or {}).items():
            self._check_adapter(modality, adapter)
            self.adapters[modality] = adapter
        self.base_vocab_size: int = base_vocab_size or embed.num_embeddings
        self.code_offsets: dict[str, int] = {}
        self.code_embeddings: nn.Embedding | None = None
        self._setup_codes()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id: int = int(pad) if pad is not None else 0
        self.placeholder_id = self.pad_id  # any in-range id: soft positions are overwritten after the lookup
        self.use_chat_template = bool(getattr(tokenizer, "chat_template", None))
        self.lora_merged = False  # LoRA merged and unloaded: the LLM weights themselves changed
        self.lora_merged_in_place = False  # LoRA merged but still attached (peft merge_adapter)
        self.llm.requires_grad_(False)

    # --- construction ---------------------------------------------------------------------------------
    def _check_adapter(self, modality: str, adapter: ModalityAdapter) -> None:
        if not isinstance(adapter, ModalityAdapter):
            raise ValueError(f"adapters[{modality!r}]: expected a ModalityAdapter or a folder, got "
                             f"{type(adapter).__name__}")
        if adapter.modality != modality:
            raise ValueError(f"adapters[{modality!r}]: the adapter is for modality {adapter.modality!r}")
        if adapter.llm_head is None:
            raise ValueError(f"{modality} adapter has no LLM head (llm_dim/llm_projector unset); it can only embed")
        if not is_discrete(adapter) and not reads_transcript(adapter.llm_head) \
                and adapter.llm_head.out_dim != self.hidden_size:
            raise ValueError(f"{modality} adapter: output width llm_dim={adapter.llm_head.out_dim} does not match "
                             f"the LLM hidden size {self.hidden_size} "
                             f"({getattr(self.llm, 'name_or_path', '') or type(self.llm).__name__})")

    def _setup_codes(self) -> None:
        """Give each discrete adapter a block of new vocabulary ids and resize the LLM embeddings to fit."""
        offset = self.base_vocab_size
        for modality in sorted(self.adapters):
            adapter = self.adapters[modality]
            if is_discrete(adapter):
                self.code_offsets[modality] = offset
                offset += int(adapter.llm_head.vocab_size_needed)
        total = offset - self.base_vocab_size
        if not total:
            return
        current = self.llm.get_input_embeddings().num_embeddings
        if current == self.base_vocab_size:
            from transformers.utils import logging as hf_logging

            level = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # the resize explains its (intended) mean initialisation at WARNING
            try:
                self.llm.resize_token_embeddings(offset, mean_resizing=True)
            finally:
                hf_logging.set_verbosity(level)
        elif current != offset:
            raise ValueError(f"LLM embedding has {current} rows; expected {self.base_vocab_size} (base vocabulary) "
                             f"or {offset} (base + {total} code ids)")
        weight = self.llm.get_input_embeddings().weight
        self.code_embeddings = nn.Embedding(total, self.hidden_size, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            self.code_embeddings.weight.copy_(weight[self.base_vocab_size:])
        self.code_embeddings.requires_grad_(False)
        logger.info("extended the vocabulary by %d code ids (%s)", total, self.code_offsets)

    @classmethod
    def from_pretrained(cls, llm: str | os.PathLike | nn.Module,
                        adapters: Mapping[str, str | os.PathLike | ModalityAdapter] | None = None, *,
                        tokenizer: Any = None, gguf_file: str | None = None, dtype: torch.dtype = torch.float32,
                        load_encoders: bool = True, is_trainable: bool = False, merge_lora: bool = False,
                        device: str | torch.device | None = None) -> MultimodalLM:
        """Wrap a causal LM (hub id, folder, GGUF folder + `gguf_file`, or model instance) with adapters (folders
        or instances), or load a saved bundle folder (`anyalign_mmlm.json`)."""
        from .bundle import load_multimodal

        return load_multimodal(cls, llm, adapters, tokenizer=tokenizer, gguf_file=gguf_file, dtype=dtype,
                               load_encoders=load_encoders, is_trainable=is_trainable, merge_lora=merge_lora,
                               device=device)

    def save_pretrained(self, save_directory: str | os.PathLike, *, save_llm: bool | None = None) -> os.PathLike:
        """Save adapters, LoRA, code embeddings and a config naming the base LLM as one folder."""
        from .bundle import save_bundle

        return save_bundle(self, save_directory, save_llm=save_llm)

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    # --- training ------------------------------------------------------------------------------------
    def set_trainable(self, *, adapters: bool = True, lora: bool = True, codes: bool = True) -> list[nn.Parameter]:
        """Choose what the caption loss trains (LLM base weights always stay frozen); returns those parameters."""
        for name, p in self.llm.named_parameters():
            p.requires_grad_(lora and "lora_" in name)
        for adapter in self.adapters.values():
            adapter.llm_head.requires_grad_(adapters)
            if adapter.encoder is not None and adapter.config.train_encoder:
                adapter.encoder.requires_grad_(adapters)
        if self.code_embeddings is not None:
            self.code_embeddings.requires_grad_(codes)
        return self.trainable_parameters()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # --- batch preparation ----------------------------------------------------------------------------
    def _given_media(self, inputs: Mapping[str, Any], features: Mapping[str, EncoderOutput]) -> dict[str, int]:
        both = set(inputs) & set(features)
        if both:
            raise ValueError(f"modality {sorted(both)[0]!r} given both as inputs and as features; pass one")
        given: dict[str, int] = {}
        for modality, items in inputs.items():
            if not isinstance(items, (list, tuple)):
                raise ValueError(f"inputs[{modality!r}]: expected a list of raw inputs (one per <{modality}> "
                                 f"placeholder), got {type(items).__name__}")
            given[modality] = len(items)
        for modality, feats in features.items():
            if not isinstance(feats, EncoderOutput):
                raise ValueError(f"features[{modality!r}]: expected an EncoderOutput, got {type(feats).__name__}")
            given[modality] = feats.tokens.shape[0]
            adapter = self.adapters[modality] if modality in self.adapters else None
            if adapter is not None:
                width = (feats.pooled if adapter.config.feature == "pooled" else feats.tokens).shape[-1]
                if width != adapter.config.in_dim:
                    raise ValueError(f"features[{modality!r}]: {adapter.config.feature} width {width}, the "
                                     f"{modality} adapter expects in_dim={adapter.config.in_dim}")
        return given

    def _check_length(self, lengths: Sequence[int], extra: int, what: str) -> None:
        longest = max(lengths)
        if self.context_length is not None and longest + extra > self.context_length:
            i = list(lengths).index(longest)
            more = f" + {extra} new tokens" if extra else ""
            raise ValueError(f"prompts[{i}]: {longest} {what}{more} exceed the LLM context length "
                             f"{self.context_length}; shorten the prompt, use fewer media or fewer new tokens")

    def _media(self, counts: Mapping[str, int], inputs: Mapping[str, Any], features: Mapping[str, EncoderOutput]
               ) -> tuple[dict[str, MediaTokens], dict[str, torch.Tensor]]:
        """Run the adapters: soft tokens (valid ones only) or discrete vocabulary ids per media item."""
        media: dict[str, MediaTokens] = {}
        aux: dict[str, torch.Tensor] = {}
        for modality in sorted(m for m, n in counts.items() if n):
            adapter = self.adapters[modality]
            feats = features[modality] if modality in features else adapter.encode(list(inputs[modality]))
            if reads_transcript(adapter.llm_head):  # the words head's transcript, as ordinary text tokens
                ids = adapter.llm_head.token_ids(adapter.transcribe(feats.to(self.device)), self.tokenizer)
                media[modality] = MediaTokens([len(x) for x in ids], ids=ids)
                continue
            out = adapter.soft_tokens(feats.to(self.device))
            aux.update({f"{modality}.{k}": v for k, v in out.losses.items()})
            mask = out.mask.bool()  # [M, N]
            if modality in self.code_offsets:
                head = adapter.llm_head
                vocab = head.codes_to_vocab(out.codes, self.code_offsets[modality])  # [M, N*Q]
                valid = mask.repeat_interleave(head.num_quantizers, dim=1)  # [M, N*Q]
                ids = [vocab[k][valid[k]].tolist() for k in range(vocab.shape[0])]
                media[modality] = MediaTokens([len(x) for x in ids], ids=ids)
            else:
                media[modality] = MediaTokens(mask.sum(1).tolist(), soft=out.tokens[mask])  # soft: [S, H]
        return media, aux

    def embed_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids `[B, L]` -> embeddings `[B, L, H]`; code ids come from the trainable code table."""
        embed = self.llm.get_input_embeddings()
        if self.code_embeddings is None:
            return embed(input_ids)
        is_code = input_ids >= self.base_vocab_size
        out = embed(input_ids.masked_fill(is_code, self.pad_id))
        codes = self.code_embeddings(input_ids[is_code] - self.base_vocab_size)  # [C, H]
        return out.masked_scatter(is_code.unsqueeze(-1), codes.to(out.dtype))

    def prepare(self, prompts: Sequence[str] | str, targets: Sequence[str] | None = None, *,
                inputs: Mapping[str, Any] | None = None, features: Mapping[str, EncoderOutput] | None = None,
                chat_template: bool | None = None, extra_tokens: int = 0) -> Prepared:
        """Check and tokenize the batch (errors before any compute), run the adapters and splice."""
        prompts = [prompts] if isinstance(prompts, str) else prompts
        inputs, features = dict(inputs or {}), dict(features or {})
        use_template = self.use_chat_template if chat_template is None else chat_template
        if use_template and not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("chat_template=True but the tokenizer has no chat template")
        plan = plan_prompts(prompts, self.tokenizer, self.adapters.keys(), targets=targets,
                            chat_template=use_template)
        check_media(plan.counts, self._given_media(inputs, features), self.adapters.keys())
        self._check_length(plan.text_lengths(), extra_tokens, "text tokens")
        media, aux = self._media(plan.counts, inputs, features)
        self._check_length(row_lengths(plan, media), extra_tokens, "tokens (text + media)")
        layout = layout_batch(plan, media, placeholder_id=self.placeholder_id, pad_id=self.pad_id).to(self.device)
        pool, _ = soft_pool(media)
        embeds = splice(self.embed_ids(layout.input_ids), layout, pool)  # [B, L, H]
        return Prepared(layout, embeds, aux)

    # --- forward and generation -----------------------------------------------------------------------
    def forward(self, prompts: Sequence[str] | str, targets: Sequence[str] | None = None, *,
                inputs: Mapping[str, Any] | None = None, features: Mapping[str, EncoderOutput] | None = None,
                chat_template: bool | None = None, **llm_kwargs: Any) -> MultimodalLMOutput:
        """Logits for the batch; with `targets`, the LM loss on target tokens only (+ adapter aux losses)."""
        prep = self.prepare(prompts, targets, inputs=inputs, features=features, chat_template=chat_template)
        lay = prep.layout
        llm_kwargs.setdefault("use_cache", False)
        out = self.llm(inputs_embeds=prep.embeds, attention_mask=lay.attention_mask, position_ids=lay.position_ids,
                       labels=lay.labels, **llm_kwargs)
        fields = {k: v for k, v in out.items() if k != "loss"}  # field names differ across transformers versions
        lm_loss = out.get("loss")
        loss = lm_loss + sum(prep.aux_losses.values()) if lm_loss is not None and prep.aux_losses else lm_loss
        return MultimodalLMOutput(loss=loss, lm_loss=lm_loss, aux_losses=prep.aux_losses,
                                  attention_mask=lay.attention_mask, **fields)

    def _generation_kwargs(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], int]:
        gen = dict(kwargs)
        if gen.get("max_new_tokens") is None and gen.get("max_length") is None:
            gen["max_new_tokens"] = DEFAULT_MAX_NEW_TOKENS
        gen.setdefault("pad_token_id", self.pad_id)
        if self.code_offsets:  # text generation: never emit code ids (they have no text)
            codes = list(range(self.base_vocab_size, self.llm.get_input_embeddings().num_embeddings))
            gen["suppress_tokens"] = list(gen.get("suppress_tokens") or []) + codes
        return gen, int(gen.get("max_new_tokens") or 0)

    def _sync_code_rows(self) -> None:
        """Mirror the code table into the LLM's resized input embedding (so the LLM alone sees the same ids)."""
        if self.code_embeddings is not None:
            with torch.no_grad():
                weight = self.llm.get_input_embeddings().weight
                weight[self.base_vocab_size:].copy_(self.code_embeddings.weight)

    def _run_generate(self, prep: Prepared, gen: dict[str, Any], streamer: Any = None) -> torch.Tensor:
        self._sync_code_rows()
        return self.llm.generate(inputs_embeds=prep.embeds, attention_mask=prep.layout.attention_mask,
                                 streamer=streamer, **gen)  # [B, new] (only new tokens with inputs_embeds)

    def generate(self, prompts: Sequence[str] | str, *, inputs: Mapping[str, Any] | None = None,
                 features: Mapping[str, EncoderOutput] | None = None, chat_template: bool | None = None,
                 stream: bool = False, streamer: Any = None, **generation_kwargs: Any) -> list[str] | Iterator[str]:
        """Generate text for each prompt (usual `generate` arguments); `stream=True` returns a text iterator
        (one prompt), `streamer=` passes a transformers streamer through."""
        if stream:
            return self.stream(prompts, inputs=inputs, features=features, chat_template=chat_template,
                               **generation_kwargs)
        gen, new = self._generation_kwargs(generation_kwargs)
        with torch.no_grad():
            prep = self.prepare(prompts, inputs=inputs, features=features, chat_template=chat_template,
                                extra_tokens=new)
            ids = self._run_generate(prep, gen, streamer)
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def stream(self, prompt: Sequence[str] | str, *, inputs: Mapping[str, Any] | None = None,
               features: Mapping[str, EncoderOutput] | None = None, chat_template: bool | None = None,
               **generation_kwargs: Any) -> Iterator[str]:
        """Generate for one prompt in a background thread, yielding text pieces as they are decoded."""
        from transformers import TextIteratorStreamer

        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if len(prompts) != 1:
            raise ValueError(f"stream: expected one prompt, got {len(prompts)}")
        gen, new = self._generation_kwargs(generation_kwargs)
        with torch.no_grad():  # checks and adapters run here, so errors surface in the caller
            prep = self.prepare(prompts, inputs=inputs, features=features, chat_template=chat_template,
                                extra_tokens=new)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        errors: list[BaseException] = []

        def work() -> None:
            try:
                self._run_generate(prep, gen, streamer)
            except BaseException as e:  # noqa: BLE001 - re-raised in the consuming thread
                errors.append(e)
                streamer.end()

        thread = threading.Thread(target=work, name="anyalign-generate", daemon=True)
        thread.start()
        return _drain(streamer, thread, errors)


@register_llm_backend("transformers")
def transformers_backend() -> LLMBackend:
    """The built-in frozen-LLM backend of alignment training: `load_llm`, `MultimodalLM` and the bundle check."""
    from .bundle import is_bundle, load_llm

    return LLMBackend(load=load_llm, wrap=MultimodalLM, is_bundle=is_bundle)


def _drain(streamer: Any, thread: threading.Thread, errors: list[BaseException]) -> Iterator[str]:
    yield from streamer
    thread.join()
    if errors:
        raise errors[0]


__all__ = ["MultimodalLM", "MultimodalLMOutput", "Prepared", "context_length", "is_discrete", "transformers_backend"]
