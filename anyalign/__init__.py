"""anyalign: adapter-based multimodal alignment (AnyMAL / OneLLM / ImageBind style).

Frozen encoders -> small trainable projectors -> a shared embedding space and a frozen LLM's input space.
"""

from .adapter import AdapterConfig, ModalityAdapter, build_adapter
from .encoders import Encoder, EncoderOutput, create_encoder, list_encoders
from .projectors import Projector, create_projector, list_projectors
from .version import __version__

__all__ = [
    "AdapterConfig",
    "Encoder",
    "EncoderOutput",
    "ModalityAdapter",
    "Projector",
    "__version__",
    "build_adapter",
    "create_encoder",
    "create_projector",
    "list_encoders",
    "list_projectors",
]
