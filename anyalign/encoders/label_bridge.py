"""Label bridging ("label-bridge"): a classifier's inputs in a text encoder's space through its class names.

An input's embedding is `normalize(softmax(logits / T)[top-k] @ E_text)` over the class-name embeddings: no paired data
needed (e.g. EfficientNet-Lite0 gives text -> image retrieval), but only what the label set names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .base import Encoder, EncoderOutput
from .registry import register_encoder
from .spec import create_encoder


class LabelBridgeEncoder(Encoder):
    """A classifier encoder (tokens kept) whose pooled output is its label distribution mapped to text space."""

    @classmethod
    def partner_spec(cls, spec: Any, modality: str) -> Any:
        """The text encoder the class names were embedded with defines this space."""
        if modality != "text":
            return None
        return type(spec)(spec.options.get("text_encoder", "text"), spec.options.get("text_pretrained"))

    def __init__(self, classifier: Encoder, head: torch.nn.Module, class_embeddings: torch.Tensor, *,
                 temperature: float = 1.0, top_k: int = 5) -> None:
        super().__init__()
        self.classifier = classifier
        self.head = head
        self.modality = classifier.modality  # type: ignore[misc]
        self.extensions = classifier.extensions  # type: ignore[misc]
        self.input_spec = classifier.input_spec  # type: ignore[misc]
        self.register_buffer("class_embeddings", class_embeddings.float())  # [C, E]
        self.temperature, self.top_k = temperature, top_k
        self.token_dim = classifier.token_dim
        self.pooled_dim = int(class_embeddings.shape[1])

    def load(self, item: Any) -> Any:
        return self.classifier.load(item)

    def collate(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        return self.classifier.collate(items)

    def encode(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        out = self.classifier.encode(batch)
        probs = torch.softmax(self.head(out.pooled).float() / self.temperature, dim=-1)  # [B, C] over the classes
        if 0 < self.top_k < probs.shape[1]:
            top = probs.topk(self.top_k, dim=-1)
            probs = torch.zeros_like(probs).scatter_(1, top.indices, top.values)
        pooled = F.normalize(probs @ self.class_embeddings, dim=-1)  # [B, E]
        return EncoderOutput(out.tokens, out.mask, pooled)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class descriptions in index order (from timm's bundled metadata)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]


@dataclass
class LabelBridgeOptions:
    """Options of the "label-bridge" encoder (`pretrained` are the classifier's weights)."""

    classifier: str = field(default="timm-image", metadata={"help": "registered classifier encoder"})
    classifier_kwargs: dict[str, Any] | None = field(default=None, metadata={"help": "the classifier's options"})
    text_encoder: str = field(default="text", metadata={"help": "registered text encoder for the class names"})
    text_pretrained: str | None = field(default=None, metadata={"help": "the text encoder's weights"})
    labels: list[str] | str = field(default="imagenet", metadata={
        "help": "class names in the classifier's order, or 'imagenet' for ImageNet-1k"})
    template: str = field(default="a photo of a {}.", metadata={"help": "prompt around each class name"})
    temperature: float = field(default=1.0, metadata={"help": "softmax temperature of the class logits"})
    top_k: int = field(default=5, metadata={"help": "keep the k most likely classes (0 = all)"})


@register_encoder("label-bridge", modality="image", token_dim=1280, pooled_dim=384,
                  input_spec="image file, PIL image or array (classified, then mapped to text space)",
                  default_model="timm efficientnet_lite0 + all-MiniLM-L6-v2", options=LabelBridgeOptions)
def label_bridge_encoder(pretrained: str | None, opts: LabelBridgeOptions) -> LabelBridgeEncoder:
    """`pretrained` are the classifier's weights; `labels` its class names in order ("imagenet" for ImageNet-1k)."""
    clf = create_encoder(opts.classifier, pretrained=pretrained, **(opts.classifier_kwargs or {}))
    model = getattr(clf, "model", None)
    if model is None or not hasattr(model, "get_classifier"):
        raise ValueError(f"label-bridge: classifier {opts.classifier!r} exposes no classification head")
    head = model.get_classifier()
    names = imagenet_class_names() if opts.labels == "imagenet" else list(opts.labels)
    if getattr(head, "out_features", len(names)) != len(names):
        raise ValueError(f"label-bridge: the classifier has {head.out_features} classes but {len(names)} labels "
                         f"were given")
    text = create_encoder(opts.text_encoder, pretrained=opts.text_pretrained)
    with torch.inference_mode():
        prompts = [opts.template.format(n) for n in names]
        emb = torch.cat([text(prompts[i : i + 256]).pooled for i in range(0, len(prompts), 256)])
    return LabelBridgeEncoder(clf, head, F.normalize(emb, dim=-1), temperature=opts.temperature, top_k=opts.top_k)
