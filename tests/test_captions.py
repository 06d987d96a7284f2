"""Caption diversity: the caption pool, the paraphrase file (generation with a tiny random Llama, filter, round
trip) and the recipe side (data.*.captions). The real SmolLM2 generation test is marked slow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from anyalign.align.captions import CaptionPool, CaptionSpec, keep_classes
from anyalign.align.config import DataSource
from anyalign.align.data import PairedDataset
from anyalign.datasets.paraphrase import read_paraphrase_file, read_paraphrases
from anyalign.demos.paraphrases import (
    clean,
    filter_paraphrases,
    generate_paraphrases,
    paraphrase_classes,
    write_paraphrases,
)
from anyalign.llm.bundle import load_llm

WORDS = "a person running walking jogging strolling playing badminton standing still photo of sneaker boot".split()


def _axis_embed(table: dict[str, list[float]]):
    """Embeddings looked up in a fixed table (the filter's logic is tested on known geometry)."""
    def embed(texts: list[str]) -> torch.Tensor:
        return torch.tensor([table[t] for t in texts], dtype=torch.float32)
    return embed


def _tiny_llama(tmp_path: Path) -> Path:
    """A randomly initialised LlamaForCausalLM with a word-level tokenizer, saved like any local model folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "=>", "\n", ".", '"', *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    path = tmp_path / "tiny-llama"
    LlamaForCausalLM(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def test_filter_drops_paraphrases_closer_to_another_class() -> None:
    table = {"running": [1, 0, 0], "walking": [0, 1, 0], "jogging": [0.9, 0.3, 0], "strolling": [0.4, 0.9, 0],
             "sneaker": [0.1, 0, 1]}
    kept, dropped = filter_paraphrases({"Running": ["jogging", "strolling", "sneaker"]},
                                       {"Running": ["running"], "Walking": ["walking"]}, _axis_embed(table))
    assert kept == {"Running": ["jogging", "sneaker"]}  # sneaker is far from both: kept unless min_own says no
    assert [d["text"] for d in dropped["Running"]] == ["strolling"]
    d = dropped["Running"][0]
    assert d["nearest"] == "Walking" and d["other"] > d["own"]
    kept, _ = filter_paraphrases({"Running": ["jogging", "sneaker"]}, {"Running": ["running"], "Walking": ["walking"]},
                                 _axis_embed(table), min_own=0.5)
    assert kept == {"Running": ["jogging"]}
    with pytest.raises(ValueError, match="at least two classes"):
        filter_paraphrases({"Running": ["jogging"]}, {"Running": ["running"]}, _axis_embed(table))


def test_filter_margin_rule() -> None:
    """A rewrite nearer its own class, but by less than the margin, is dropped with the reason and the margin."""
    table = {"running": [1, 0, 0], "walking": [0, 1, 0], "jogging": [0.9, 0.3, 0], "trotting": [0.7, 0.65, 0]}
    refs = {"Running": ["running"], "Walking": ["walking"]}
    kept, _ = filter_paraphrases({"Running": ["jogging", "trotting"]}, refs, _axis_embed(table))
    assert kept["Running"] == ["jogging", "trotting"]  # no margin: trotting is (barely) nearer running
    kept, dropped = filter_paraphrases({"Running": ["jogging", "trotting"]}, refs, _axis_embed(table), margin=0.1)
    assert kept["Running"] == ["jogging"]
    assert dropped["Running"][0]["text"] == "trotting"
    assert dropped["Running"][0]["reason"] == "not_nearer_own_class" and dropped["Running"][0]["margin"] == 0.1


def test_filter_drops_rewrites_naming_another_class() -> None:
    """'running' kept for walking (it is near walking in the anchor space) is dropped because it names Running;
    'walking' inside a Walking_upstairs rewrite does not count: it is part of the class's own name."""
    table = {"running": [1, 0, 0], "walking": [0, 1, 0], "walking upstairs": [0, 0.6, 0.8],
             "running slowly": [0.2, 0.9, 0.1], "briskly walking up the stairs": [0, 0.5, 0.86],
             "walking up a ladder": [0, 0.3, 0.95], "a jog": [0.1, 0.95, 0]}
    refs = {"Running": ["running"], "Walking": ["walking"], "Walking_upstairs": ["walking upstairs"]}
    kept, dropped = filter_paraphrases(
        {"Walking": ["running slowly", "a jog"], "Walking_upstairs": ["briskly walking up the stairs",
                                                                      "walking up a ladder"]},
        refs, _axis_embed(table), class_names={"Running": ["jog"]})
    assert kept == {"Walking": [], "Walking_upstairs": ["briskly walking up the stairs", "walking up a ladder"]}
    assert [(d["text"], d["reason"], d["names"], d["nearest"]) for d in dropped["Walking"]] == [
        ("running slowly", "names_other_class", "running", "Running"), ("a jog", "names_other_class", "jog",
                                                                         "Running")]
    # a key's own spelling counts as a name too (walking_upstairs -> "walking upstairs")
    kept, dropped = filter_paraphrases({"Walking": ["walking upstairs"]}, {"Walking": ["walking"], "Walking_upstairs":
                                                                           ["going up the stairs"]},
                                       _axis_embed({**table, "going up the stairs": [0, 0.6, 0.8]}))
    assert kept == {"Walking": []} and dropped["Walking"][0]["names"] == "walking upstairs"


def test_filter_drops_rewrites_repeating_an_evaluation_phrasing() -> None:
    """Equal to an evaluation phrase (articles aside) or containing one that the class's own sources do not:
    dropped; an evaluation phrase already inside the class's own source phrase ('badminton') does not count."""
    table = {"running": [1, 0, 0], "playing badminton": [0, 1, 0], "go for a run": [0.95, 0, 0.3],
             "going for a run quickly": [0.9, 0, 0.4], "a sprint": [0.9, 0.1, 0.3],
             "practising badminton": [0, 0.95, 0.2]}
    refs = {"Running": ["running"], "Badminton": ["playing badminton"]}
    evals = ["a go for a run", "going for a run", "badminton"]
    cands = {"Running": ["go for a run", "going for a run quickly", "a sprint"], "Badminton": ["practising badminton"]}
    kept, dropped = filter_paraphrases(cands, refs, _axis_embed(table), eval_phrasings=evals)
    assert kept == {"Running": ["a sprint"], "Badminton": ["practising badminton"]}
    assert [(d["text"], d["reason"], d["phrasing"]) for d in dropped["Running"]] == [
        ("go for a run", "repeats_evaluation_phrasing", "a go for a run"),
        ("going for a run quickly", "repeats_evaluation_phrasing", "going for a run")]
    kept, _ = filter_paraphrases(cands, refs, _axis_embed(table))  # without the phrasing file all are kept
    assert kept["Running"] == cands["Running"]


def test_filter_summary_counts_reasons(tmp_path: Path) -> None:
    from anyalign.demos.paraphrases import filter_summary

    table = {"running": [1, 0, 0], "walking": [0, 1, 0], "jogging": [0.9, 0.3, 0], "strolling": [0.4, 0.9, 0],
             "running fast": [1, 0.1, 0], "sneaker": [0.1, 0, 1], "a walk": [0.5, 0.5, 0]}
    sources = {"Running": ["running"], "Walking": ["walking"]}
    kept, dropped = filter_paraphrases({"Running": ["jogging", "strolling", "sneaker", "a walk"],
                                        "Walking": ["running fast"]}, sources, _axis_embed(table), min_own=0.5,
                                       eval_phrasings=["a walk"])
    summary = filter_summary(kept, dropped)
    assert summary["kept"] == 1 and summary["dropped"] == 4
    assert summary["dropped_by_reason"] == {"repeats_evaluation_phrasing": 1, "names_other_class": 1,
                                            "not_nearer_own_class": 1, "far_from_own_class": 1}
    assert summary["per_class"]["Walking"] == {"kept": 0, "dropped": 1, "dropped_by_reason": {"names_other_class": 1}}
    doc = read_paraphrase_file(write_paraphrases(tmp_path / "p.json", sources, kept, dropped))
    assert doc["summary"] == json.loads(json.dumps(summary))  # the file says what was dropped and why


def test_filter_with_the_real_anchor(minilm_dir: Path) -> None:
    from anyalign.encoders import create_encoder

    enc = create_encoder("text", pretrained=str(minilm_dir))
    kept, dropped = filter_paraphrases(
        {"Running": ["a person jogging.", "a person strolling slowly."]},
        {"Running": ["a person running."], "Walking": ["a person walking."]},
        lambda texts: enc(texts).pooled)
    assert kept["Running"] == ["a person jogging."]
    assert dropped["Running"][0]["nearest"] == "Walking"


def test_generation_with_a_tiny_llama_and_file_round_trip(tmp_path: Path) -> None:
    model, tok, _ = load_llm(_tiny_llama(tmp_path))
    sources = {"Running": ["running", "jogging"], "Walking": ["walking"]}
    a = generate_paraphrases(model, tok, ["running", "walking"], n=3, seed=1, max_new_tokens=6)
    b = generate_paraphrases(model, tok, ["running", "walking"], n=3, seed=1, max_new_tokens=6)
    assert a == b and set(a) == {"running", "walking"}  # seeded: the same file every time
    assert all(isinstance(t, str) and t for ts in a.values() for t in ts)
    emb = torch.nn.Embedding(len(tok), 8)  # any fixed embedding of the words: the filter only needs a geometry

    def embed(texts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return torch.stack([emb(torch.tensor(tok(t, add_special_tokens=False)["input_ids"] or [0])).mean(0)
                                for t in texts])

    kept, dropped = paraphrase_classes(model, tok, sources, embed, n=4, seed=0, max_new_tokens=6)
    assert set(kept) == set(sources)
    assert all(t not in sources[k] for k, ts in kept.items() for t in ts)  # never the source phrase itself
    path = write_paraphrases(tmp_path / "p.json", sources, kept, dropped, generator={"llm": "tiny", "n": 4})
    assert read_paraphrases(path) == kept
    doc = read_paraphrase_file(path)
    assert doc["generator"]["n"] == 4 and doc["entries"]["Running"]["sources"] == ["running", "jogging"]
    assert sum(len(e["kept"]) + len(e["dropped"]) for e in doc["entries"].values()) == \
        sum(len(v) for v in kept.values()) + sum(len(v) for v in dropped.values())
    (tmp_path / "bad.json").write_text(json.dumps({"entries": {}}))
    with pytest.raises(ValueError, match="format"):
        read_paraphrases(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        read_paraphrases(tmp_path / "missing.json")


def test_clean() -> None:
    assert clean(' "going for a jog". Then more\nsecond line') == "going for a jog."
    assert clean("   \n") is None
    assert clean(" ".join(["word"] * 40)) is None


def test_caption_pool_templates_synonyms_paraphrases(tmp_path: Path) -> None:
    path = write_paraphrases(tmp_path / "p.json", {"Running": ["running"]}, {"Running": ["jogging"]}, {})
    pool = CaptionPool(CaptionSpec(synonyms={"Running": ["sprinting"]}, paraphrases=str(path)),
                       ["a person {label}.", "someone is {label}."], {"Running": "running"})
    caps = pool.captions({"label": "Running", "caption": None})
    assert caps == ["a person running.", "someone is running.", "a person sprinting.", "someone is sprinting.",
                    "a person jogging.", "someone is jogging."]
    assert pool.class_prompts("Running") == ["a person running.", "someone is running."]  # training phrasing only
    assert pool.captions({"label": "Walking", "caption": None})[0] == "a person walking."
    with pytest.raises(FileNotFoundError, match="anyalign data paraphrase"):
        CaptionPool(CaptionSpec(paraphrases=str(tmp_path / "nope.json")), ["{label}"], {})
    with pytest.raises(ValueError, match="synonyms.Running"):
        CaptionPool(CaptionSpec(synonyms={"Running": "jog"}), ["{label}"], {})


def test_dataset_draws_from_the_pool_and_keeps_classes(tmp_path: Path) -> None:
    rows = []
    for i in range(12):
        np.save(tmp_path / f"w{i}.npy", np.zeros((6, 8), np.float32))
        rows.append({"imu": f"w{i}.npy", "label": ["Running", "Walking", "Standing"][i % 3], "key": str(i)})
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = DataSource(kind="jsonl", path=str(tmp_path / "d.jsonl"), caption_templates=["a person {label}."],
                     label_text={"Running": "running"}, classes=["Running", "Walking"],
                     captions=CaptionSpec(synonyms={"Running": ["jogging"]}))
    ds = PairedDataset([src], ["imu"], seed=0)
    assert ds.labels == ["Running", "Walking"] and len(ds) == 8
    drawn = {ds[(e, i)]["caption"] for e in range(6) for i in range(len(ds))}
    assert drawn <= ds.all_captions() == {"a person running.", "a person jogging.", "a person walking."}
    assert {"a person running.", "a person jogging."} <= drawn  # both phrasings are used
    assert ds.class_prompts() == {"Running": ["a person running."], "Walking": ["a person walking."]}
    with pytest.raises(ValueError, match="Jumping"):
        keep_classes(rows, ["Jumping"], "test")


@pytest.mark.slow
def test_real_smollm2_paraphrases_class_names(assets: Path, minilm_dir: Path) -> None:
    from anyalign.encoders import create_encoder

    llm = assets / "llm" / "SmolLM2-135M-Instruct"
    if not any(llm.glob("*.gguf")):
        pytest.skip(f"{llm}: no GGUF file")
    model, tok, _ = load_llm(llm, gguf_file=next(llm.glob("*.gguf")).name)
    enc = create_encoder("text", pretrained=str(minilm_dir))
    kept, dropped = paraphrase_classes(model, tok, {"Running": ["running"], "Walking": ["walking"],
                                                    "Badminton": ["playing badminton"]},
                                       lambda t: enc(t).pooled, n=8, template="a person {}.", min_own=0.5)
    assert sum(map(len, kept.values())) >= 3  # the 135M model writes usable rewrites and the filter keeps some
