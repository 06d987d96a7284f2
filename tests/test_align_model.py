"""AlignmentModel: caption loss on target tokens only, mixed-task batches, deterministic data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from anyalign.adapter import AdapterConfig, ModalityAdapter
from anyalign.align.augment import augment_series
from anyalign.align.config import AugmentSpec, DataSource
from anyalign.align.data import Collator, EpochSampler, PairedDataset
from anyalign.align.model import AlignmentModel
from anyalign.align.tasks import CaptionTask, ContrastiveTask
from anyalign.encoders.custom import wrap_module
from anyalign.features import FeatureRecord
from anyalign.llm import MultimodalLM

HIDDEN = 32


def _tokenizer() -> PreTrainedTokenizerFast:
    corpus = ["a person is walking", "a person is running", "what is the person doing?", "describe this motion",
              "the sound of a bell", "playing badminton or standing still"] * 5
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=200, special_tokens=["<pad>", "<eos>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


def _adapter(modality: str, *, llm: bool = True, embed: bool = False, in_dim: int = 8) -> ModalityAdapter:
    cfg = AdapterConfig(modality=modality, encoder="features", in_dim=in_dim, feature="tokens",
                        llm_dim=HIDDEN if llm else None, llm_projector={"name": "mlp"} if llm else None,
                        embed_dim=16 if embed else None, embed_projector={"name": "linear"} if embed else None)
    return ModalityAdapter(cfg)


def _feature(t: int, d: int = 8) -> FeatureRecord:
    return FeatureRecord("k", torch.randn(t, d), torch.randn(d))


@pytest.fixture(scope="module")
def tiny_llm() -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    tok = _tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval(), tok


def _example(task: str, media: dict, caption: str | None = None, prompt: str | None = None,
             target: str | None = None, label: str | None = None) -> dict:
    return {"task": task, "media": media, "caption": caption, "prompt": prompt, "target": target, "label": label,
            "key": "k"}


def test_caption_loss_is_on_target_tokens_only(tiny_llm) -> None:
    llm, tok = tiny_llm
    adapter = _adapter("imu")
    mllm = MultimodalLM(llm, tok, {"imu": adapter})
    model = AlignmentModel({"imu": adapter}, mllm=mllm, tasks=[CaptionTask()])
    prompts = ["<imu> what is the person doing?", "describe this motion <imu>"]
    targets = ["a person is walking", "running"]
    examples = [_example("caption", {"imu": [_feature(5)]}, prompt=prompts[0], target=targets[0]),
                _example("caption", {"imu": [_feature(3)]}, prompt=prompts[1], target=targets[1])]
    batch = Collator({}, []).__call__(examples)
    loss = model.training_forward(batch)[("caption",)]

    # by hand: run the LLM on the spliced sequence and average the CE of the target tokens (+ eos) only
    feats = {"imu": model.features("imu", batch.media["imu"])}
    prep = mllm.prepare(prompts, targets, features=feats)
    logits = llm(inputs_embeds=prep.embeds, attention_mask=prep.layout.attention_mask,
                 position_ids=prep.layout.position_ids).logits
    total, count = 0.0, 0
    for i, target in enumerate(targets):
        ids = tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        length = logits.shape[1]
        for j, token in enumerate(ids):
            pos = length - len(ids) + j  # targets end every (left-padded) row
            total += -F.log_softmax(logits[i, pos - 1], -1)[token].item()
            count += 1
    assert loss.item() == pytest.approx(total / count, rel=1e-5)
    labels = prep.layout.labels
    assert int((labels != -100).sum()) == count  # prompt, soft-token and padding positions are masked
    assert not (labels[prep.layout.soft_mask] != -100).any()
    loss.backward()
    assert adapter.llm_head.net[0].weight.grad is not None
    assert all(p.grad is None for p in llm.parameters())  # the LLM stays frozen


def test_mixed_batch_contrastive_and_caption(tiny_llm) -> None:
    llm, tok = tiny_llm
    imu = _adapter("imu", llm=True, embed=True)
    anchor = wrap_module(torch.nn.Linear(6, 16), modality="image", token_dim=16).freeze()
    mllm = MultimodalLM(llm, tok, {"imu": imu})
    model = AlignmentModel({"imu": imu}, anchors={"image": anchor}, mllm=mllm,
                           tasks=[ContrastiveTask([("imu", "image")]), CaptionTask()])
    img = lambda: FeatureRecord("k", torch.randn(1, 16), torch.randn(16))  # noqa: E731 - cached anchor features
    examples = [_example("contrastive", {"imu": [_feature(4)], "image": [img()]}, label="walk"),
                _example("caption", {"imu": [_feature(2)]}, prompt="<imu> what?", target="walking"),
                _example("contrastive", {"imu": [_feature(6)], "image": [img()]}, label="run"),
                _example("contrastive", {"imu": [_feature(3)], "image": [img()]}, label="walk")]
    batch = Collator({}, ["run", "walk"])(examples)
    assert batch.labels.tolist() == [1, -1, 0, 1] and batch.media["imu"].rows.tolist() == [0, 1, 2, 3]
    losses = model.training_forward(batch)
    assert set(losses) == {("contrastive", "imu", "image"), ("caption",)}
    sum(losses.values()).backward()
    assert imu.embed_head.proj.weight.grad.abs().sum() > 0 and imu.llm_head.net[0].weight.grad.abs().sum() > 0
    assert model.contrastive_losses()[("contrastive", "imu", "image")].logit_scale.grad is not None
    assert set(model.state_dict()) == {k for k, _ in model.named_parameters()}  # frozen parts not registered


def test_instruct_jsonl_and_caption_prompts(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((6, 10), np.float32))
    rows = [{"imu": "a.npy", "conversations": [{"from": "human", "value": "<imu>\nWhat is this?"},
                                               {"from": "gpt", "value": "Walking."},
                                               {"from": "human", "value": "Sure?"},
                                               {"from": "gpt", "value": "Yes, walking."}]},
            {"imu": ["a.npy", "a.npy"], "conversations": [{"from": "human", "value": "<imu> vs <imu>?"},
                                                          {"from": "gpt", "value": "Same."}]}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = PairedDataset([DataSource(kind="jsonl", path=str(manifest), task="instruct")], ["imu"], train=False)
    ex = ds[0]
    assert ex["prompt"] == "<imu>\nWhat is this?\nAssistant: Walking.\nSure?" and ex["target"] == "Yes, walking."
    assert ex["media"]["imu"][0] == str(tmp_path / "a.npy") and len(ds[1]["media"]["imu"]) == 2
    rows[1]["conversations"][0]["value"] = "<imu> only one"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(ValueError, match=r"m\.jsonl:2: 1 <imu> placeholder\(s\) .* but 2 imu item"):
        PairedDataset([DataSource(kind="jsonl", path=str(manifest), task="instruct")], ["imu"])


def test_data_order_and_augmentation_are_pure_functions_of_seed_epoch_index() -> None:
    s = EpochSampler(10, seed=3)
    s.set_epoch(0)
    first = list(s)
    s.set_epoch(1)
    second = list(s)
    s.set_epoch(0)
    assert list(s) == first and [i for _, i in first] != [i for _, i in second]
    assert sorted(i for _, i in first) == list(range(10)) and {e for e, _ in second} == {1}
    x = np.sin(np.linspace(0, 6, 100, dtype=np.float32))[None].repeat(6, 0)
    spec = AugmentSpec(crop=0.8, jitter=0.05, scale=0.1, shift=0.1)
    a = augment_series(x, spec, np.random.default_rng([0, 1, 2]))
    b = augment_series(x, spec, np.random.default_rng([0, 1, 2]))
    c = augment_series(x, spec, np.random.default_rng([0, 2, 2]))
    assert a.shape == x.shape and np.array_equal(a, b) and not np.allclose(a, c)
    assert not np.allclose(a, x)
    assert math.isclose(float(augment_series(x, AugmentSpec(), np.random.default_rng(0)).sum()), float(x.sum()))


def test_batched_fetch_equals_item_fetch_and_pads_float16_once(tmp_path: Path) -> None:
    """`__getitems__` (the DataLoader's batched fetch) gives the examples `__getitem__` does, whatever the batch
    grouping; template and prompt draws vary over items and epochs; cached float16 tokens are padded into one
    float32 tensor equal to padding the float32 values."""
    from anyalign.align.data import item_draws, pad_features
    from anyalign.encoders import pad_sequences
    from anyalign.features import FeatureWriter, write_manifest

    rng = np.random.default_rng(0)
    with FeatureWriter(tmp_path / "features-r00-00000.tar") as w:
        for i in range(40):
            t = rng.normal(size=(1 + i % 3, 8)).astype(np.float16)
            w.add(f"k{i}", t, t.astype(np.float32).mean(0), {"caption": f"thing {i}"})
    write_manifest(tmp_path, {"modality": "imu", "token_dim": 8, "pooled_dim": 8, "dtype": "float16",
                              "shards": [{"file": "features-r00-00000.tar", "count": 40}]})
    templates = ["a {caption}.", "the {caption}!", "look: {caption}"]
    prompts = ["describe <{modality}>", "what is <{modality}>?"]
    ds = PairedDataset([DataSource(kind="features", path=str(tmp_path), task="caption", caption_templates=templates,
                                   prompts=prompts)], ["imu"], seed=5)
    keys = [(1, i) for i in (7, 3, 39, 0)] + [(2, 7)]
    batched = ds.__getitems__(keys)
    single = [ds[k] for k in keys]
    assert [(b["caption"], b["prompt"]) for b in batched] == [(s["caption"], s["prompt"]) for s in single]
    assert ds.__getitems__(keys[1:3]) == batched[1:3]  # independent of the batch it comes in
    assert (item_draws(5, 1, [7, 3]) == item_draws(5, 1, range(8))[[7, 3]]).all()
    epoch1 = ds.__getitems__([(1, i) for i in range(40)])
    assert {ex["caption"].replace(str(i), "#") for i, ex in enumerate(epoch1)} == \
        {t.format(caption="thing #") for t in templates}  # every template drawn
    assert {ex["prompt"] for ex in epoch1} == {"describe <imu>", "what is <imu>?"}
    epoch2 = ds.__getitems__([(2, i) for i in range(40)])
    assert [ex["caption"] for ex in epoch1] != [ex["caption"] for ex in epoch2]
    eval_ds = PairedDataset([DataSource(kind="features", path=str(tmp_path), caption_templates=templates)],
                            ["imu"], train=False)
    assert eval_ds[(0, 4)]["caption"] == "a thing 4."  # evaluation: the first template, no draws
    recs = [ex["media"]["imu"][0] for ex in batched]
    assert all(r.tokens.dtype == torch.float16 for r in recs)  # kept as stored
    out = pad_features(recs)
    ref, mask = pad_sequences([r.tokens.float() for r in recs])
    assert out.tokens.dtype == torch.float32 and torch.equal(out.tokens, ref) and torch.equal(out.mask, mask)
    assert torch.equal(out.pooled, torch.stack([r.pooled for r in recs]))
    batch = Collator({}, [])(batched)
    assert torch.equal(batch.media["imu"].features.tokens, ref)
