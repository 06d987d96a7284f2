"""MultimodalLM: exactness without adapters, splicing, padding, caption loss, errors, RVQ codes, LoRA, bundles, CLI.

Tiny randomly initialised Llama / Qwen2 / GPT-2 models (real transformers classes) with a small byte-level BPE
tokenizer trained here; the real SmolLM2-135M-Instruct GGUF when the assets are available.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from torch import nn
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from anyalign.adapter import AdapterConfig, ModalityAdapter, build_adapter
from anyalign.encoders import EncoderOutput
from anyalign.encoders.custom import wrap_module
from anyalign.llm import BUNDLE_CONFIG, IGNORE_INDEX, MultimodalLM
from anyalign.projectors import list_projectors
from tests._cli import run_cli as _cli

HIDDEN = 32
CORPUS = ["the person is walking, running, standing or playing badminton.",
          "What is the person doing? Describe this image, this audio and this video.",
          "A dog barks while a car passes by the house in the rain."] * 10
CHAT_TEMPLATE = ("{% for m in messages %}<|user|>{{ m['content'] }}<|eos|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _tokenizer(chat: bool = False) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|pad|>", "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>"]
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<|bos|> $A",
                                                       special_tokens=[("<|bos|>", tok.token_to_id("<|bos|>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>",
                                   pad_token="<|pad|>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def _llm(kind: str, vocab: int) -> nn.Module:
    torch.manual_seed(0)
    if kind == "llama":
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=96)
        return LlamaForCausalLM(cfg).eval()
    if kind == "qwen2":
        cfg = Qwen2Config(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=96)
        return Qwen2ForCausalLM(cfg).eval()
    cfg = GPT2Config(vocab_size=vocab, n_embd=HIDDEN, n_layer=2, n_head=4, n_positions=96)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return _tokenizer()


@pytest.fixture(scope="module")
def llm_dirs(tmp_path_factory: pytest.TempPathFactory, tok: PreTrainedTokenizerFast) -> dict[str, Path]:
    """Tiny LLM folders (so bundles can reference their base LLM), one per architecture."""
    out = {}
    for kind in ("llama", "qwen2", "gpt2"):
        path = tmp_path_factory.mktemp(kind)
        _llm(kind, len(tok)).save_pretrained(path)
        tok.save_pretrained(path)
        out[kind] = path
    return out


def _adapter(modality: str, in_dim: int = 8, projector: str = "linear", **opts) -> ModalityAdapter:
    torch.manual_seed(1)
    cfg = AdapterConfig(modality=modality, encoder="features", in_dim=in_dim, llm_dim=HIDDEN,
                        llm_projector={"name": projector, **opts})
    return ModalityAdapter(cfg).eval()


def _feats(n: int, t: int = 4, d: int = 8, valid: list[int] | None = None) -> EncoderOutput:
    mask = torch.ones(n, t, dtype=torch.bool)
    for i, v in enumerate(valid or []):
        mask[i, v:] = False
    return EncoderOutput(torch.randn(n, t, d), mask, torch.randn(n, d))


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_zero_adapters_equal_plain_llm(kind: str, llm_dirs: dict[str, Path], tok) -> None:
    mm = MultimodalLM.from_pretrained(llm_dirs[kind])
    plain = mm.llm
    prompt = "What is the person doing?"
    ids = tok(prompt, return_tensors="pt").input_ids
    assert ids[0, 0] == tok.bos_token_id  # the special-token prefix path is exercised
    assert torch.equal(mm([prompt]).logits, plain(ids).logits)
    ours = mm.generate([prompt], max_new_tokens=8, do_sample=False)
    ref = plain.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                         pad_token_id=tok.pad_token_id)
    assert ours == tok.batch_decode(ref[:, ids.shape[1]:], skip_special_tokens=True)


def test_chat_template_wraps_prompt_and_keeps_placeholders(llm_dirs: dict[str, Path]) -> None:
    chat_tok = _tokenizer(chat=True)
    mm = MultimodalLM.from_pretrained(llm_dirs["llama"], {"imu": _adapter("imu")}, tokenizer=chat_tok)
    assert mm.use_chat_template
    ids = chat_tok.apply_chat_template([{"role": "user", "content": "hi there"}], add_generation_prompt=True,
                                       return_tensors="pt", return_dict=True)["input_ids"]
    assert torch.equal(mm(["hi there"]).logits, mm.llm(ids).logits)
    prep = mm.prepare(["<imu> hi"], features={"imu": _feats(1)})
    user = chat_tok.convert_tokens_to_ids("<|user|>")
    assert prep.layout.input_ids[0, 0] == user and prep.layout.soft_mask[0, 1:5].all()


def test_spliced_positions_carry_adapter_tokens(llm_dirs: dict[str, Path], tok) -> None:
    imu, image = _adapter("imu"), _adapter("image", in_dim=6, projector="mlp")
    mm = MultimodalLM.from_pretrained(llm_dirs["llama"], {"imu": imu, "image": image})
    f_imu, f_img = _feats(3, valid=[4, 2, 3]), _feats(1, t=5, d=6)
    prompts = ["<imu> then <image> and <imu>", "walking <imu>"]  # interleaved, any order
    prep = mm.prepare(prompts, features={"imu": f_imu, "image": f_img})
    soft_imu, soft_img = imu.soft_tokens(f_imu), image.soft_tokens(f_img)
    expected = torch.cat([soft_imu.tokens[0, :4], soft_img.tokens[0], soft_imu.tokens[1, :2],
                          soft_imu.tokens[2, :3]])  # reading order across the batch, valid tokens only
    lay = prep.layout
    assert int(lay.soft_mask.sum()) == 4 + 5 + 2 + 3
    assert torch.equal(prep.embeds[lay.soft_mask], expected)
    text = ~lay.soft_mask & lay.attention_mask.bool()
    assert torch.equal(prep.embeds[text], mm.llm.get_input_embeddings()(lay.input_ids[text]))
    # the LLM really receives them: its first hidden state is the spliced embedding
    out = mm(prompts, features={"imu": f_imu, "image": f_img}, output_hidden_states=True)
    assert torch.equal(out.hidden_states[0][lay.soft_mask], expected)
    valid = lay.attention_mask[1].bool()
    assert torch.equal(lay.position_ids[1][valid], torch.arange(int(valid.sum())))


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_batch_matches_one_by_one(kind: str, llm_dirs: dict[str, Path]) -> None:
    mm = MultimodalLM.from_pretrained(llm_dirs[kind], {"imu": _adapter("imu")})
    prompts = ["<imu> What is the person doing?", "Describe <imu> and <imu> briefly, please", "<imu>"]
    feats = _feats(4, valid=[4, 1, 3, 2])
    slices = [feats[0:1], feats[1:3], feats[3:4]]
    batch = mm(prompts, features={"imu": feats})
    assert (batch.attention_mask == 0).any()  # rows of different lengths -> left padding
    for i, (p, f) in enumerate(zip(prompts, slices)):
        single = mm([p], features={"imu": f})
        valid = batch.attention_mask[i].bool()
        torch.testing.assert_close(batch.logits[i][valid], single.logits[0], atol=1e-4, rtol=1e-4)
    together = mm.generate(prompts, features={"imu": feats}, max_new_tokens=6, do_sample=False)
    alone = [mm.generate([p], features={"imu": f}, max_new_tokens=6, do_sample=False)[0]
             for p, f in zip(prompts, slices)]
    assert together == alone


def test_caption_loss_only_on_targets(llm_dirs: dict[str, Path], tok) -> None:
    adapter = _adapter("imu")
    mm = MultimodalLM.from_pretrained(llm_dirs["qwen2"], {"imu": adapter})
    params = mm.set_trainable(adapters=True, lora=False)
    assert params and all(p.requires_grad for p in adapter.llm_head.parameters())
    assert not any(p.requires_grad for p in mm.llm.parameters())
    prompts, targets = ["<imu> What is happening?", "Say: <imu>"], ["walking", "a dog barks"]
    feats = _feats(2, valid=[4, 2])
    prep = mm.prepare(prompts, targets, features={"imu": feats})
    labels = prep.layout.labels
    assert (labels[prep.layout.soft_mask] == IGNORE_INDEX).all()
    assert (labels[prep.layout.attention_mask == 0] == IGNORE_INDEX).all()
    for i, target in enumerate(targets):
        want = tok(target, add_special_tokens=False).input_ids + [tok.eos_token_id]
        assert labels[i][labels[i] != IGNORE_INDEX].tolist() == want
    out = mm(prompts, targets, features={"imu": feats})
    logits, shifted = out.logits[:, :-1], labels[:, 1:]
    keep = shifted != IGNORE_INDEX
    manual = nn.functional.cross_entropy(logits[keep], shifted[keep])
    torch.testing.assert_close(out.loss, manual)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.llm_head.parameters())
    assert all(p.grad is None for p in mm.llm.parameters())


def test_bad_input_raises_before_compute(llm_dirs: dict[str, Path]) -> None:
    adapter = _adapter("imu")
    mm = MultimodalLM.from_pretrained(llm_dirs["llama"], {"imu": adapter})
    calls = []
    mm.llm.register_forward_pre_hook(lambda *a: calls.append("llm"))
    adapter.llm_head.register_forward_pre_hook(lambda *a: calls.append("adapter"))
    with pytest.raises(ValueError, match=r"2 <imu> placeholder\(s\) but 1 imu input"):
        mm(["<imu> and <imu>"], features={"imu": _feats(1)})
    with pytest.raises(ValueError, match=r"0 <imu> placeholder\(s\) but 1 imu input"):
        mm.generate(["no placeholder"], features={"imu": _feats(1)})
    with pytest.raises(ValueError, match="placeholder <image> but no 'image' adapter"):
        mm(["<image> what?"])
    with pytest.raises(ValueError, match="no 'audio' adapter is loaded"):
        mm(["hello"], inputs={"audio": ["a.wav"]})
    with pytest.raises(ValueError, match="features\\['imu'\\]: tokens width 5, the imu adapter expects in_dim=8"):
        mm(["<imu>"], features={"imu": _feats(1, d=5)})
    with pytest.raises(ValueError, match="exceed the LLM context length 96"):
        mm(["walking " * 100])
    with pytest.raises(ValueError, match="exceed the LLM context length 96"):
        mm.generate(["walking " * 40], max_new_tokens=60)
    assert calls == []
    with pytest.raises(ValueError, match="tokens \\(text \\+ media\\)"):  # only media push it over: the adapter
        mm(["<imu>" * 30], features={"imu": _feats(30)})  # runs, the LLM does not
    assert "llm" not in calls
    with pytest.raises(ValueError, match="output width llm_dim=16 does not match the LLM hidden size 32"):
        bad = ModalityAdapter(AdapterConfig(modality="imu", encoder="x", in_dim=8, llm_dim=16,
                                            llm_projector={"name": "linear"}))
        MultimodalLM(mm.llm, mm.tokenizer, {"imu": bad})


def test_streaming_matches_generate(llm_dirs: dict[str, Path]) -> None:
    from transformers import TextStreamer

    mm = MultimodalLM.from_pretrained(llm_dirs["gpt2"], {"imu": _adapter("imu")})
    feats = {"imu": _feats(1)}
    full = mm.generate(["<imu> the person"], features=feats, max_new_tokens=10, do_sample=False)[0]
    pieces = list(mm.generate(["<imu> the person"], features=feats, max_new_tokens=10, do_sample=False,
                              stream=True))
    assert "".join(pieces) == full
    seen = []

    class Collect(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            seen.append(text)

    mm.generate(["<imu> the person"], features=feats, max_new_tokens=10, streamer=Collect(mm.tokenizer,
                                                                                          skip_prompt=True))
    assert "".join(seen).strip() == full.strip()
    with pytest.raises(ValueError, match="placeholder"):  # errors surface in the caller, not the thread
        mm.stream("<imu> <imu>", features=feats)


def test_bundle_roundtrip_and_lora(llm_dirs: dict[str, Path], tmp_path: Path) -> None:
    adapter = _adapter("imu", projector="mlp")
    mm = MultimodalLM.from_pretrained(llm_dirs["llama"], {"imu": adapter})
    mm.add_lora(r=4, alpha=8)
    params = mm.set_trainable()
    assert any("lora_" in n for n, p in mm.named_parameters() if p.requires_grad)
    assert all("lora_" in n or n.startswith("adapters.") for n, p in mm.named_parameters() if p.requires_grad)
    prompts, targets = ["<imu> What is the person doing?"], ["walking"]
    feats = {"imu": _feats(1)}
    opt = torch.optim.AdamW(params, lr=1e-2)
    before = mm(prompts, targets, features=feats).loss
    for _ in range(3):
        loss = mm(prompts, targets, features=feats).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    mm.eval()
    assert mm(prompts, targets, features=feats).loss < before
    ref = mm(prompts, features=feats).logits

    mm.save_pretrained(tmp_path / "bundle")
    cfg = json.loads((tmp_path / "bundle" / BUNDLE_CONFIG).read_text())
    assert cfg["llm"]["name_or_path"] == str(llm_dirs["llama"].resolve()) and cfg["lora"] and not cfg["llm_saved"]
    assert (tmp_path / "bundle" / "adapters" / "imu" / "anyalign_adapter.json").is_file()
    assert (tmp_path / "bundle" / "lora" / "adapter_config.json").is_file()
    assert not (tmp_path / "bundle" / "llm").exists()
    loaded = MultimodalLM.from_pretrained(tmp_path / "bundle", load_encoders=False)
    assert loaded.has_lora
    torch.testing.assert_close(loaded(prompts, features=feats).logits, ref)

    merged = MultimodalLM.from_pretrained(tmp_path / "bundle", load_encoders=False, merge_lora=True)
    assert merged.has_lora and merged.lora_merged_in_place  # merged in place: LoRA still saved separately
    torch.testing.assert_close(merged(prompts, features=feats).logits, ref, atol=1e-4, rtol=1e-4)
    merged.save_pretrained(tmp_path / "in_place")
    assert (tmp_path / "in_place" / "lora" / "adapter_config.json").is_file()
    merged.merge_lora(unload=True)
    assert not merged.has_lora and merged.lora_merged
    torch.testing.assert_close(merged(prompts, features=feats).logits, ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="merged weights must be saved"):
        merged.save_pretrained(tmp_path / "m", save_llm=False)
    merged.save_pretrained(tmp_path / "merged")
    assert json.loads((tmp_path / "merged" / BUNDLE_CONFIG).read_text())["llm_saved"]
    again = MultimodalLM.from_pretrained(tmp_path / "merged", load_encoders=False)
    torch.testing.assert_close(again(prompts, features=feats).logits, ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="do not pass adapters="):
        MultimodalLM.from_pretrained(tmp_path / "bundle", {"imu": adapter})


def test_adapter_folders_with_encoder(llm_dirs: dict[str, Path], tmp_path: Path) -> None:
    enc = wrap_module(nn.Sequential(nn.Linear(6, 8), nn.GELU()), modality="imu", token_dim=8,
                      collate=lambda xs: torch.stack([torch.as_tensor(x, dtype=torch.float32) for x in xs]))
    adapter = build_adapter("imu", enc.freeze(), llm_dim=HIDDEN, llm_projector={"name": "linear", "stride": 2})
    adapter.save_pretrained(tmp_path / "imu")
    mm = MultimodalLM.from_pretrained(str(llm_dirs["gpt2"]), {"imu": adapter}, device="cpu")
    raw = [torch.randn(10, 6), torch.randn(10, 6)]
    via_inputs = mm(["<imu> vs <imu>"], inputs={"imu": raw}).logits
    via_features = mm(["<imu> vs <imu>"], features={"imu": adapter.encode(raw)}).logits
    assert torch.equal(via_inputs, via_features)
    from_dir = MultimodalLM.from_pretrained(llm_dirs["gpt2"], {"imu": tmp_path / "imu"}, load_encoders=False)
    assert torch.equal(from_dir(["<imu> vs <imu>"], features={"imu": adapter.encode(raw)}).logits, via_features)


@pytest.mark.skipif("rvq" not in list_projectors(), reason="rvq projector not available")
def test_rvq_adapter_extends_vocabulary(llm_dirs: dict[str, Path], tmp_path: Path, tok) -> None:
    adapter = _adapter("audio", projector="rvq", num_quantizers=2, codebook_size=8, code_dim=4, kmeans_init=False)
    mm = MultimodalLM.from_pretrained(llm_dirs["qwen2"], {"audio": adapter, "imu": _adapter("imu")})
    base = len(tok)
    assert mm.base_vocab_size == base and mm.code_offsets == {"audio": base}
    assert mm.llm.get_input_embeddings().num_embeddings == base + 16
    feats, imu = _feats(2, valid=[4, 3]), _feats(1)
    prompts = ["<audio> <imu> what?", "sound: <audio>"]
    prep = mm.prepare(prompts, features={"audio": feats, "imu": imu})
    ids = prep.layout.input_ids
    out = adapter.soft_tokens(feats)
    vocab = adapter.llm_head.codes_to_vocab(out.codes, base)  # [2, 8]
    codes = ids[ids >= base]
    assert torch.equal(codes, torch.cat([vocab[0], vocab[1, :6]]))  # valid tokens x 2 quantizers each
    assert int(prep.layout.soft_mask.sum()) == 4  # the imu soft tokens are still spliced
    assert torch.equal(prep.embeds[ids >= base], mm.code_embeddings(codes - base))
    text = mm.generate(prompts, features={"audio": feats, "imu": imu}, max_new_tokens=5, do_sample=False)
    assert len(text) == 2
    mm.set_trainable()
    loss = mm(prompts, ["a dog", "rain"], features={"audio": feats, "imu": imu}).loss
    loss.backward()
    grad = mm.code_embeddings.weight.grad
    assert grad is not None and grad[(codes - base).unique()].abs().sum() > 0
    with torch.no_grad():
        mm.code_embeddings.weight.add_(1.0)
    mm.eval()
    ref = mm(prompts, features={"audio": feats, "imu": imu}).logits
    mm.save_pretrained(tmp_path / "b")
    loaded = MultimodalLM.from_pretrained(tmp_path / "b", load_encoders=False)
    assert torch.equal(loaded.code_embeddings.weight, mm.code_embeddings.weight)
    assert torch.equal(loaded(prompts, features={"audio": feats, "imu": imu}).logits, ref)


def test_cli_chat(llm_dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from anyalign.cli.chat import build_prompt

    assert build_prompt("What?", ["imu", "imu"], ["imu"]) == "<imu>\n<imu>\nWhat?"
    assert build_prompt("<imu> What?", ["imu"], ["imu"]) == "<imu> What?"
    mm = MultimodalLM.from_pretrained(llm_dirs["llama"])
    want = mm.generate(["the person is"], max_new_tokens=4, do_sample=False)[0]
    capsys.readouterr()
    for flag in ("--stream", "--no-stream"):
        assert _cli(["chat", "--llm", str(llm_dirs["llama"]), "--max-new-tokens", "4", flag, "the person is"]) == 0
        assert capsys.readouterr().out == want + "\n"
    assert _cli(["chat", "--llm", str(llm_dirs["llama"]), "--input", "imu=/nonexistent.npy", "hi"]) == 2
    assert "no --adapter imu=DIR given" in capsys.readouterr().err
    assert _cli(["chat", "--llm", str(llm_dirs["llama"]), "--adapter", "imu=/x", "--input", "imu=/no.npy", "hi"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert _cli(["chat", "--llm", str(llm_dirs["llama"]), "--adapter", "imu", "hi"]) == 2
    assert "expected MODALITY=PATH" in capsys.readouterr().err
    assert _cli(["chat", "--llm", str(llm_dirs["llama"]), "<imu> hi"]) == 2
    assert "no 'imu' adapter is loaded" in capsys.readouterr().err


# --- the real SmolLM2-135M-Instruct (GGUF) ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm(assets: Path) -> MultimodalLM:
    folder = assets / "llm" / "SmolLM2-135M-Instruct"
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not (folder / name).is_file():
        pytest.skip(f"{folder / name} missing")
    adapter = ModalityAdapter(AdapterConfig(modality="imu", encoder="features", in_dim=8, llm_dim=576,
                                            llm_projector={"name": "mlp"})).eval()
    return MultimodalLM.from_pretrained(folder, {"imu": adapter}, gguf_file=name)


def test_smollm2_zero_adapter_generate_and_soft_tokens(smollm: MultimodalLM, tmp_path: Path) -> None:
    tok, llm = smollm.tokenizer, smollm.llm
    assert smollm.use_chat_template and smollm.hidden_size == 576
    prompt = "What is the capital of France?"
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    ref = llm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    want = tok.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)
    assert smollm.generate([prompt], max_new_tokens=12, do_sample=False) == [want]
    assert "Paris" in want  # the real weights answer sensibly
    feats = {"imu": _feats(1, t=6)}
    out = smollm.generate(["<imu>\nWhat is the person doing?"], features=feats, max_new_tokens=8, do_sample=False)
    assert isinstance(out[0], str) and out[0].strip()
    smollm.save_pretrained(tmp_path / "b")
    cfg = json.loads((tmp_path / "b" / BUNDLE_CONFIG).read_text())
    assert cfg["llm"]["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and not cfg["llm_saved"]
    assert cfg["llm"]["name_or_path"] == "asset:smollm2"  # portable: this machine's asset path is not recorded
    assert not (tmp_path / "b" / "llm").exists()
