"""A words head: frame features -> characters (CTC), embedded by the space's frozen text encoder.

Why: a pooled contrastive projector learns its training sentences, not words (issue 22: R@1 0.14 on new sentences);
a CTC character head is local in time, so it spells sentences it never heard, and the text encoder's embedding of
what it heard lands where the space's text side puts that text. Trained by the `ctc` task (`align/ctc.py`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Projector, ProjectorOutput, full_mask, pool_tokens, register_projector
from .spelling import WordSpeller, normalize_text

BLANK = 0  # CTC blank is class 0; the alphabet's characters are classes 1..len(alphabet)


@dataclass
class CTCOptions:
    """Options of the "ctc" projector."""

    alphabet: str = field(default=" 'abcdefghijklmnopqrstuvwxyz", metadata={
        "help": "the characters the head writes (text is lower-cased, accents and other characters dropped)"})
    hidden_dim: int = field(default=256, metadata={"help": "width of the two temporal convolutions"})
    kernel: int = field(default=3, metadata={"help": "temporal kernel size of the convolutions (frames)"})
    stride: int = field(default=2, metadata={"help": "frames averaged per output step (Whisper 50 Hz / 2 = 25 Hz)"})
    dropout: float = field(default=0.15, metadata={"help": "dropout on the input and hidden activations"})
    vocabulary: str | None = field(default=None, metadata={
        "help": "a word list file (one word per line, optionally followed by its count, e.g. /usr/share/dict/words): "
                "free transcripts are spelled with its words, each heard word replaced by the list word within edit "
                "distance 2 that the CTC scores and the counts find most likely; None = the greedy letters"})
    text_encoder: dict[str, Any] | None = field(default=None, metadata={
        "help": "the frozen text encoder that embeds transcripts (an encoder spec); None = the adapter's space "
                "text side (AdapterConfig.space['text'])"})

    def __post_init__(self) -> None:
        if len(set(self.alphabet)) != len(self.alphabet) or not self.alphabet:
            raise ValueError(f"ctc projector: alphabet must be distinct characters, got {self.alphabet!r}")
        if self.stride < 1 or self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"ctc projector: stride >= 1 and an odd kernel expected, got {self.stride}, "
                             f"{self.kernel}")


@register_projector("ctc", options=CTCOptions)
class CTCProjector(Projector):
    """A CTC character head (Graves et al., 2006): two temporal convolutions over pooled frames -> letters.

    The shared-space output is the text encoder's embedding of the greedy transcript (one token `[B, 1, E]`); it is
    not differentiable: the head learns through `ctc_loss` (the `ctc` task), never through a contrastive loss.
    """

    differentiable = False

    def __init__(self, in_dim: int, out_dim: int, opts: CTCOptions | None = None, **options: Any) -> None:
        super().__init__(in_dim, out_dim, opts, **options)
        o = self.opts
        self.alphabet, self.stride = o.alphabet, o.stride
        self.norm = nn.LayerNorm(in_dim)
        self.conv1 = nn.Conv1d(in_dim, o.hidden_dim, o.kernel, padding=o.kernel // 2)
        self.conv2 = nn.Conv1d(o.hidden_dim, o.hidden_dim, o.kernel, padding=o.kernel // 2)
        self.drop = nn.Dropout(o.dropout)
        self.out = nn.Linear(o.hidden_dim, len(o.alphabet) + 1)
        self._tower: list[Any] = []  # the frozen text encoder, built on first use; a list keeps it out of the state
        self._speller: WordSpeller | None = None  # the `vocabulary` word list, read on first use
        self.lexicon: list[str] | None = None  # candidate texts the output is constrained to (`constrain`)
        self._lexicon_emb: torch.Tensor | None = None
        self.lexicon_temperature = 0.05

    # --- the space's text side ---------------------------------------------------------------------------------
    def bind_space(self, space: Mapping[str, Any]) -> None:
        """Use the adapter's text anchor to embed transcripts when no `text_encoder` option is given."""
        if self.config.get("text_encoder") is None and "text" in space:
            spec = space["text"]
            self.config["text_encoder"] = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)

    def _text_encoder(self) -> Any:
        if not self._tower:
            from ..encoders.spec import EncoderSpec

            spec = self.config.get("text_encoder")
            if spec is None:
                raise ValueError("ctc projector: no text encoder to embed transcripts; set its text_encoder option "
                                 "or align the adapter to a text anchor")
            self._tower.append(EncoderSpec.from_dict(spec, source="ctc.text_encoder").build(frozen=True))
        return self._tower[0]

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text-encoder embeddings `[N, E]` of `texts` (the space's text side)."""
        with torch.no_grad():
            out = self._text_encoder()(list(texts))
        if out.pooled.shape[-1] != self.out_dim:
            raise ValueError(f"ctc projector: its text encoder embeds into {out.pooled.shape[-1]} dims but the head "
                             f"was built for {self.out_dim} (embed_dim); use the space's width")
        return F.normalize(out.pooled.float(), dim=-1)

    # --- characters --------------------------------------------------------------------------------------------
    def log_probs(self, tokens: torch.Tensor, mask: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-step log-probabilities `[B, S, 1 + len(alphabet)]` (class 0 = blank) and valid lengths `[B]`."""
        mask = full_mask(tokens, mask)
        x = self.drop(self.norm(tokens.float())) * mask.unsqueeze(-1)
        x, mask = pool_tokens(x, mask, self.stride)
        h = F.gelu(self.conv1(x.transpose(1, 2))) * mask[:, None, :].to(x.dtype)  # padding stays zero for conv2
        h = F.gelu(self.conv2(self.drop(h))) + h  # [B, H, S]
        logits = self.out(self.drop(h.transpose(1, 2)))
        return logits.log_softmax(-1), mask.sum(1)

    def targets(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenated character ids of `texts` and their lengths (an empty text becomes one space)."""
        ids = [[self.alphabet.index(c) + 1 for c in (normalize_text(t, self.alphabet) or " ")] for t in texts]
        return torch.tensor([i for seq in ids for i in seq], dtype=torch.long), torch.tensor([len(s) for s in ids])

    def ctc_loss(self, tokens: torch.Tensor, mask: torch.Tensor | None, texts: Sequence[str]) -> torch.Tensor:
        """Mean CTC loss per target character of `texts` given the frames (the `ctc` task's objective)."""
        lp, lengths = self.log_probs(tokens, mask)
        tg, tl = self.targets(texts)
        loss = F.ctc_loss(lp.transpose(0, 1), tg.to(lp.device), lengths, tl, blank=BLANK, reduction="sum",
                          zero_infinity=True)
        return loss / tl.sum().clamp_min(1).to(loss.device)

    def decode(self, lp: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        """Greedy CTC decoding: best class per step, repeats merged, blanks dropped."""
        best = lp.argmax(-1).tolist()
        out = []
        for row, n in zip(best, lengths.tolist()):
            chars, prev = [], BLANK
            for c in row[:n]:
                if c != prev and c != BLANK:
                    chars.append(self.alphabet[c - 1])
                prev = c
            out.append(re.sub(r"\s+", " ", "".join(chars)).strip())
        return out

    @torch.no_grad()
    def transcribe(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> list[str]:
        """The transcript of each clip: greedy letters, spelled with the `vocabulary` words when one is set."""
        lp, lengths = self.log_probs(tokens, mask)
        heard = self.decode(lp, lengths)
        if self.opts.vocabulary is None:
            return heard
        if self._speller is None:
            self._speller = WordSpeller.from_file(self.opts.vocabulary, self.alphabet)
        return [self._speller.spell(heard[b], lambda texts, b=b: self._log_likelihood(lp[b], int(lengths[b]), texts))
                for b in range(len(heard))]

    def _log_likelihood(self, lp: torch.Tensor, n: int, texts: Sequence[str]) -> torch.Tensor:
        """`[K]` CTC log-likelihood of each text given one clip's first `n` steps of log-probabilities `lp`."""
        tg, tl = self.targets(texts)
        k = len(texts)
        nll = F.ctc_loss(lp[:n, None, :].expand(n, k, lp.shape[-1]), tg.to(lp.device),
                         torch.full((k,), n, dtype=torch.long), tl, blank=BLANK, reduction="none", zero_infinity=False)
        return -nll.cpu()

    @torch.no_grad()
    def score(self, tokens: torch.Tensor, mask: torch.Tensor | None, texts: Sequence[str]) -> torch.Tensor:
        """`[B, K]` log-likelihood per character of each candidate text given each clip (higher = more likely);
        a candidate longer than a clip allows gets -inf."""
        lp, lengths = self.log_probs(tokens, mask)
        per_char = self.targets(texts)[1]
        out = torch.stack([self._log_likelihood(lp[b], int(lengths[b]), texts) / per_char
                           for b in range(lp.shape[0])])
        return out.nan_to_num(nan=float("-inf"), posinf=float("-inf"))

    # --- the shared-space output -------------------------------------------------------------------------------
    def constrain(self, texts: Sequence[str] | None, temperature: float = 0.05) -> None:
        """Constrain the output to a lexicon (zero-shot labels, a retrieval gallery): a clip's embedding becomes the
        mixture of the candidates' text embeddings weighted by softmax(CTC score / `temperature`), so the nearest
        candidate is the one the head finds most likely to have been said; None goes back to free transcripts."""
        lexicon = list(texts) if texts is not None else None
        if lexicon != self.lexicon:  # the classifier re-states its labels on every embed call: embed them once
            self._lexicon_emb = self.embed_texts(lexicon) if lexicon else None
        self.lexicon, self.lexicon_temperature = lexicon, float(temperature)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None, *,
                modality: str | None = None) -> ProjectorOutput:
        if self.training and torch.is_grad_enabled():
            raise RuntimeError("ctc projector: its shared-space output is a text embedding of the transcript, not "
                               "differentiable; train it with the 'ctc' task (data.<source>.task: ctc)")
        if self.lexicon:
            weights = torch.softmax(self.score(tokens, mask, self.lexicon) / self.lexicon_temperature, dim=-1)
            emb = F.normalize(weights.nan_to_num(0.0) @ self._lexicon_emb, dim=-1).to(tokens.device)
        else:
            emb = self.embed_texts(self.transcribe(tokens, mask)).to(tokens.device)
        return ProjectorOutput(emb[:, None, :], torch.ones(emb.shape[0], 1, dtype=torch.bool, device=tokens.device))
