"""`ZeroShotClassifier`: classify any input the shared space can embed against text labels.

Class embeddings follow open_clip's recipe: per class, embed every template-filled prompt, L2-normalise, average,
renormalise; stacked they form the `[E, C]` classifier. They are cached on disk, keyed by a hash of (text model
identity, labels, templates), so repeated runs skip the text tower. Inputs are embedded by `Embedder.encode`
(DataLoader workers, batches); a file that cannot be decoded or embedded is reported in its `Prediction.error`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..adapter import CONFIG_NAME
from ..embedder import Embedder, EmbeddingResult, input_name
from ..encoders.spec import EncoderSpec
from ..hubness import Hubness
from ..io import atomic_path, cache_dir
from .prompts import check_labels, check_templates, class_prompts, default_templates

logger = logging.getLogger(__name__)

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """`$ANYALIGN_CACHE/zeroshot`, else `~/.cache/anyalign/zeroshot`."""
    return cache_dir("zeroshot")


@dataclass
class Prediction:
    """Top-k classes of one input: `scores` (cosine, minus the calibration gamma for seen classes when the labels mix
    seen and unseen classes) and softmax `probs` of those scores (at the classifier's temperature)."""

    source: str
    labels: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"source": self.source, "error": self.error}
        return {"source": self.source, "predictions": [{"label": lab, "score": round(s, 6), "prob": round(p, 6)}
                                                        for lab, s, p in zip(self.labels, self.scores, self.probs)]}


