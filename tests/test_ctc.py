"""The CTC words head (projectors/ctc.py) and the `ctc` task (align/ctc.py).

The head is checked on a learnable toy signal first (each letter a fixed random frame pattern, held repeatedly, with
noise): trained on some words, it must spell words it never saw, which is the property issue 22 needs (a pooled head
only recognises its training sentences). Then the adapter round trip with a tiny random BERT text side (real
BertModel), and the shipped recipe end to end on real espeak-ng speech with tiny random Whisper + BERT.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from anyalign.adapter import AdapterConfig, ModalityAdapter
from anyalign.encoders.spec import EncoderSpec
from anyalign.projectors import create_projector
from anyalign.projectors.spelling import normalize_text
from tests._retrieval_helpers import WORDS, tiny_bert

LETTERS = " abcdefghijklmnopqrstuvwxyz"
TRAIN_WORDS = ["cat sat", "dog ran", "big red bag", "hot sun", "fun map", "wet log", "tin cup", "jam pot", "fox den",
               "bug hut", "gem kit", "yak zoo", "ox ham", "vet web", "quiz pal", "lid rub", "cab nod", "fig jug"]
NEW_WORDS = ["bad dog", "red cup", "sun den", "big fox"]  # never trained, made of trained letters


def toy_frames(text: str, table: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """3-5 frames per character of `text` (its row of `table` plus noise), like a slow speaker."""
    rows = []
    for c in text:
        n = int(torch.randint(3, 6, (1,), generator=gen))
        rows.append(table[LETTERS.index(c)].expand(n, -1) + 0.3 * torch.randn(n, table.shape[1], generator=gen))
    return torch.cat(rows)


def batch(texts: list[str], table: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    from anyalign.encoders.base import pad_sequences

    return pad_sequences([toy_frames(t, table, gen) for t in texts])


HEAD = {"hidden_dim": 64, "stride": 1, "dropout": 0.0}


@pytest.fixture(scope="module")
def spelling() -> tuple[dict[str, torch.Tensor], torch.Tensor, list[float]]:
    """A ctc head (in 24, out 32) trained on TRAIN_WORDS: its weights, the letter table, the first/last loss."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(len(LETTERS), 24)
    head = create_projector("ctc", in_dim=24, out_dim=32, **HEAD)
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    rng = random.Random(0)
    losses = []
    for _ in range(250):
        texts = rng.sample(TRAIN_WORDS, 8)
        tokens, mask = batch(texts, table, gen)
        loss = head.ctc_loss(tokens, mask, texts)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head.state_dict(), table, losses


def test_ctc_head_spells_words_it_never_heard(spelling) -> None:
    state, table, losses = spelling
    assert losses[-1] < 0.2 * losses[0]
    head = create_projector("ctc", in_dim=24, out_dim=32, **HEAD)
    head.load_state_dict(state)
    head.eval()
    gen = torch.Generator().manual_seed(1)
    tokens, mask = batch(NEW_WORDS, table, gen)
    assert head.transcribe(tokens, mask) == NEW_WORDS
    scores = head.score(tokens, mask, NEW_WORDS + ["zzz qqq"])  # [4, 5]: the spoken text is the most likely
    assert scores.shape == (4, 5) and scores.argmax(1).tolist() == [0, 1, 2, 3]


def test_ctc_head_rejects_contrastive_training_and_bad_options() -> None:
    head = create_projector("ctc", in_dim=8, out_dim=16)
    with pytest.raises(RuntimeError, match="'ctc' task"):
        head(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="odd kernel"):
        create_projector("ctc", in_dim=8, out_dim=16, kernel=4)
    assert normalize_text("Déjà-vu, ISN'T it? 42", LETTERS + "'") == "deja vu isn't it"


def test_ctc_adapter_embeds_what_it_heard_with_its_space_text_side(tmp_path: Path) -> None:
    text_dir = tiny_bert(tmp_path / "bert")
    text = EncoderSpec("text", str(text_dir))
    spec = EncoderSpec("imu", None, {"channels": 3, "dim": 16, "depth": 1, "heads": 2})
    cfg = AdapterConfig(modality="imu", encoder=spec, in_dim=16, embed_dim=32,
                        embed_projector={"name": "ctc", "hidden_dim": 16, "alphabet": " abcdefghijklmnopqrstuvwxyz"},
                        space={"text": text})
    torch.manual_seed(0)
    adapter = ModalityAdapter(cfg).eval()
    feats = torch.randn(3, 40, 16)
    from anyalign.encoders import EncoderOutput

    out = EncoderOutput(feats, torch.ones(3, 40, dtype=torch.bool), feats.mean(1))
    heard = adapter.embed_head.transcribe(feats)
    emb = adapter.embed(out)
    want = adapter.embed_head.embed_texts(heard)
    assert torch.allclose(emb, want, atol=1e-6)
    adapter.save_pretrained(tmp_path / "adapter")
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "adapter" / "anyalign_adapter.safetensors")
    assert saved and all(k.startswith("embed_head.") for k in saved)  # the text encoder is not saved with it
    again = ModalityAdapter.from_pretrained(tmp_path / "adapter", load_encoder=False).eval()
    assert again.embed_head.transcribe(feats) == heard
    assert torch.allclose(again.embed(out), emb, atol=1e-6)
    assert set(WORDS) and again.embed_head.config["text_encoder"]["pretrained"] == str(text_dir)


