"""anyalign: adapter-based multimodal alignment; public names are imported on first use (PEP 562)."""

from __future__ import annotations

from .lazy import lazy_exports
from .version import __version__

_LAZY = {
    "AdapterConfig": ".adapter", "ModalityAdapter": ".adapter", "build_adapter": ".adapter",
    "Embedder": ".embedder",
    "Encoder": ".encoders", "EncoderOutput": ".encoders", "create_encoder": ".encoders", "list_encoders": ".encoders",
    "EncoderSpec": ".encoders.spec",
    "Projector": ".projectors", "create_projector": ".projectors", "list_projectors": ".projectors",
}

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

__all__ = [*_LAZY, "__version__"]
