"""`AlignmentModel`: trainable adapters (ImageBind-style, one per modality) around frozen encoders and LLM.

Only trainable parts are registered submodules (projector heads, trained encoders, temperatures, LoRA), so the state
dict, DDP and checkpoints hold just them; frozen encoders, anchors and the LLM live beside them (moved by `.to()`).
`training_forward(batch)` returns one loss per term of its tasks (align/tasks.py); `build_model` (build.py) makes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..adapter import HEAD_ATTRS, ModalityAdapter
from ..encoders import Encoder, EncoderOutput
from ..projectors import Projector
from ..projectors.shared import SHARED_DIR, save_shared_projector
from .data import Batch, MediaBatch
from .tasks import LLM_TASKS, LossTerms, Task, TermKey


class _Frozen:
    """Holder that keeps frozen modules out of the registered module tree."""

    def __init__(self) -> None:
        self.encoders: dict[str, Encoder] = {}  # modality -> frozen encoder of an adapter
        self.anchors: dict[str, Encoder] = {}  # anchor modality -> frozen encoder
        self.mllm: Any = None  # MultimodalLM (frozen LLM; LoRA weights are registered separately)

    def modules(self) -> list[nn.Module]:
        mods: list[nn.Module] = [*self.encoders.values(), *self.anchors.values()]
        if self.mllm is not None:
            mods.append(self.mllm.llm)  # its adapters and code table are registered in the AlignmentModel
        return mods


class AlignmentModel(nn.Module):
    """Adapters + training tasks (`Task` instances, align/tasks.py) for one recipe; `forward = training_forward` so
    DDP wraps it directly. `loss_weights` maps term keys to the weights the trainer applies (default 1)."""

    def __init__(self, adapters: dict[str, ModalityAdapter], *, anchors: dict[str, Encoder] | None = None,
                 frozen_encoders: dict[str, Encoder] | None = None, mllm: Any = None, tasks: Sequence[Task] = (),
                 loss_weights: dict[TermKey, float] | None = None) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict(adapters)
        self.tasks = nn.ModuleDict({t.name: t for t in tasks})  # fixed order: every rank runs the same collectives
        self.loss_weights: dict[TermKey, float] = dict(loss_weights or {})
        self.frozen = _Frozen()
        self.frozen.encoders = dict(frozen_encoders or {})
        self.frozen.anchors = dict(anchors or {})
        self.frozen.mllm = mllm
        self.lora = nn.ParameterDict()  # the LoRA weights inside the frozen LLM, registered here for DDP/ckpt
        self.code_embeddings = None  # discrete (rvq) adapters: the trainable table of code-token embeddings
        if mllm is not None:
            for name, p in mllm.llm.named_parameters():
                if p.requires_grad and "lora_" in name:
                    self.lora[name.replace(".", "__")] = p
            if mllm.code_embeddings is not None:
                self.code_embeddings = mllm.code_embeddings.requires_grad_(True)
        self.text_tables: dict[str, Any] = {}  # anchor -> caption table on disk (text_cache.py), set by the trainer

    # --- device / mode handling of the frozen parts -----------------------------------------------------------
    def _apply(self, fn: Callable, recurse: bool = True) -> AlignmentModel:  # .to(), .float(), ...
        super()._apply(fn, recurse)
        for mod in self.frozen.modules():
            mod._apply(fn)
        return self

    def train(self, mode: bool = True) -> AlignmentModel:
        super().train(mode)
        if len(self.lora) and self.frozen.mllm is not None:  # LoRA dropout follows the training mode
            self.frozen.mllm.llm.train(mode)
        return self

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def contrastive_losses(self) -> dict[TermKey, nn.Module]:
        """The binding losses (with their learnable temperatures) by term key `("contrastive", modality, anchor)`."""
        task = self.tasks["contrastive"] if "contrastive" in self.tasks else None
        return {key: task.loss_module(key[1], key[2]) for key in task.terms()} if task is not None else {}

    # --- features and embeddings --------------------------------------------------------------------------
    def has_encoder(self, modality: str) -> bool:
        return ((modality in self.adapters and self.adapters[modality].encoder is not None)
                or modality in self.frozen.encoders or modality in self.frozen.anchors)

    def encoder_for(self, modality: str) -> Encoder:
        adapter = self.adapters[modality] if modality in self.adapters else None
        if adapter is not None and adapter.encoder is not None:
            return adapter.encoder
        if modality in self.frozen.encoders:
            return self.frozen.encoders[modality]
        if modality in self.frozen.anchors:
            return self.frozen.anchors[modality]
        raise ValueError(f"{modality}: raw inputs need an encoder, but this run only has cached features for it")

    def features(self, modality: str, mb: MediaBatch) -> EncoderOutput:
        """Encoder output of one modality's items: cached features as they are, raw inputs encoded now."""
        if mb.features is not None:
            return mb.features.to(self.device)
        enc = self.encoder_for(modality)
        if enc.frozen:
            with torch.no_grad():
                return enc.run(mb.inputs)
        return enc.run(mb.inputs)

    def embed(self, modality: str, feats: EncoderOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Shared-space embeddings `[N, E]` of an adapter modality (+ auxiliary projector losses)."""
        return self.adapters[modality].embed_output(feats)

    @torch.no_grad()
    def anchor_texts(self, anchor: str, texts: Sequence[str]) -> torch.Tensor:
        """Frozen text-anchor embeddings `[N, E]`: from the anchor's table on disk when the trainer set one (every
        caption encoded once, text_cache.py), else encoded now."""
        enc = self.frozen.anchors[anchor]
        if not texts:
            return torch.zeros(0, enc.pooled_dim, device=self.device)
        if anchor in self.text_tables:
            return self.text_tables[anchor].get(list(texts)).to(self.device)
        return F.normalize(enc(list(texts)).pooled.float(), dim=-1).to(self.device)

    # --- training -----------------------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> LossTerms:
        return self.training_forward(batch)

    def training_forward(self, batch: Batch) -> LossTerms:
        """All loss terms of a (possibly mixed-task) batch, keyed by tuples; every rank calls the same collectives."""
        feats = {m: self.features(m, mb) for m, mb in batch.media.items()}
        losses: LossTerms = {}
        for task in self.tasks.values():
            losses.update(task.training_forward(self, batch, feats))
        return losses

    def llm_output(self, batch: Batch, feats: dict[str, EncoderOutput], rows: list[int]) -> Any:
        row_set = set(rows)
        sub: dict[str, EncoderOutput] = {}
        for m, mb in batch.media.items():
            if m not in self.adapters or self.adapters[m].llm_head is None:
                continue
            idx = [j for j, r in enumerate(mb.rows.tolist()) if r in row_set]
            if idx:
                sub[m] = feats[m][torch.tensor(idx, device=feats[m].tokens.device)]
        return self.frozen.mllm(prompts=[batch.prompts[i] for i in rows], targets=[batch.targets[i] for i in rows],
                                features=sub)

    def llm_loss(self, batch: Batch, feats: dict[str, EncoderOutput], rows: list[int], *, lm_only: bool = False
                 ) -> torch.Tensor:
        """Next-token loss of the frozen LLM on the targets of `rows` (prompt and media positions masked);
        adapter auxiliary losses are added unless `lm_only`."""
        out = self.llm_output(batch, feats, rows)
        return out.lm_loss if lm_only else out.loss

    def target_tokens(self, targets: Sequence[str]) -> int:
        """Loss-bearing tokens of the targets (their ids plus eos, as `MultimodalLM` builds the labels)."""
        tok = self.frozen.mllm.tokenizer
        ids = tok(list(targets), add_special_tokens=False)["input_ids"] if targets else []
        return sum(len(x) + (tok.eos_token_id is not None) for x in ids)

    # --- persistence --------------------------------------------------------------------------------------------
    def shared_projectors(self) -> dict[str, tuple[Projector, list[str]]]:
        """Projectors shared by several adapters: name -> (the one instance, the modalities using it)."""
        out: dict[str, tuple[Projector, list[str]]] = {}
        for m, adapter in self.adapters.items():
            for key, ref in adapter.config.shared.items():
                out.setdefault(ref["name"], (getattr(adapter, HEAD_ATTRS[key]), []))[1].append(m)
        return out

    def save_adapters(self, directory: Any, *, is_main_process: bool = True) -> dict[str, str]:
        """`save_pretrained` every adapter into `directory/<modality>`; shared projectors once into
        `directory/_shared/<name>` (projectors/shared.py), referenced by each adapter that uses them."""
        if SHARED_DIR in self.adapters:
            raise ValueError(f"modality name {SHARED_DIR!r} is reserved for the shared projectors' folder")
        shared_saved = {name: save_shared_projector(Path(directory) / SHARED_DIR / name, name, proj, users)
                        for name, (proj, users) in self.shared_projectors().items()} if is_main_process else {}
        out = {}
        for m, adapter in self.adapters.items():
            path = Path(directory) / m
            adapter.save_pretrained(path, is_main_process=is_main_process, shared_saved=shared_saved)
            out[m] = str(path)
        return out


__all__ = ["AlignmentModel", "LLM_TASKS"]