def test_ctc_lexicon_embeds_each_clip_as_its_most_likely_candidate(tmp_path: Path) -> None:
    text = EncoderSpec("text", str(tiny_bert(tmp_path / "bert")))
    head = create_projector("ctc", in_dim=16, out_dim=32, hidden_dim=16)
    head.bind_space({"text": text})
    head.eval()
    torch.manual_seed(1)
    feats = torch.randn(4, 30, 16)
    lexicon = ["a red dog", "a cat", "the big red bag"]
    scores = head.score(feats, None, lexicon)
    head.constrain(lexicon, temperature=0.01)
    emb = head(feats).tokens[:, 0]  # [4, E]
    nearest = (emb @ head.embed_texts(lexicon).T).argmax(1)
    assert nearest.tolist() == scores.argmax(1).tolist()
    head.constrain(None)
    assert torch.allclose(head(feats).tokens[:, 0], head.embed_texts(head.transcribe(feats)), atol=1e-6)


def test_ctc_padding_does_not_change_valid_steps() -> None:
    torch.manual_seed(0)
    head = create_projector("ctc", in_dim=8, out_dim=16, hidden_dim=16).eval()
    x = torch.randn(1, 10, 8)
    padded = torch.cat([x, 100 * torch.randn(1, 6, 8)], 1)
    mask = torch.arange(16)[None] < 10
    lp, n = head.log_probs(x)
    lp_pad, n_pad = head.log_probs(padded, mask)
    assert int(n) == int(n_pad) == 5 and torch.allclose(lp[0, :5], lp_pad[0, :5], atol=1e-5)


def _tiny_causal_lm() -> tuple[object, object]:
    """A real (tiny, random) Llama and a byte-level BPE tokenizer trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TRAIN_WORDS * 3 + ["what was said?"], trainers.BpeTrainer(
        vocab_size=120, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval(), fast


def test_heard_llm_head_hands_the_llm_the_transcript_as_text(tmp_path: Path, spelling) -> None:
    from anyalign.encoders import EncoderOutput
    from anyalign.llm import MultimodalLM

    text = EncoderSpec("text", str(tiny_bert(tmp_path / "bert")))
    cfg = dict(modality="speech", encoder="features", in_dim=24, embed_dim=32, llm_dim=32, space={"text": text},
               embed_projector={"name": "ctc", **HEAD})
    with pytest.raises(ValueError, match="embed_projector: {name: ctc}"):
        ModalityAdapter(AdapterConfig(**{**cfg, "embed_projector": {"name": "linear"}},
                                      llm_projector={"name": "heard"}))
    adapter = ModalityAdapter(AdapterConfig(**cfg, llm_projector={"name": "heard", "template": '"{}"'}))
    state, table, _ = spelling
    adapter.embed_head.load_state_dict(state)  # a head that spells, so the transcript is known
    adapter.eval()
    gen = torch.Generator().manual_seed(1)
    tokens, mask = batch(NEW_WORDS[:2], table, gen)
    feats = EncoderOutput(tokens, mask, tokens.mean(1))
    assert adapter.transcribe(feats) == NEW_WORDS[:2]
    llm, tok = _tiny_causal_lm()
    mllm = MultimodalLM(llm, tok, {"speech": adapter})
    prep = mllm.prepare(["<speech>\nwhat was said?"] * 2, features={"speech": feats}, chat_template=False)
    for row, heard in zip(prep.layout.input_ids.tolist(), NEW_WORDS[:2]):
        want = tok(f'"{heard}"\nwhat was said?', add_special_tokens=False)["input_ids"]
        assert row[-len(want):] == want  # the LLM reads what was heard, as the same words typed
    assert not prep.layout.soft_mask.any()
    assert len(mllm.generate(["<speech>\nwhat was said?"], features={"speech": feats[:1]}, max_new_tokens=3,
                             do_sample=False)) == 1
    adapter.save_pretrained(tmp_path / "adapter")
    again = ModalityAdapter.from_pretrained(tmp_path / "adapter", load_encoder=False).eval()
    assert again.llm_head.text("hi") == '"hi"' and again.transcribe(feats) == NEW_WORDS[:2]


def test_word_speller_picks_the_likeliest_list_word_near_each_heard_word(tmp_path: Path, spelling) -> None:
    from anyalign.projectors.spelling import WordSpeller

    speller = WordSpeller({"red": 5, "bed": 0, "cup": 1, "sun": 0})
    assert speller.near("rad") == ["bed", "rad", "red"]  # within 2 edits, and the heard spelling itself
    flat = lambda texts: torch.zeros(len(texts))  # noqa: E731  (acoustics undecided: the counts choose)
    assert speller.spell("rad cup", flat) == "red cup"
    bed = lambda texts: torch.tensor([10.0 if t.startswith("bed") else 0.0 for t in texts])  # noqa: E731
    assert speller.spell("rad cup", bed) == "bed cup"  # the acoustics outweigh the prior
    (tmp_path / "bad.txt").write_text("red 3\ncup many\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: expected 'word' or 'word count'"):
        WordSpeller.from_file(tmp_path / "bad.txt", LETTERS)
    # through the head: a word list of the training words spells new phrases made of them, as the letters did
    (tmp_path / "words.txt").write_text("\n".join(sorted({w for t in TRAIN_WORDS for w in t.split()})) + "\n")
    state, table, _ = spelling
    head = create_projector("ctc", in_dim=24, out_dim=32, **HEAD, vocabulary=str(tmp_path / "words.txt"))
    head.load_state_dict(state)
    head.eval()
    tokens, mask = batch(NEW_WORDS, table, torch.Generator().manual_seed(1))
    assert head.transcribe(tokens, mask) == NEW_WORDS
    missing = create_projector("ctc", in_dim=24, out_dim=32, vocabulary=str(tmp_path / "none.txt"))
    with pytest.raises(FileNotFoundError, match="none.txt: word list not found"):
        missing.transcribe(tokens, mask)
