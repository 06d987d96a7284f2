"""Knowledge distillation from text to speech (Ultravox's recipe): the frozen LLM answering the transcript as text
teaches the same LLM answering the speech.

The teacher prompt is the student's (`<audio>\\nWhat was said?`) with the placeholder replaced by the transcript; both
see the same response tokens and the loss is `T^2 KL(p_teacher/T || p_student/T)` per response token. Only the adapter
(and LoRA) learns, so what the LLM does with text carries over to speech without labels for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..encoders import EncoderOutput
from .data import Batch
from .tasks import AlignmentModel, LossTerms, Task, register_task

DEFAULT_DISTILL_PROMPT = "<{modality}>\nWhat was said?"


def teacher_prompt(prompt: str, transcript: str, modalities: Sequence[str]) -> str:
    """`prompt` with every `<modality>` placeholder replaced by the transcript (the text the media says)."""
    from ..language_model import placeholder_pattern

    return placeholder_pattern(modalities).sub(lambda _: transcript, prompt)


def response_logits(mllm: Any, prompts: Sequence[str], targets: Sequence[str],
                    features: Mapping[str, EncoderOutput] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Logits `[N, V]` predicting each response token of every row (rows in order), and adapter aux losses."""
    prep = mllm.prepare(list(prompts), list(targets), features=dict(features or {}))
    lay = prep.layout
    out = mllm.llm(inputs_embeds=prep.embeds, attention_mask=lay.attention_mask, position_ids=lay.position_ids,
                   use_cache=False)
    picked = lay.labels[:, 1:] != -100  # position t predicts token t + 1
    return out.logits[:, :-1][picked], prep.aux_losses  # [N, V]


def distill_loss(mllm: Any, prompts: Sequence[str], transcripts: Sequence[str], features: Mapping[str, EncoderOutput],
                 *, targets: Sequence[str] | None = None, temperature: float = 1.0) -> tuple[torch.Tensor, dict]:
    """KL(teacher || student) per response token, mean over tokens (x T^2); the teacher reads `transcripts`."""
    targets = list(targets) if targets is not None else list(transcripts)
    text = [teacher_prompt(p, t, mllm.adapters.keys()) for p, t in zip(prompts, transcripts)]
    with torch.no_grad():
        teacher, _ = response_logits(mllm, text, targets)
    student, aux = response_logits(mllm, prompts, targets, features)
    if teacher.shape != student.shape:  # the targets are tokenized on their own, so this is a bug, not bad data
        raise RuntimeError(f"distill: teacher and student see {teacher.shape[0]} and {student.shape[0]} response "
                           "tokens")
    t = float(temperature)
    kl = F.kl_div(F.log_softmax(student.float() / t, -1), F.log_softmax(teacher.float() / t, -1), log_target=True,
                  reduction="batchmean")
    return kl * t * t, aux


@register_task("distill")
class DistillTask(Task):
    """Text-to-speech knowledge distillation (Ultravox, Fixie.ai 2024): KL from the LLM on the transcript to the LLM
    on the media, over the response tokens.

    Rows are this task's rows with a caption (the transcript); their prompt is the row's own (caption/instruct data)
    or `prompt` (default `<{modality}>\\nWhat was said?`), their response the row's target or the transcript.
    """

    def __init__(self, *, temperature: float = 1.0, prompt: str = DEFAULT_DISTILL_PROMPT) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"distill: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.prompt = prompt

    @classmethod
    def from_recipe(cls, recipe: Any, *, adapters: Mapping[str, Any], anchors: Mapping[str, Any],
                    mllm: Any) -> DistillTask | None:
        return cls() if mllm is not None else None

    def training_forward(self, model: AlignmentModel, batch: Batch, feats: dict[str, EncoderOutput]) -> LossTerms:
        mllm = model.frozen.mllm
        rows = [i for i in self.rows(batch) if batch.captions[i]]
        if not rows:
            return {}
        row_set, sub, modality = set(rows), {}, {}
        for m, mb in batch.media.items():
            if m not in mllm.adapters:
                continue
            idx = [j for j, r in enumerate(mb.rows.tolist()) if r in row_set]
            if idx:
                sub[m] = feats[m][torch.tensor(idx, device=feats[m].tokens.device)]
                modality.update({int(mb.rows[j]): m for j in idx})
        rows = [i for i in rows if i in modality]
        if not rows:
            return {}
        prompts = [batch.prompts[i] or self.prompt.format(modality=modality[i]) for i in rows]
        targets = [batch.targets[i] or batch.captions[i] for i in rows]
        loss, aux = distill_loss(mllm, prompts, [batch.captions[i] for i in rows], sub, targets=targets,
                                 temperature=self.temperature)
        return {(self.name,): loss + sum(aux.values())}


__all__ = ["DEFAULT_DISTILL_PROMPT", "DistillTask", "distill_loss", "response_logits", "teacher_prompt"]
