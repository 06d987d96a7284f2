"""Frozen modality encoders: one interface, a registry, and one file per family."""

from .base import Encoder, EncoderOutput, InputError, masked_mean, pad_sequences
from .registry import ENCODERS, EncoderInfo, encoder_info, list_encoders, register_encoder
from .spec import create_encoder

__all__ = [
    "ENCODERS",
    "Encoder",
    "EncoderInfo",
    "EncoderOutput",
    "InputError",
    "create_encoder",
    "encoder_info",
    "list_encoders",
    "masked_mean",
    "pad_sequences",
    "register_encoder",
]
