"""Package version and on-disk format version (bump FORMAT_VERSION when a saved layout changes)."""

__version__ = "0.1.0"
FORMAT_VERSION = 2  # 2: encoder as an EncoderSpec, the aligned-to space (anchors) and LLM recorded
