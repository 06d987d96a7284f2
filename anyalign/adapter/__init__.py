"""`ModalityAdapter`: a frozen encoder (by reference) plus trainable projectors, saved like a peft adapter.

A saved adapter is `anyalign_adapter.json` (the `AdapterConfig`: encoder spec, heads, the space's anchors and LLM,
so search/classify find the other side from the adapter) and `anyalign_adapter.safetensors` (trainable weights
only; the frozen encoder is rebuilt from its spec). Format v1 files are upgraded when read.
"""

from .config import CONFIG_NAME, WEIGHTS_NAME, AdapterConfig, read_adapter_config, resolve_adapter, upgrade_config
from .model import HEAD_ATTRS, ModalityAdapter, build_adapter
from .portable import push_adapter_folder, stage_adapter

__all__ = ["AdapterConfig", "HEAD_ATTRS", "ModalityAdapter", "build_adapter", "push_adapter_folder",
           "read_adapter_config", "resolve_adapter", "stage_adapter", "upgrade_config", "CONFIG_NAME", "WEIGHTS_NAME"]
