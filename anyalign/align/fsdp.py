"""FSDP2 (torch `fully_shard`) for the alignment model, on CPU (gloo) and GPUs, without accelerate's FSDP plugin
(which accelerate 1.x enables for GPU runs only).

Units: every decoder layer of the frozen LLM (frozen and LoRA weights together: FSDP2 shards per parameter) and the
`AlignmentModel` root, in whose module tree the LLM is registered (`fsdp_llm`: FSDP2 needs one root). Weights
outside the layers and scalar parameters (temperatures) stay replicated, their gradients averaged here. Every rank
must use every unit alike: ranks without LM rows run the LLM on one token (`idle_llm`, weight 0) and every trainable
root parameter joins the graph with weight 0. State is gathered to full tensors (`FSDPStateIO`), so checkpoints and
saved adapters have a DDP run's files and keys, and either kind of run resumes from the other's checkpoints.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

LLM_NAME = "fsdp_llm"
MODEL_FILE = "model.safetensors"  # accelerate's names, so DDP and FSDP checkpoints read the same
OPTIMIZER_FILE = "optimizer.bin"


def fsdp_requested(recipe: Any) -> bool:
    """`train.fsdp: true` or `accelerate launch --use_fsdp` (accelerate's ACCELERATE_USE_FSDP)."""
    return bool(getattr(recipe.train, "fsdp", False)) or \
        os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def _is_dtensor(t: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor on CPU (an all-gather for a DTensor: every rank must call it, in the same order)."""
    return (t.full_tensor() if _is_dtensor(t) else t).detach().cpu()


def saved_keys(state: dict[str, torch.Tensor]) -> list[str]:
    """The keys a DDP checkpoint holds: a tensor reachable under several names (a projector shared by several
    adapters) is kept under its first name only, as accelerate does (`clean_state_dict_for_safetensors`)."""
    from accelerate.utils import id_tensor_storage

    seen: set[Any] = set()
    keys = []
    for k, v in state.items():
        ident = id_tensor_storage(v)
        if ident not in seen:
            seen.add(ident)
            keys.append(k)
    return keys


def decoder_layers(llm: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a (peft-wrapped) Hugging Face causal LM: `_no_split_modules` classes, else the
    longest ModuleList."""
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    names = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in base.modules() if type(m).__name__ in names]
    if layers:
        return layers
    lists = [m for m in base.modules() if isinstance(m, nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


class FSDPState:
    """What the trainer needs of a sharded model: replicated-gradient averaging, clipping and full state dicts."""

    def __init__(self, model: nn.Module, mesh: Any, state_keys: list[str], replicated: list[nn.Parameter],
                 layers: int) -> None:
        self.model = model
        self.mesh = mesh
        self.state_keys = state_keys  # the keys of the unsharded model's state_dict, shared tensors once (as DDP)
        self.replicated = replicated  # trainable parameters FSDP does not manage (scalars)
        self.layers = layers
        params = dict(model.named_parameters())
        sharded = [p for p in params.values() if _is_dtensor(p)]
        self.record = {"units": layers + 1, "sharded_parameters": len(sharded),
                       "sharded_trainable": sum(p.requires_grad for p in sharded),
                       "sharded_lora": sum(_is_dtensor(p) for n, p in params.items() if n.startswith("lora.")),
                       "replicated_trainable": len(replicated), "world_size": dist.get_world_size()}

    # --- the step ----------------------------------------------------------------------------------------------
    def sync_replicated_grads(self) -> None:
        """Average the gradients of the replicated trainable parameters over ranks (DDP's job for them)."""
        if not self.replicated:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.replicated]
        flat = torch.cat([g.reshape(-1) for g in grads]).float()
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        i = 0
        for p, g in zip(self.replicated, grads):
            n = g.numel()
            p.grad = flat[i:i + n].view_as(g).to(g.dtype)
            i += n

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Total 2-norm of all gradients (sharded and replicated); scale them to `max_norm` when above it."""
        sharded, plain = [], []
        for p in self.model.parameters():
            if p.grad is not None:
                (sharded if _is_dtensor(p.grad) else plain).append(p.grad)
        dev = sharded[0].to_local().device if sharded else plain[0].device if plain else torch.device("cpu")
        sq = torch.zeros((), dtype=torch.float64, device=dev)
        for g in sharded:
            sq += g.to_local().double().pow(2).sum()
        dist.all_reduce(sq)
        for g in plain:  # identical on every rank: counted once
            sq += g.double().pow(2).sum()
        total = sq.sqrt().float()
        if math.isfinite(max_norm):
            coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
            for g in sharded:
                g.to_local().mul_(coef.to(g.dtype))
            for g in plain:
                g.mul_(coef.to(g.dtype))
        return total

    # --- state ----------------------------------------------------------------------------------------------
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The unsharded model's state_dict (same keys), gathered on every rank."""
        sd = self.model.state_dict()
        return {k: _full(sd[k]) for k in self.state_keys}

    def full_optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """`optimizer.state_dict()` with full tensors (torch's own format: states keyed by parameter index)."""
        sd = optimizer.state_dict()
        state = {i: {k: _full(v) if torch.is_tensor(v) else v for k, v in s.items()}
                 for i, s in sorted(sd["state"].items())}
        return {"state": state, "param_groups": sd["param_groups"]}

    def _like(self, full: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        if not _is_dtensor(ref):
            return full.to(device=ref.device, dtype=ref.dtype)
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(device=ref.to_local().device, dtype=ref.dtype), ref.device_mesh,
                                 ref.placements, src_data_rank=None)  # every rank holds it: slice, no collective

    def load_full_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        current = self.model.state_dict()
        missing = sorted(set(self.state_keys) - set(state))
        unexpected = sorted(set(state) - set(self.state_keys))
        if missing or unexpected:
            raise RuntimeError(f"checkpoint does not fit the model (missing {missing[:5]}, unexpected "
                               f"{unexpected[:5]})")
        with torch.no_grad():
            for k in self.state_keys:
                ref = current[k]
                value = self._like(state[k], ref)
                (ref.to_local() if _is_dtensor(ref) else ref).copy_(value.to_local() if _is_dtensor(value)
                                                                    else value)

    def load_full_optimizer_state(self, optimizer: torch.optim.Optimizer, sd: dict[str, Any]) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        state = {}
        for i, s in sd["state"].items():
            p = params[int(i)]
            state[i] = {k: self._like(v, p) if torch.is_tensor(v) and v.dim() > 0 else v for k, v in s.items()}
        # keep this optimizer's kernels: a DDP checkpoint says fused=True, which sharded parameters cannot use
        impl = ("foreach", "fused", "capturable", "differentiable")
        groups = [{**saved, **{k: live[k] for k in impl if k in live}}
                  for saved, live in zip(sd["param_groups"], optimizer.param_groups)]
        optimizer.load_state_dict({"state": state, "param_groups": groups})

    @contextlib.contextmanager
    def gathered(self, is_main: bool) -> Iterator[None]:
        """Within: on the main process the modules hold full (plain) copies of the sharded parameters that are
        saved (trainable ones and everything outside the LLM), so `save_pretrained` & co. write whole tensors.
        Collective: every rank enters it."""
        llm = getattr(self.model, LLM_NAME, None)
        in_llm = {id(p) for p in llm.parameters()} if llm is not None else set()
        swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
        for mod in self.model.modules():
            for name, p in list(mod._parameters.items()):
                if p is None or not _is_dtensor(p) or (id(p) in in_llm and not p.requires_grad):
                    continue
                full = p.full_tensor()
                if is_main:
                    mod._parameters[name] = nn.Parameter(full.detach(), requires_grad=p.requires_grad)
                    swapped.append((mod, name, p))
        try:
            yield
        finally:
            for mod, name, p in swapped:
                mod._parameters[name] = p


class FSDPStateIO:
    """The accelerator as `save_checkpoint` / `resume_run` use it, with the model and optimizer state gathered to
    full tensors (accelerate's files and names) instead of accelerate's per-rank view; scheduler and RNG via
    accelerate."""

    def __init__(self, accelerator: Any, fsdp: FSDPState, optimizer: Any) -> None:
        self._acc, self._fsdp, self._optimizer = accelerator, fsdp, optimizer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._acc, name)

    @contextlib.contextmanager
    def _without_optimizers(self) -> Iterator[None]:
        kept, self._acc._optimizers = self._acc._optimizers, []
        try:
            yield
        finally:
            self._acc._optimizers = kept

    def save_state(self, output_dir: str) -> None:
        """Model and optimizer gathered (main process writes), the rest through accelerate."""
        from safetensors.torch import save_file

        model_sd = {k: v.contiguous() for k, v in self._fsdp.full_state_dict().items()}
        optim_sd = self._fsdp.full_optimizer_state(self._optimizer)
        if self._acc.is_main_process:
            save_file(model_sd, str(Path(output_dir) / MODEL_FILE), metadata={"format": "pt"})
            torch.save(optim_sd, Path(output_dir) / OPTIMIZER_FILE)
        with self._without_optimizers():
            self._acc.save_state(output_dir)

    def load_state(self, input_dir: str) -> None:
        """The inverse of `save_state`: full tensors read, then sharded into the run."""
        from safetensors.torch import load_file

        with self._without_optimizers():
            self._acc.load_state(input_dir)
        self._fsdp.load_full_state_dict(load_file(str(Path(input_dir) / MODEL_FILE)))
        self._fsdp.load_full_optimizer_state(self._optimizer, torch.load(Path(input_dir) / OPTIMIZER_FILE,
                                                                         map_location="cpu", weights_only=True))


def shard_model(model: Any, device: torch.device) -> FSDPState:
    """Shard `model` (an AlignmentModel) in place with FSDP2 over all ranks of the default process group."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    state_keys = saved_keys(model.state_dict())
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    mllm = model.frozen.mllm
    layers: list[nn.Module] = []
    keep: set[nn.Parameter] = set()  # replicated: not managed by FSDP
    if mllm is not None:
        llm = mllm.llm
        lora_names = {key: next(n for n, q in llm.named_parameters() if q is p) for key, p in model.lora.items()}
        model.add_module(LLM_NAME, llm)  # one FSDP root: the LLM's units must be in the root's module tree
        layers = decoder_layers(llm)
        for layer in layers:
            fully_shard(layer, mesh=mesh)
        for key, name in lora_names.items():  # fully_shard replaced the LoRA parameters: register the new ones
            model.lora[key] = llm.get_parameter(name)
        in_layers = {id(p) for layer in layers for p in layer.parameters()}
        keep |= {p for p in llm.parameters() if id(p) not in in_layers}  # embeddings, norm, head (frozen)
        keep |= set(model.lora.values())  # managed by their layers' units
        model.idle_llm = _idle_llm(mllm)
    scalars = [p for p in model.parameters() if p.dim() == 0]
    keep |= set(scalars)
    fully_shard(model, mesh=mesh, ignored_params=keep)
    model.register_forward_hook(_touch_trainable)
    replicated = [p for p in scalars if p.requires_grad]
    return FSDPState(model, mesh, state_keys, replicated, len(layers))


def _idle_llm(mllm: Any) -> Any:
    def idle() -> torch.Tensor:
        """The LLM on one token, weighted 0: this rank has no rows of an LM task but runs its collectives."""
        ids = torch.full((1, 1), mllm.pad_id, dtype=torch.long, device=mllm.device)
        # input that needs a gradient, like the spliced media embeddings of a real batch: the first layer's unit
        # then reduce-scatters at the same point of the backward pass as on the other ranks
        embeds = mllm.embed_ids(ids).detach().requires_grad_(True)
        return mllm.llm(inputs_embeds=embeds, use_cache=False).logits.float().sum() * 0.0
    return idle


def _touch_trainable(module: nn.Module, args: Any, output: Any) -> Any:
    """Every trainable parameter of the root unit in the graph (weight 0), so every rank reduce-scatters the same
    gradients whatever its rows used. At this point the root's parameters are unsharded (plain tensors)."""
    if not isinstance(output, dict) or not output or not torch.is_grad_enabled():
        return output
    zero = sum(p.sum() * 0.0 for p in module.parameters() if p.requires_grad and not _is_dtensor(p))
    if not torch.is_tensor(zero):
        return output
    key = next(iter(output))
    return {**output, key: output[key] + zero.to(output[key].dtype)}


__all__ = ["FSDPState", "FSDPStateIO", "decoder_layers", "fsdp_requested", "saved_keys", "shard_model"]
