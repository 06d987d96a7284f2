"""Stage 2 end to end with tiny real models: mixed tasks and modalities, LoRA, `init_from` a stage-1 adapter; a
feature source renaming its modality (speech from audio features); and configs/joint_instruct.yaml as shipped on the
real assets (IMU, speech, sounds, images into SmolLM2 through one universal projector, from cached features)."""

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
from anyalign.align.build import _feature_dims
from anyalign.align.config import DataSource
from anyalign.align.sources import read_source
from anyalign.features import FeatureWriter, write_manifest
from anyalign.llm import MultimodalLM
from tests._cli import run_cli

ROOT = Path(__file__).resolve().parents[1]

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


# --- a feature source names the modality it feeds --------------------------------------------------------------
def _audio_features(folder: Path) -> Path:
    """Two fake Whisper-feature rows of modality `audio`, one a spoken question with an `<audio>` conversation."""
    folder.mkdir(parents=True)
    conv = [{"from": "human", "value": "<audio>\nAnswer the spoken question."}, {"from": "gpt", "value": "Paris."}]
    with FeatureWriter(folder / "features-r00-00000.tar") as w:
        w.add("q1", np.zeros((5, 4), np.float32), np.zeros(4, np.float32),
              {"text": "What is the capital of France?", "conversations": conv})
        w.add("s1", np.ones((3, 4), np.float32), np.ones(4, np.float32), {"text": "Good morning."})
    write_manifest(folder, {"encoder": {"name": "whisper", "pretrained": "w", "options": {}}, "modality": "audio",
                            "token_dim": 4, "pooled_dim": 4, "dtype": "float16",
                            "shards": [{"name": "features-r00-00000.tar", "count": 2}]})
    return folder


def test_feature_source_renames_its_modality_and_placeholders(tmp_path: Path) -> None:
    feats = _audio_features(tmp_path / "f")
    src = DataSource(kind="features", path=str(feats), modality="speech", task="instruct")
    recs = read_source(src, ["speech"])
    assert [list(r["media"]) for r in recs] == [["speech"], ["speech"]]
    assert recs[0]["conversation"][0]["value"] == "<speech>\nAnswer the spoken question."
    assert recs[0]["conversation"][1]["value"] == "Paris." and recs[1]["caption"] == "Good morning."
    same = read_source(DataSource(kind="features", path=str(feats)), ["audio"])  # no rename: as stored
    assert same[0]["conversation"][0]["value"].startswith("<audio>") and list(same[0]["media"]) == ["audio"]
    assert _feature_dims("speech", [src], "whisper") == (4, 4)
    with pytest.raises(ValueError, match=r"features of modality 'audio' \(encoder 'whisper'\).*uses encoder 'aisfx'"):
        _feature_dims("speech", [src], "aisfx")  # a rename is only allowed from the adapter's own encoder


# --- configs/joint_instruct.yaml as shipped, on the real assets ----------------------------------------------------
JOINT_SENTENCES = ["Please turn on the kitchen light.", "Where did you put my keys?",
                   "The coffee is too hot to drink.", "It is going to rain this afternoon.",
                   "The museum opens at ten in the morning.",
                   "We need two loaves of bread and some milk."]
JOINT_QUESTIONS = [("What is the capital of France?", "The capital of France is Paris."),
                   ("What do bees make?", "Bees make honey."),
                   ("How many legs does a spider have?", "A spider has eight legs."),
                   ("How many days are there in a week?", "There are seven days in a week."),
                   ("What colour is the sky on a clear day?", "The sky is blue on a clear day."),
                   ("What is frozen water called?", "Frozen water is called ice.")]  # the last two: test fold


