"""Ultravox's recipe: the `stack_gated` projector (frame stacking + SwiGLU) and the text-to-speech distillation task
(KL from the LLM reading the transcript to the LLM hearing the media), on a tiny random Llama of the real class."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from anyalign.adapter import AdapterConfig, ModalityAdapter
from anyalign.align.config import TASK_REGISTRY
from anyalign.align.data import Collator
from anyalign.align.distill import DistillTask, distill_loss, response_logits, teacher_prompt
from anyalign.align.model import AlignmentModel
from anyalign.encoders import EncoderOutput
from anyalign.features import FeatureRecord
from anyalign.llm import MultimodalLM
from anyalign.projectors import create_projector

HIDDEN, IN = 32, 8
PROMPT = "<audio>\nwhat was said?"
SAID = ["open the window", "call my sister after lunch", "the train is late"]


@pytest.fixture(scope="module")
def mllm() -> MultimodalLM:
    corpus = SAID + ["what was said?", "turn on the light", "open the door"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus * 5, trainers.BpeTrainer(vocab_size=200, special_tokens=["<pad>", "<eos>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(fast), hidden_size=HIDDEN, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                       max_position_embeddings=128, initializer_range=0.3)).eval()
    cfg = AdapterConfig(modality="audio", encoder="features", in_dim=IN, feature="tokens", llm_dim=HIDDEN,
                        llm_projector={"name": "stack_gated", "stack": 4})
    return MultimodalLM(llm, fast, {"audio": ModalityAdapter(cfg)})


def feats(lengths: list[int], seed: int = 0) -> EncoderOutput:
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    x = torch.randn(len(lengths), t, IN, generator=g)
    mask = torch.arange(t)[None] < torch.tensor(lengths)[:, None]
    return EncoderOutput(x, mask, x.mean(1))


# --- stack_gated ------------------------------------------------------------------------------------------------
def test_stack_gated_keeps_order_and_counts_tokens() -> None:
    torch.manual_seed(0)
    p = create_projector("stack_gated", in_dim=IN, out_dim=HIDDEN, stack=4).eval()
    x = torch.randn(2, 10, IN)
    mask = torch.arange(10)[None] < torch.tensor([10, 5])[:, None]
    out = p(x, mask)
    assert out.tokens.shape == (2, 3, HIDDEN) and out.mask.tolist() == [[True] * 3, [True, True, False]]
    swapped = x.clone()
    swapped[:, [0, 1]] = x[:, [1, 0]]  # two frames inside the first stack change places
    assert not torch.allclose(p(swapped, mask).tokens[:, 0], out.tokens[:, 0], atol=1e-4)  # order is seen
    assert torch.equal(p(swapped, mask).tokens[:, 1:], out.tokens[:, 1:])  # other stacks untouched
    assert p.spec() == {"name": "stack_gated", "in_dim": IN, "out_dim": HIDDEN, "stack": 4, "hidden_dim": None,
                        "norm": True, "dropout": 0.0}
    with pytest.raises(ValueError, match="stack must be >= 1"):
        create_projector("stack_gated", in_dim=IN, out_dim=HIDDEN, stack=0)


# --- distillation ------------------------------------------------------------------------------------------------
def test_teacher_prompt_replaces_the_placeholder() -> None:
    assert teacher_prompt(PROMPT, "open the window", ["audio"]) == "open the window\nwhat was said?"
    assert teacher_prompt("<imu> then <audio>?", "x", ["audio", "imu"]) == "x then x?"


def test_response_logits_cover_exactly_the_response_tokens(mllm: MultimodalLM) -> None:
    with torch.no_grad():
        logits, _ = response_logits(mllm, [PROMPT] * 2, SAID[:2], {"audio": feats([6, 9])})
    ids = mllm.tokenizer(SAID[:2], add_special_tokens=False)["input_ids"]
    assert logits.shape == (sum(len(i) + 1 for i in ids), len(mllm.tokenizer))  # + eos each


def test_distill_loss_is_the_kl_from_teacher_to_student(mllm: MultimodalLM) -> None:
    f = {"audio": feats([6, 9, 3])}
    loss, _ = distill_loss(mllm, [PROMPT] * 3, SAID, f)
    with torch.no_grad():
        teacher, _ = response_logits(mllm, [teacher_prompt(PROMPT, s, ["audio"]) for s in SAID], SAID)
        student, _ = response_logits(mllm, [PROMPT] * 3, SAID, f)
    p_t, log_s = F.softmax(teacher, -1), F.log_softmax(student, -1)
    manual = (p_t * (p_t.log() - log_s)).sum(-1).mean()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-3) and loss.item() > 1e-3
    t2, _ = distill_loss(mllm, [PROMPT] * 3, SAID, f, temperature=2.0)
    assert t2.item() != pytest.approx(loss.item())
    text_only, _ = distill_loss(mllm, [teacher_prompt(PROMPT, s, ["audio"]) for s in SAID], SAID, {})
    assert text_only.item() == pytest.approx(0.0, abs=1e-6)  # the teacher against itself


def test_distillation_trains_the_projector_only(mllm: MultimodalLM) -> None:
    adapter = mllm.adapters["audio"]
    before = {k: v.clone() for k, v in adapter.state_dict().items()}
    llm_before = [p.clone() for p in mllm.llm.parameters()]
    params = [p for p in adapter.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=3e-3)
    f = {"audio": feats([8, 12, 5], seed=1)}
    losses = []
    for _ in range(25):
        loss, _ = distill_loss(mllm, [PROMPT] * 3, SAID, f)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in mllm.llm.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(torch.equal(a, b) for a, b in zip(llm_before, mllm.llm.parameters()))
    adapter.load_state_dict(before)


def test_distill_task_in_a_mixed_batch(mllm: MultimodalLM) -> None:
    assert "distill" in TASK_REGISTRY.names() and DistillTask.name == "distill"
    adapter = mllm.adapters["audio"]
    model = AlignmentModel({"audio": adapter}, mllm=mllm, tasks=[DistillTask()])

    def ex(task: str, caption: str | None, t: int) -> dict:
        rec = FeatureRecord("k", torch.randn(t, IN), torch.randn(IN))
        return {"task": task, "media": {"audio": [rec]}, "caption": caption, "prompt": None, "target": None,
                "label": None, "key": "k"}

    batch = Collator({}, []).__call__([ex("distill", SAID[0], 6), ex("distill", None, 4), ex("other", SAID[1], 5),
                                       ex("distill", SAID[2], 9)])
    terms = model.training_forward(batch)
    assert set(terms) == {("distill",)} and torch.isfinite(terms[("distill",)])
    feats_all = model.features("audio", batch.media["audio"])
    rows = feats_all[torch.tensor([0, 3])]  # the distill rows that have a transcript
    expected, _ = distill_loss(mllm, ["<audio>\nWhat was said?"] * 2, [SAID[0], SAID[2]], {"audio": rows})
    assert terms[("distill",)].item() == pytest.approx(expected.item(), rel=1e-5)
