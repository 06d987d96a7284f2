"""A tiny randomly initialised CLAP (the real transformers classes) saved like a hub checkpoint, for tests.

`make_tiny_clap(path)` writes model + feature extractor + tokenizer with `save_pretrained`, so
`create_encoder("clap-audio" | "clap-text", pretrained=str(path))` loads it exactly like `laion/clap-htsat-unfused`.
The tokenizer is a byte-level BPE trained offline on a few sentences and wrapped as a RobertaTokenizer (CLAP's).
The extractor keeps CLAP's 48 kHz / 10 s clip but uses a coarse hop so the 10 s spectrogram (251 frames x 16 mels)
fits the tiny HTSAT's 64x64 input (spec_size 64, 4x frequency folding).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer

SENTENCES = [
    "the sound of a dog barking", "rain falling on a roof", "a siren in the city street", "a bell ringing",
    "a phone ringing for an incoming call", "a clock alarm", "a camera shutter", "someone is speaking",
    "this is a sound of birds chirping", "an engine idling", "music playing loudly", "water dripping",
]


def make_tiny_tokenizer(vocab_size: int = 320) -> RobertaTokenizer:
    """Byte-level BPE with RoBERTa's special tokens (<s>=0, <pad>=1, </s>=2) and its `<s> ... </s>` template."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(SENTENCES, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return RobertaTokenizer(tokenizer_object=tok, model_max_length=77)


def tiny_clap_config(vocab_size: int, *, fusion: bool = False) -> ClapConfig:
    text = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=80)
    audio = dict(num_mel_bins=16, spec_size=64, window_size=4, patch_size=4, patch_stride=(4, 4), hidden_size=16,
                 patch_embeds_hidden_size=8, depths=(1, 1), num_attention_heads=(2, 2), num_classes=10,
                 num_hidden_layers=2, enable_fusion=fusion, fusion_type="aff_2d" if fusion else None)
    return ClapConfig(text_config=text, audio_config=audio, projection_dim=24)


def make_tiny_clap(path: Path, *, seed: int = 0, fusion: bool = False) -> Path:
    """Build a tiny random CLAP and save it (model + feature extractor + tokenizer) into `path`; returns `path`."""
    path = Path(path)
    tokenizer = make_tiny_tokenizer()
    torch.manual_seed(seed)
    model = ClapModel(tiny_clap_config(len(tokenizer), fusion=fusion)).eval()
    extractor = ClapFeatureExtractor(feature_size=16, sampling_rate=48_000, hop_length=1920, max_length_s=10,
                                     fft_window_size=2048, truncation="fusion" if fusion else "rand_trunc")
    model.save_pretrained(path)
    ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(path)
    return path