class ZeroShotClassifier:
    """Query embedder + text embedder + class names (+ prompt templates) -> top-k labels per input.

    Args:
        query: embeds the inputs to classify (audio, image, video, IMU ...).
        text: embeds the prompts; must share the query's embedding space and width.
        labels: class names (validated: non-empty, no duplicates).
        templates: prompt ensemble with `{}` for the label; default: the query modality's ensemble.
        temperature: softmax temperature of `probs` (CLIP's learned value is 0.01).
        cache_dir: where class embeddings are cached (None: `default_cache_dir()`); `use_cache=False` skips it.
        seen: the classes the query side was trained on (names or their `label_text` phrases); with `calibration`
            (gamma), their scores are lowered by gamma whenever the labels also hold unseen classes (calibrated
            stacking, Chao et al. 2016), in every score, probability, top-1 and report.
        label_text: class name -> the phrase the prompts use (an adapter's training captions); default the name.
        calibration_source: where gamma comes from (recorded in `describe()`).
    """

    def __init__(self, query: Embedder, text: Embedder, labels: Sequence[str], templates: Sequence[str] | None = None,
                 *, temperature: float = 0.01, cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                 batch_size: int = 32, num_workers: int = 0, progress: bool | None = None,
                 seen: Sequence[str] | None = None, calibration: float | None = None,
                 label_text: dict[str, str] | None = None, calibration_source: Any = None) -> None:
        if text.modality != "text":
            raise ValueError(f"the label side must be a text encoder, got {text.name} ({text.modality})")
        if query.dim != text.dim:
            raise ValueError(f"{query.name} embeds into {query.dim} dims but {text.name} into {text.dim}: they do not "
                             f"share a space (pick the text encoder the adapter was trained against)")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.query, self.text = query, text
        self.labels = check_labels(labels)
        self.templates = check_templates(templates if templates else default_templates(query.modality,
                                                                                        query.spec.name))
        self.temperature = temperature
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.use_cache = use_cache
        self.batch_size, self.num_workers, self.progress = batch_size, num_workers, progress
        self.label_text = dict(label_text or {})
        self.seen = list(seen) if seen is not None else None
        self.calibration_gamma = calibration
        self.calibration_source = calibration_source
        self._weights: torch.Tensor | None = None
        self._embedded: tuple[list[str], EmbeddingResult] | None = None  # the last inputs embedded, and the result
        self.cache_hit = False
        self.hubness: tuple[Hubness, torch.Tensor] | None = None  # (correction, bank query embeddings [B, E])

    # --- seen classes and calibration -----------------------------------------------------------------------
    def prompt_label(self, label: str) -> str:
        """The phrase a label's prompts use: its `label_text` phrase, else the label itself."""
        return self.label_text.get(label, label)

    def is_seen(self, label: str) -> bool:
        """Whether a label is a class the query side was trained on (by name or by its phrase)."""
        seen = set(self.seen or ())
        return label in seen or self.prompt_label(label) in seen

    @property
    def seen_labels(self) -> list[str] | None:
        """The labels that are seen classes (None when the seen classes are unknown)."""
        return None if self.seen is None else [lab for lab in self.labels if self.is_seen(lab)]

    @property
    def calibration(self) -> float:
        """The gamma applied to these labels: the given one when they mix seen and unseen classes, else 0."""
        seen = self.seen_labels
        if not self.calibration_gamma or not seen or len(seen) == len(self.labels):
            return 0.0
        return float(self.calibration_gamma)

    def calibration_info(self) -> dict[str, Any]:
        """What calibration these scores carry and why: gamma applied, the seen labels, where gamma was tuned."""
        seen = self.seen_labels
        if self.seen is None:
            status = "none: the classes this model was trained on are unknown (raw cosine scores)"
        elif not seen:
            status = "none: no label is a seen class"
        elif len(seen) == len(self.labels):
            status = "none needed: every label is a seen class (closed set)"
        elif not self.calibration_gamma:
            status = "off" if self.calibration_gamma == 0.0 else "none recorded: uncalibrated scores"
        else:
            status = "applied: seen classes' scores lowered by gamma"
        return {"gamma": self.calibration, "status": status, "seen_labels": seen,
                "unseen_labels": None if seen is None else [lab for lab in self.labels if lab not in seen],
                "source": self.calibration_source}

    # --- constructors ---------------------------------------------------------------------------------------
    @classmethod
    def from_specs(cls, query: EncoderSpec | str, labels: Sequence[str], templates: Sequence[str] | None = None, *,
                   text: EncoderSpec | str | None = None, device: str | None = None,
                   **options: Any) -> ZeroShotClassifier:
        """A registered encoder's space (e.g. clap-audio, clip-image, video): the text side is `text`, default the
        partner the family names (CLAP/CLIP's text tower of the same weights)."""
        query = EncoderSpec.from_dict(query).checked("query encoder")
        text_spec = _text_spec(text, query.partner("text"), query.name)
        return cls(Embedder.from_encoder(query, device=device), _text_embedder(text_spec, device), labels,
                   templates, **options)

    @classmethod
    def from_clap(cls, labels: Sequence[str], templates: Sequence[str] | None = None, *, pretrained: str | None = None,
                  autocast: str | None = None, **options: Any) -> ZeroShotClassifier:
        """CLAP zero-shot audio classification: its audio and text towers, one checkpoint."""
        return cls.from_specs(EncoderSpec("clap-audio", pretrained, autocast=autocast), labels, templates, **options)

    @classmethod
    def from_adapter(cls, adapter_dir: str | os.PathLike, labels: Sequence[str],
                     templates: Sequence[str] | None = None, *, text: EncoderSpec | str | None = None,
                     encoder_pretrained: str | None = None, device: str | None = None, autocast: str | None = None,
                     **options: Any) -> ZeroShotClassifier:
        """A trained adapter's shared-space embeddings against its text anchor (ImageBind-style emergent zero-shot).

        The text side is the anchor the adapter records (`AdapterConfig.space["text"]`); `text` (a spec, encoder
        name or text adapter folder) overrides it, e.g. for adapters saved before format v2.
        """
        query = Embedder.from_adapter(adapter_dir, encoder_pretrained=encoder_pretrained, device=device,
                                      autocast=autocast)
        recorded = query.adapter.config.space.get("text") if query.adapter is not None else None
        if text is None and recorded is None:
            raise ValueError(f"{adapter_dir}: no text anchor recorded in this adapter (saved before format v2, or "
                             f"trained without a text anchor); pass --text-encoder NAME [--text-pretrained PATH]")
        given = {k: v for k, v in options.items() if v is not None}
        if "calibration" in given and "calibration_source" not in given:  # an override is not the recorded tuning
            given["calibration_source"] = {"tuned_on": "given by the caller (not the adapter's recorded gamma)"} \
                if given["calibration"] else None
        options = {**adapter_zeroshot_options(adapter_dir), **given}
        return cls(query, _text_embedder(_text_spec(text, recorded, str(adapter_dir)), device), labels, templates,
                   **options)

    def with_labels(self, labels: Sequence[str], templates: Sequence[str] | None = None) -> ZeroShotClassifier:
        """The same models with other labels (and templates; default: these)."""
        return ZeroShotClassifier(self.query, self.text, labels, templates or self.templates,
                                  temperature=self.temperature, cache_dir=self.cache_dir, use_cache=self.use_cache,
                                  batch_size=self.batch_size, num_workers=self.num_workers, progress=self.progress,
                                  seen=self.seen, calibration=self.calibration_gamma, label_text=self.label_text,
                                  calibration_source=self.calibration_source)

    # --- class embeddings -----------------------------------------------------------------------------------
    def cache_key(self) -> str | None:
        """Hash of (text model identity, labels, templates); None when the text weights cannot be identified."""
        if self.text.model_id is None:
            return None
        blob = json.dumps({"v": CACHE_VERSION, "text": self.text.model_id,
                           "labels": [self.prompt_label(lab) for lab in self.labels], "templates": self.templates},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    @property
    def weights(self) -> torch.Tensor:
        """The classifier `[E, C]`: one normalised, template-averaged text embedding per class (column)."""
        if self._weights is None:
            self._weights = self._class_embeddings().t().contiguous()
        return self._weights

    def _class_embeddings(self) -> torch.Tensor:
        key = self.cache_key() if self.use_cache else None
        path = self.cache_dir / f"{key}.safetensors" if key else None
        if path is not None and path.is_file():
            try:
                cached = load_file(str(path))["class_embeddings"]
                if cached.shape == (len(self.labels), self.text.dim):
                    self.cache_hit = True
                    logger.info("class embeddings from cache %s", path)
                    return cached.float()
            except Exception as e:  # noqa: BLE001 - a damaged cache entry is recomputed, not fatal
                logger.warning("%s: unreadable cache entry (%s); recomputing", path, e)
        prompts = class_prompts([self.prompt_label(lab) for lab in self.labels], self.templates)  # [C][K]
        flat = [p for ps in prompts for p in ps]
        emb = torch.from_numpy(self.text.embed(flat, batch_size=max(self.batch_size, 64)))  # [C*K, E], normalised
        per_class = emb.view(len(self.labels), len(self.templates), -1).mean(1)  # [C, E]
        class_emb = torch.nn.functional.normalize(per_class, dim=-1)
        if path is not None:
            meta = {"text": self.text.model_id or "", "labels": json.dumps(self.labels),
                    "templates": json.dumps(self.templates)}
            try:
                with atomic_path(path) as tmp:
                    save_file({"class_embeddings": class_emb.contiguous()}, str(tmp), metadata=meta)
            except OSError as e:  # a read-only or full cache folder only costs the recomputation next time
                logger.warning("cannot cache class embeddings in %s (%s)", path.parent, e)
        return class_emb

    # --- inputs ---------------------------------------------------------------------------------------------
    def check_inputs(self, inputs: Sequence[Any]) -> None:
        """Raise a clear error when a file is not of the query modality (by suffix)."""
        exts = self.query.extensions
        if not exts:
            return
        bad = [str(x) for x in inputs if isinstance(x, (str, os.PathLike)) and not self.query.accepts_file(x)]
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise ValueError(f"{bad[0]}{more}: {self.query.name} classifies {self.query.modality} files "
                             f"({' '.join(exts)}); this file is not one of them")

    def embed(self, inputs: Sequence[Any], *, batch_size: int | None = None, num_workers: int | None = None,
              progress: bool | None = None, desc: str = "embed") -> EmbeddingResult:
        """Embed inputs in batches (windows pooled); failures are collected, not raised. A words-head query
        embeds against this classifier's labels (`constrain_query`). The same inputs again (a report, then its
        protocols) reuse the last result."""
        key = [str(x) for x in inputs]
        if self._embedded is None or self._embedded[0] != key:
            self.constrain_query()
            workers = self.num_workers if num_workers is None else num_workers
            progress = self.progress if progress is None else progress
            self._embedded = (key, self.query.encode(inputs, batch_size=batch_size or self.batch_size,
                                                     num_workers=workers, progress=progress, desc=desc))
        return self._embedded[1]

    # --- classification -------------------------------------------------------------------------------------
    def constrain_query(self) -> bool:
        """Give a query words head (`projectors/ctc.py`) the labels' phrases as its lexicon, so a clip embeds as the
        class it most likely says (CTC scores), not as a free transcript; True when the query has such a head."""
        head = getattr(getattr(self.query, "adapter", None), "embed_head", None)
        if not hasattr(head, "constrain"):
            return False
        prompts = class_prompts([self.prompt_label(lab) for lab in self.labels], self.templates[:1])
        head.constrain([ps[0] for ps in prompts])
        return True

    def raw_scores(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each embedding `[N, E]` to each class: `[N, C]` (no calibration), hubness-corrected
        when `self.hubness` = (an `anyalign.hubness.Hubness`, reference query embeddings `[B, E]`) is set."""
        sim = embeddings.float() @ self.weights.to(embeddings.device)
        if self.hubness is not None:
            hub, bank = self.hubness
            bank_sim = (bank.float() @ self.weights.to(bank.device)).cpu().numpy()
            sim = torch.from_numpy(hub.apply(sim.cpu().numpy(), bank_sim)).to(sim.device)
        return sim

    def offsets(self) -> torch.Tensor:
        """`[C]`: what calibration subtracts from each class's score (gamma for seen classes, else 0)."""
        gamma = self.calibration
        return torch.tensor([gamma if gamma and self.is_seen(lab) else 0.0 for lab in self.labels])

    def scores(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The scores every prediction uses: cosine `[N, C]` minus the calibration offsets."""
        raw = self.raw_scores(embeddings)
        return raw - self.offsets().to(raw.device) if self.calibration else raw

    def predict(self, scores: torch.Tensor, sources: Sequence[str], top_k: int) -> list[Prediction]:
        k = max(1, min(top_k, len(self.labels)))
        probs = torch.softmax(scores / self.temperature, dim=-1)
        top = scores.topk(k, dim=-1)
        out = []
        for row, src in enumerate(sources):
            ids = top.indices[row].tolist()
            out.append(Prediction(src, [self.labels[c] for c in ids], top.values[row].tolist(),
                                  probs[row, ids].tolist()))
        return out

    def classify(self, inputs: Sequence[Any], top_k: int = 5, **embed_options: Any) -> list[Prediction]:
        """Top-k labels per input, in input order; undecodable inputs come back with `error` set."""
        inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
        self.check_inputs(inputs)
        _ = self.weights  # text side first: a label problem fails before any audio is decoded
        res = self.embed(inputs, **embed_options)
        names = [input_name(x, i) for i, x in enumerate(inputs)]
        ok = self.predict(self.scores(res.embeddings), [names[i] for i in res.index], top_k)
        preds = dict(zip(res.index, ok))
        for i, err in res.errors.items():
            preds[i] = Prediction(names[i], error=err)
        return [preds[i] for i in range(len(inputs))]

    def describe(self) -> dict[str, Any]:
        return {"query": self.query.describe(), "text": self.text.describe(), "labels": self.labels,
                "prompt_labels": [self.prompt_label(lab) for lab in self.labels], "templates": self.templates,
                "temperature": self.temperature, "calibration": self.calibration_info()}


def adapter_zeroshot_options(adapter_dir: str | os.PathLike) -> dict[str, Any]:
    """Classifier options an adapter records (`AdapterConfig.zeroshot`, else its run's recipe): seen classes,
    label_text, calibration gamma and where it was tuned."""
    from .protocols import recorded_zeroshot

    rec = recorded_zeroshot(adapter_dir)
    if not rec:
        return {}
    return {"seen": rec.get("seen_classes"), "label_text": rec.get("label_text") or {},
            "calibration": rec.get("calibration"), "calibration_source": rec.get("calibration_source")}


def _text_spec(given: EncoderSpec | str | None, default: EncoderSpec | None, owner: str) -> EncoderSpec | Path:
    """The text side: `given` (a spec, a registered name, or a text adapter folder), else `default`."""
    if isinstance(given, (str, os.PathLike)) and (Path(given).expanduser() / CONFIG_NAME).is_file():
        return Path(given).expanduser()
    if given is not None:
        return EncoderSpec.from_dict(given).checked("text encoder")
    if default is None:
        raise ValueError(f"{owner}: names no text side of its space; pass --text-encoder NAME")
    return default


def _text_embedder(text: EncoderSpec | Path, device: str | None) -> Embedder:
    emb = Embedder.from_adapter(text, device=device) if isinstance(text, Path) else \
        Embedder.from_encoder(text, device=device)
    if emb.modality != "text":
        raise ValueError(f"text encoder {emb.name!r} embeds {emb.modality!r}, expected a text encoder "
                         f"(e.g. 'text', 'clap-text', 'clip-text' or a text adapter folder)")
    return emb


__all__ = ["Prediction", "ZeroShotClassifier", "default_cache_dir"]