def _joint_data(root: Path, assets: Path) -> None:
    """The recipe header's data steps, in process, on short lists: speech corpora (held-out voices and texts), then
    `anyalign extract` of Whisper (speech), aisfx (sounds) and EfficientNet-Lite0 (images) features."""
    (root / "lists").mkdir(parents=True)
    (root / "lists/sentences.txt").write_text("\n".join(JOINT_SENTENCES) + "\n")
    (root / "lists/questions.jsonl").write_text("".join(json.dumps({"text": q, "answer": a}) + "\n"
                                                        for q, a in JOINT_QUESTIONS))
    voices = ["--voices", "en-us+m1,en-us+f1", "--heldout-voices", "en-us-nyc+m5", "--heldout-texts", "0.5", "--quiet"]
    for name, lst in (("sentences", "sentences.txt"), ("questions", "questions.jsonl")):
        assert run_cli(["data", "speech", str(root / "lists" / lst), *voices, "-o", str(root / name)]) == 0
        for fold in ("train", "test"):
            assert run_cli(["extract", "--encoder", "whisper", "--pretrained",
                            str(assets / "audio-models/whisper-tiny.en"), "--set", "padding=longest", "--input",
                            str(root / name / f"{fold}.jsonl"), "--output", str(root / f"features/{name}-{fold}"),
                            "--workers", "0", "--quiet"]) == 0
    assert run_cli(["extract", "--encoder", "aisfx", "--pretrained", str(assets / "audio-models/aisfx"), "--input",
                    str(ROOT / "configs/data/joint_sounds.jsonl"), "--output", str(root / "features/sounds"),
                    "--workers", "0", "--quiet"]) == 0
    for split in ("train-6pc-8cls", "test-6pc"):
        assert run_cli(["extract", "--encoder", "timm-image", "--pretrained",
                        str(assets / "image/efficientnet-lite0.pth"), "--input",
                        str(assets / f"image/fashion-mnist/{split}.jsonl"), "--output",
                        str(root / f"features/images-{split}"), "--workers", "0", "--quiet"]) == 0


@pytest.mark.slow
def test_joint_recipe_with_speech_runs_offline_from_cached_features(tmp_path: Path, assets: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/joint_instruct.yaml as shipped (IMU from a stage-1 run; speech, sounds and images from cached
    features; SmolLM2 + LoRA; one shared universal projector) at a small step count, after its data steps."""
    pytest.importorskip("espeakng_loader", reason="pip espeakng-loader (libespeak-ng) is not installed")
    for need in ("llm/SmolLM2-135M-Instruct", "audio-models/aisfx", "audio-models/whisper-tiny.en",
                 "image/efficientnet-lite0.pth", "image/fashion-mnist/train-6pc-8cls.jsonl"):
        if not (assets / need).exists():
            pytest.skip(f"{assets / need} missing")
    monkeypatch.setenv("ANYALIGN_ASSETS", str(assets))
    monkeypatch.setenv("JOINT_DATA", str(tmp_path / "data"))
    _joint_data(tmp_path / "data", assets)
    quick = ["train.max_steps=2", "train.save_every=1000", "train.tensorboard=false", "eval.at_start=false",
             "eval.max_samples=4"]
    stage1 = train(load_recipe(ROOT / "configs/imu_text_contrastive.yaml", quick), output_dir=tmp_path / "stage1")
    monkeypatch.setenv("IMU_ADAPTER", stage1.adapters["imu"])
    joint = train(load_recipe(ROOT / "configs/joint_instruct.yaml", quick), output_dir=tmp_path / "joint")
    shared = json.loads((joint.output_dir / "adapters/_shared/upm/anyalign_projector.json").read_text())
    assert shared["users"] == ["imu", "speech", "audio", "image"] and shared["projector"]["name"] == "universal"
    for key in ("imu/caption_loss", "speech/caption_loss", "speech2/instruct_loss", "audio/caption_loss",
                "image/caption_loss"):  # the spoken questions are read as <speech> conversations
        assert np.isfinite(joint.metrics[f"eval/{key}"]), sorted(joint.metrics)
    for m in ("speech", "audio", "image"):  # from cached features: no encoder weights anywhere in the run
        assert not any(k.startswith("encoder.") for k in load_file(joint.output_dir / f"adapters/{m}/"
                                                                   "anyalign_adapter.safetensors"))
    imu = load_file(joint.output_dir / "adapters/imu/anyalign_adapter.safetensors")
    first = load_file(Path(stage1.adapters["imu"]) / "anyalign_adapter.safetensors")
    assert set(imu) == {k for k in first if k.startswith("encoder.")}  # the stage-1 encoder, no private head
    test = [json.loads(line) for line in (tmp_path / "data/questions/test.jsonl").read_text().splitlines()]
    train_q = {json.loads(line)["text"] for line in (tmp_path / "data/questions/train.jsonl").read_text().splitlines()}
    assert test and not {r["text"] for r in test} & train_q and {r["voice"] for r in test} == {"en-us-nyc+m5"}
