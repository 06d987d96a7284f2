"""`ModalityAdapter`: a frozen encoder (by reference) plus trainable projectors, saved like a peft adapter.

On disk a saved adapter is a folder with two files:
`anyalign_adapter.json` (the `AdapterConfig`: the frozen encoder's `EncoderSpec`, the projector heads, and the
space it was aligned to: the anchor encoders' specs, and the LLM for soft tokens) and
`anyalign_adapter.safetensors` (only the trainable weights: projectors, and the encoder only when it was
trained, e.g. an IMU encoder learned from scratch). The frozen encoder is rebuilt from its spec, never saved.
Like peft's `base_model_name_or_path`, the recorded space means downstream commands (search, classify) find
the other side of the space from the adapter itself. Format v1 files (encoder as name + source + kwargs, no
space) are upgraded when read.
"""

from .config import CONFIG_NAME, WEIGHTS_NAME, AdapterConfig, read_adapter_config, resolve_adapter, upgrade_config
from .model import HEAD_ATTRS, ModalityAdapter, build_adapter
from .portable import push_adapter_folder, stage_adapter

__all__ = ["AdapterConfig", "HEAD_ATTRS", "ModalityAdapter", "build_adapter", "push_adapter_folder",
           "read_adapter_config", "resolve_adapter", "stage_adapter", "upgrade_config", "CONFIG_NAME", "WEIGHTS_NAME"]
