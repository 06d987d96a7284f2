"""The shipped speech recipes end to end on a tiny synthesised corpus (real espeak-ng speech) with tiny random
models of the real classes (WhisperModel, BertModel, LlamaForCausalLM): corpus -> `anyalign extract` -> `anyalign
train` of configs/speech_text_contrastive.yaml, speech_llm_caption.yaml and speech_instruct.yaml (a few steps each)
-> `anyalign classify` and `anyalign chat` on held-out-voice wavs. The real-weights numbers come from
benchmarks/speech_eval.py (minutes); `test_real_whisper_transcribes_synthesised_speech` checks the real encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizerFast,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)

from anyalign.adapter import ModalityAdapter
from anyalign.align import load_recipe, train
from anyalign.demos.speech_corpus import Utterance, synthesize_corpus
from tests._cli import run_cli as _cli

pytest.importorskip("espeakng_loader", reason="pip espeakng-loader (libespeak-ng) is not installed")

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["yes", "no", "stop"]
SENTENCES = ["the cat sleeps on the mat.", "turn left at the bridge.", "we need two loaves of bread."]
QUESTIONS = [("what is two plus two?", "two plus two is four."), ("what do bees make?", "bees make honey.")]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random Whisper (d_model 32), BERT text encoder and Llama LLM saved as Hugging Face folders."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    wcfg = WhisperConfig(vocab_size=64, num_mel_bins=80, d_model=32, encoder_layers=1, encoder_attention_heads=2,
                         encoder_ffn_dim=64, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64,
                         max_source_positions=1500, max_target_positions=32, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2, decoder_start_token_id=1)
    WhisperModel(wcfg).save_pretrained(root / "whisper")
    WhisperFeatureExtractor(feature_size=80).save_pretrained(root / "whisper")
    words = sorted({w.strip(".?") for t in SENTENCES + COMMANDS + [q for qa in QUESTIONS for q in qa]
                    for w in t.split()})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?", *words])}
    BertTokenizerFast(vocab=vocab, do_lower_case=True).save_pretrained(root / "text")
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(root / "text")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = SENTENCES + COMMANDS + [q for qa in QUESTIONS for q in qa] + ["What was said? Answer the question."]
    tok.train_from_iterator(corpus * 5, trainers.BpeTrainer(vocab_size=200, special_tokens=["<pad>", "<s>", "</s>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(root / "llm")
    LlamaForCausalLM(LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=512)).save_pretrained(root / "llm")
    return {"whisper": root / "whisper", "text": root / "text", "llm": root / "llm"}


@pytest.fixture(scope="module")
def speech_data(tmp_path_factory: pytest.TempPathFactory, models_dir: dict[str, Path]) -> Path:
    """$SPEECH_DATA as the recipes expect it: corpora by list, and Whisper features per list and fold."""
    root = tmp_path_factory.mktemp("speech")
    lists = {"commands": [Utterance(c, label=c, takes=2) for c in COMMANDS],
             "sentences": [Utterance(s) for s in SENTENCES],
             "questions": [Utterance(q, answer=a) for q, a in QUESTIONS]}
    for name, utts in lists.items():
        synthesize_corpus(utts, root / name, voices=["en-us+m1"], heldout_voices=["en+m3"], progress=False)
        for fold in ("train", "test"):
            assert _cli(["extract", "--encoder", "whisper", "--pretrained", str(models_dir["whisper"]), "--input",
                         str(root / name / f"{fold}.jsonl"), "--output", str(root / "features" / f"{name}-{fold}"),
                         "--workers", "0", "--quiet"]) == 0
    (root / "features" / "train").symlink_to(root / "features" / "commands-train")  # speech_text_contrastive's
    (root / "features" / "val").symlink_to(root / "features" / "sentences-test")  # train / val feature folders
    return root


@pytest.fixture()
def env(monkeypatch: pytest.MonkeyPatch, speech_data: Path, tmp_path: Path) -> Path:
    monkeypatch.setenv("SPEECH_DATA", str(speech_data))
    monkeypatch.setenv("ANYALIGN_ASSETS", str(tmp_path / "no-assets"))  # every asset path is overridden
    return speech_data


def _train(name: str, out: Path, models_dir: dict[str, Path], *extra: str):
    overrides = [f"output_dir={out}", f"adapters.audio.encoder.pretrained={models_dir['whisper']}",
                 "train.max_steps=3", "train.batch_size=4", "train.save_every=3", "train.warmup_steps=1",
                 "train.log_every=1", "train.tensorboard=false", "eval.every=0", "eval.at_start=false", *extra]
    return train(load_recipe(ROOT / "configs" / f"{name}.yaml", overrides))


def test_contrastive_recipe_trains_and_classifies_heldout_voices(env: Path, models_dir: dict[str, Path],
                                                                 tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    result = _train("speech_text_contrastive", tmp_path / "run", models_dir,
                    f"anchors.text.encoder.pretrained={models_dir['text']}")
    assert result.step == 3
    assert any(k.startswith("eval/audio/audio->text_R@") for k in result.metrics), sorted(result.metrics)
    adapter = ModalityAdapter.from_pretrained(result.adapters["audio"])
    assert adapter.config.encoder.name == "whisper" and adapter.config.embed_dim == 32
    test = [json.loads(line) for line in (env / "commands" / "test.jsonl").read_text().splitlines()]
    wavs = [str(env / "commands" / r["audio"]) for r in test]
    capsys.readouterr()
    assert _cli(["classify", "--adapter", result.adapters["audio"], "--labels", ",".join(COMMANDS), "--template",
                 "{}", "--json", "--no-cache", *wavs]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["results"]) == len(wavs) and all(r["predictions"][0]["label"] in COMMANDS
                                                   for r in out["results"])


def test_words_head_recipe_trains_with_ctc_and_classifies_by_lexicon(env: Path, models_dir: dict[str, Path],
                                                                     tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from anyalign.zeroshot import ZeroShotClassifier

    result = _train("speech_text_ctc", tmp_path / "run", models_dir,
                    f"anchors.text.encoder.pretrained={models_dir['text']}")
    logged = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    ctc = [r["loss/ctc-audio"] for r in logged if "loss/ctc-audio" in r]
    assert result.step == 3 and len(ctc) == 3 and ctc[-1] < ctc[0]  # the CTC term is what trains
    adapter = ModalityAdapter.from_pretrained(result.adapters["audio"], load_encoder=False)
    assert adapter.config.embed_projector["name"] == "ctc" and adapter.embed_head.config["text_encoder"]
    test = [json.loads(line) for line in (env / "commands" / "test.jsonl").read_text().splitlines()]
    wavs = [str(env / "commands" / r["audio"]) for r in test]
    clf = ZeroShotClassifier.from_adapter(result.adapters["audio"], COMMANDS, use_cache=False)
    assert clf.constrain_query() and clf.query.adapter.embed_head.lexicon == COMMANDS  # speech templates: the words
    capsys.readouterr()
    assert _cli(["classify", "--adapter", result.adapters["audio"], "--labels", ",".join(COMMANDS), "--json",
                 "--no-cache", *wavs]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["results"]) == len(wavs) and all(r["predictions"][0]["label"] in COMMANDS
                                                   for r in out["results"])


def test_llm_caption_then_instruct_then_chat_with_speech(env: Path, models_dir: dict[str, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    llm = [f"model.llm={models_dir['llm']}", "model.gguf_file=null"]
    cap = _train("speech_llm_caption", tmp_path / "cap", models_dir, *llm)
    assert cap.step == 3 and "eval/audio/caption_loss" in cap.metrics
    ins = _train("speech_instruct", tmp_path / "ins", models_dir, *llm,
                 f"adapters.audio.init_from={cap.adapters['audio']}")
    assert ins.step == 3 and "eval/audio/instruct_loss" in ins.metrics
    first = ModalityAdapter.from_pretrained(cap.adapters["audio"]).trainable_state_dict()
    second = ModalityAdapter.from_pretrained(ins.adapters["audio"]).trainable_state_dict()
    assert first.keys() == second.keys() and any(not torch.equal(first[k], second[k]) for k in first)
    question = json.loads((env / "questions" / "test.jsonl").read_text().splitlines()[0])
    wav = env / "questions" / question["audio"]
    capsys.readouterr()
    assert _cli(["chat", "--llm", str(models_dir["llm"]), "--adapter", f"audio={ins.adapters['audio']}", "--input",
                 f"audio={wav}", "--max-new-tokens", "5", "--no-stream", "Answer the spoken question."]) == 0
    capsys.readouterr()  # random weights: any text (possibly only special tokens) is a valid answer
    assert _cli(["chat", "--llm", str(models_dir["llm"]), "--adapter", f"audio={ins.adapters['audio']}", "--input",
                 f"audio={wav}", "--max-new-tokens", "2", "<audio> <audio> two clips?"]) == 2
    assert "<audio>" in capsys.readouterr().err
    report = tmp_path / "wer.json"  # the transcription evaluation runs through the same adapter
    assert _cli(["eval", "transcription", str(env / "sentences" / "test.jsonl"), "--llm", str(models_dir["llm"]),
                 "--adapter", f"audio={cap.adapters['audio']}", "--max-new-tokens", "4", "--quiet",
                 "--output", str(report)]) == 0
    assert capsys.readouterr().out.startswith("llm      WER ")
    rep = json.loads(report.read_text())
    assert rep["n"] == len(SENTENCES) and {r["reference"] for r in rep["rows"]} == {s for s in SENTENCES}
    assert rep["llm"]["wer"] >= 0 and set(rep["llm"]["per_group"]) == {"en+m3"} and "whisper" not in rep
    assert _cli(["eval", "transcription", str(env / "sentences" / "test.jsonl"), "--llm", str(models_dir["llm"]),
                 "--quiet"]) == 2  # no speech adapter: a one-line usage error
    assert "--adapter audio=DIR" in capsys.readouterr().err


def test_real_whisper_transcribes_synthesised_speech(assets: Path, tmp_path: Path) -> None:
    """Whisper tiny.en (converted by anyalign.assets) reads espeak-ng speech: the corpus is real, intelligible
    speech (espeak is harder for it than natural speech: this voice is one of the clearest)."""
    from anyalign.llm.transcribe import whisper_transcripts
    from anyalign.metrics import wer

    folder = assets / "audio-models" / "whisper-tiny.en"
    if not folder.is_dir():
        pytest.skip(f"{folder} missing (python -m anyalign.assets whisper-tiny.en converts it)")
    texts = ["Please close the window before you leave.", "The museum opens at ten in the morning."]
    c = synthesize_corpus([Utterance(t) for t in texts], tmp_path, voices=["en-us+m1"], heldout_voices=[],
                          progress=False)
    hyp = whisper_transcripts(folder, [str(tmp_path / r["audio"]) for r in c.rows], max_new_tokens=30, quiet=True)
    assert wer([r["text"] for r in c.rows], hyp) < 0.35, hyp
    from anyalign.llm.transcribe import whisper_scores

    files = [str(tmp_path / r["audio"]) for r in c.rows]
    scores = whisper_scores(folder, files, [r["text"] for r in c.rows] + ["Seven green parrots."], quiet=True)
    assert scores.shape == (2, 3) and scores.argmax(1).tolist() == [0, 1]  # the lexicon baseline picks what was said
