"""Stage 2 end to end with tiny real models: mixed tasks and modalities, LoRA, `init_from` a stage-1 adapter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from anyalign.align import load_recipe, train
from anyalign.llm import MultimodalLM

ACTIVITIES = ["walking", "running", "standing"]


@pytest.fixture(scope="module")
def tiny_llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised Llama + BPE tokenizer saved as a model folder."""
    corpus = [f"the person is {a}. what is the person doing? {a} sounds" for a in ACTIVITIES] * 10
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=180, special_tokens=["<pad>", "<eos>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def _data(root: Path) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    captions, convs = [], []
    for i in range(12):
        a = ACTIVITIES[i % 3]
        np.save(root / f"w{i}.npy", (rng.normal(size=(6, 24)) + i % 3).astype(np.float32))
        captions.append({"imu": f"w{i}.npy", "caption": f"the person is {a}", "label": a})
        convs.append({"imu": [f"w{i}.npy"], "conversations": [
            {"from": "human", "value": "<imu>\nwhat is the person doing?"}, {"from": "gpt", "value": a}]})
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in captions))
    (root / "instruct.jsonl").write_text("".join(json.dumps(r) + "\n" for r in convs))
    return root / "captions.jsonl", root / "instruct.jsonl"


def test_stage1_then_joint_stage_with_lora(tmp_path: Path, tiny_llm_dir: Path, minilm_dir: Path) -> None:
    captions, instruct = _data(tmp_path / "data")
    imu = {"encoder": {"name": "imu", "options": {"dim": 16, "depth": 1, "heads": 2, "dropout": 0.0}}}
    stage1 = {"adapters": {"imu": {**imu, "train_encoder": True, "embed_projector": {"name": "mlp"}}},
              "anchors": {"text": {"encoder": {"name": "text", "pretrained": str(minilm_dir)}}},
              "data": {"train": [{"kind": "jsonl", "path": str(captions)}]},
              "train": {"batch_size": 6, "max_steps": 3, "tensorboard": False}, "eval": {"at_start": False}}
    (tmp_path / "s1.yaml").write_text(yaml.safe_dump(stage1))
    s1 = train(load_recipe(tmp_path / "s1.yaml"), output_dir=tmp_path / "s1")
    s1_weights = load_file(Path(s1.adapters["imu"]) / "anyalign_adapter.safetensors")

    stage2 = {
        "model": {"llm": str(tiny_llm_dir), "lora": {"r": 4, "alpha": 8, "dropout": 0.0,
                                                      "target_modules": ["q_proj", "v_proj"]}},
        "adapters": {"imu": {**imu, "init_from": s1.adapters["imu"], "embed_projector": {"name": "mlp"},
                             "llm_projector": {"name": "mlp"}}},
        "anchors": {"text": {"encoder": {"name": "text", "pretrained": str(minilm_dir)}}},
        "data": {"train": [{"kind": "jsonl", "path": str(captions), "task": "caption",
                            "prompts": ["<imu>\nwhat is the person doing?"]},
                           {"kind": "jsonl", "path": str(instruct), "task": "instruct"},
                           {"kind": "jsonl", "path": str(captions)}],  # contrastive, in the same batches
                 "eval": [{"kind": "jsonl", "path": str(captions), "task": "caption", "limit": 6,
                           "prompts": ["<imu>\nwhat is the person doing?"]}]},
        "train": {"batch_size": 12, "max_steps": 4, "lr": 1e-2, "log_every": 1, "tensorboard": False},
    }
    (tmp_path / "s2.yaml").write_text(yaml.safe_dump(stage2))
    s2 = train(load_recipe(tmp_path / "s2.yaml"), output_dir=tmp_path / "s2")

    logs = [json.loads(line) for line in (tmp_path / "s2" / "metrics.jsonl").read_text().splitlines()]
    terms = {k for r in logs for k in r if k.startswith("loss/")}
    assert terms == {"loss/caption", "loss/instruct", "loss/imu-text"}  # mixed tasks in one run
    before = next(r for r in logs if r["step"] == 0)["eval/imu/caption_loss"]
    assert s2.metrics["eval/imu/caption_loss"] < before
    final = load_file(Path(s2.adapters["imu"]) / "anyalign_adapter.safetensors")
    enc = [k for k in s1_weights if k.startswith("encoder.")]
    assert enc and all(torch.equal(final[k], s1_weights[k]) for k in enc)  # stage-1 encoder, frozen in stage 2
    assert any(k.startswith("llm_head.") for k in final)
    mm = MultimodalLM.from_pretrained(tmp_path / "s2" / "mllm")  # bundle: adapters + LoRA + base LLM name
    lora = {n: p for n, p in mm.llm.named_parameters() if "lora_B" in n}
    assert lora and any(p.abs().sum() > 0 for p in lora.values())  # LoRA B starts at zero; it was trained
