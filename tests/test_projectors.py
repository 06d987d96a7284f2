"""Projector zoo: generic checks for every registered projector, plus perceiver / universal / rvq specifics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from anyalign.adapter import ModalityAdapter, build_adapter
from anyalign.encoders import create_encoder, pad_sequences
from anyalign.encoders.custom import wrap_module
from anyalign.projectors import PROJECTORS, Projector, create_projector, list_projectors

IN, OUT = 24, 20
MODALITY = "imu"
# Small options per projector; a projector not listed here is tested with its defaults.
OPTIONS: dict[str, dict[str, Any]] = {
    "mlp": {"stride": 2},
    "perceiver": {"num_latents": 6, "dim": 32, "heads": 4, "qk_norm": True, "cosine_attention": True},
    "qformer": {"num_queries": 5, "dim": 32, "heads": 4, "depth": 3, "cross_attention_every": 2},
    "universal": {"modalities": [MODALITY, "audio"], "num_modality_tokens": 4, "dim": 32, "heads": 4,
                  "num_experts": 2},
    "rvq": {"num_quantizers": 3, "codebook_size": 16, "code_dim": 8, "stride": 2},
}
ALL_NAMES = list_projectors()
# projectors whose output gradients flow through (the CTC words head, which embeds its transcript as text and
# trains through the ctc task, is tested in test_ctc.py)
NAMES = [n for n in ALL_NAMES if PROJECTORS.get(n).differentiable]


def make(name: str, **extra: Any) -> Projector:
    return create_projector(name, in_dim=IN, out_dim=OUT, **{**OPTIONS.get(name, {}), **extra}).eval()


def padded_batch(lengths: list[int], extra: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens with right padding filled by large garbage values."""
    t = max(lengths) + extra
    x = torch.randn(len(lengths), t, IN)
    mask = torch.arange(t)[None] < torch.tensor(lengths)[:, None]
    return torch.where(mask[..., None], x, 100 * torch.randn_like(x)), mask


def test_all_designs_registered() -> None:
    assert {"linear", "mlp", "perceiver", "qformer", "universal", "rvq"} <= set(NAMES)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_docstring_names_design_with_citation(name: str) -> None:
    first = (PROJECTORS.get(name).__doc__ or "").strip().splitlines()[0]
    assert re.search(r"\(.*(19|20)\d\d.*\)", first), f"{name}: first docstring line lacks '(paper, year)': {first}"


@pytest.mark.parametrize("name", NAMES)
def test_shapes_with_masks_and_variable_lengths(name: str) -> None:
    p = make(name)
    x, mask = padded_batch([9, 4, 1])
    out = p(x, mask, modality=MODALITY)
    assert out.tokens.dim() == 3 and out.tokens.shape[0] == 3 and out.tokens.shape[-1] == OUT
    assert out.mask.dtype == torch.bool and out.mask.shape == out.tokens.shape[:2]
    assert out.mask.any(1).all() and torch.isfinite(out.tokens).all()
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.losses.values())
    if out.codes is not None:
        assert out.codes.dtype == torch.long and out.codes.shape[:2] == out.tokens.shape[:2]
    # no mask == all-valid mask; a sample without any valid token still gives finite output
    full = torch.ones(3, x.shape[1], dtype=torch.bool)
    assert torch.equal(p(x, None, modality=MODALITY).tokens, p(x, full, modality=MODALITY).tokens)
    empty = p(x, torch.zeros_like(mask), modality=MODALITY)
    assert torch.isfinite(empty.tokens).all()


@pytest.mark.parametrize("name", NAMES)
def test_padding_does_not_change_valid_outputs(name: str) -> None:
    p = make(name)
    lengths = [9, 4]
    x, mask = padded_batch(lengths, extra=5)
    batch = p(x, mask, modality=MODALITY)
    for i, n in enumerate(lengths):
        alone = p(x[i:i + 1, :n], modality=MODALITY)  # the same sample, unpadded
        k = alone.tokens.shape[1]
        valid = alone.mask[0]
        assert torch.equal(batch.mask[i, :k], valid) and not batch.mask[i, k:].any()
        torch.testing.assert_close(batch.tokens[i, :k][valid], alone.tokens[0][valid], atol=2e-5, rtol=1e-4)
        if alone.codes is not None:
            assert torch.equal(batch.codes[i, :k][valid], alone.codes[0][valid])


class _SeqNet(nn.Module):
    """A tiny sequence encoder taking padded `[B, T, 6]` inputs with a mask (bring-your-own encoder)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, IN), nn.GELU())

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x), mask


def _collate(items: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    x, mask = pad_sequences([torch.as_tensor(i, dtype=torch.float32) for i in items])
    return {"x": x, "mask": mask}


def _frozen_encoder() -> nn.Module:
    return wrap_module(_SeqNet(), modality=MODALITY, token_dim=IN, collate=_collate).freeze()


def _adapter(name: str) -> ModalityAdapter:
    spec = {"name": name, **OPTIONS.get(name, {})}
    return build_adapter(MODALITY, _frozen_encoder(), embed_dim=16, embed_projector=spec, llm_dim=OUT,
                         llm_projector=spec)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_projectors_only(name: str) -> None:
    adapter = _adapter(name).train()
    feats = adapter.encode([torch.randn(10, 6), torch.randn(4, 6), torch.randn(7, 6)])
    assert not feats.tokens.requires_grad  # frozen encoder: detached features
    emb, losses = adapter.embed_output(feats)
    soft = adapter.soft_tokens(feats)
    loss = emb[:, 0].sum() + soft.tokens.pow(2).mean() + sum(losses.values()) + sum(soft.losses.values())
    loss.backward()
    assert all(p.grad is None for p in adapter.encoder.parameters())
    for pname, param in adapter.named_parameters():
        if pname.startswith("encoder.") or ".audio" in pname:  # unused modality of the universal projector
            continue
        assert param.requires_grad and param.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, f"{pname}: zero/NaN gradient"


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_seed(name: str) -> None:
    torch.manual_seed(7)
    a = make(name)
    torch.manual_seed(7)
    b = make(name)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    x, mask = padded_batch([6, 3])
    out = a(x, mask, modality=MODALITY).tokens
    assert torch.equal(out, b(x, mask, modality=MODALITY).tokens)
    assert torch.equal(out, a(x, mask, modality=MODALITY).tokens)


@pytest.mark.parametrize("name", NAMES)
def test_spec_rebuilds_the_projector(name: str) -> None:
    p = make(name)
    spec = json.loads(json.dumps(p.spec()))  # JSON-able, as in an adapter config
    assert spec["name"] == name and spec["in_dim"] == IN and spec["out_dim"] == OUT
    q = create_projector(**spec).eval()
    assert q.spec() == spec
    q.load_state_dict(p.state_dict())  # strict: same parameter and buffer names and shapes
    x, mask = padded_batch([5, 2])
    assert torch.equal(p(x, mask, modality=MODALITY).tokens, q(x, mask, modality=MODALITY).tokens)


@pytest.mark.parametrize("name", NAMES)
def test_adapter_save_load_roundtrip(name: str, tmp_path: Path) -> None:
    adapter = _adapter(name)
    if name == "rvq":  # a few training steps so EMA state and restarts are part of what is saved
        adapter.train()
        for _ in range(3):
            adapter.soft_tokens(adapter.encode([torch.randn(8, 6) for _ in range(4)]))
    adapter.eval()
    feats = adapter.encode([torch.randn(7, 6), torch.randn(3, 6)])
    adapter.save_pretrained(tmp_path / "a")
    loaded = ModalityAdapter.from_pretrained(tmp_path / "a", load_encoder=False)
    assert torch.equal(loaded.embed(feats), adapter.embed(feats))
    a, b = adapter.soft_tokens(feats), loaded.soft_tokens(feats)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)
    if a.codes is not None:
        assert torch.equal(a.codes, b.codes)


# --- perceiver ----------------------------------------------------------------------------------------
def test_perceiver_options_and_rope_grid() -> None:
    plain = make("perceiver", qk_norm=False, cosine_attention=False)
    x = torch.randn(1, 16, IN)
    perm = torch.randperm(16)
    # without positions the resampler is a set function of its tokens; 2D rotary keys make it see the layout
    torch.testing.assert_close(plain(x).tokens, plain(x[:, perm]).tokens, atol=1e-5, rtol=1e-4)
    rope = make("perceiver", rope_2d=True)
    assert not torch.allclose(rope(x).tokens, rope(x[:, perm]).tokens, atol=1e-4)
    assert rope.layers[0].attn.logit_scale.shape == (4, 1, 1)
    assert isinstance(rope.layers[0].attn.q_norm, nn.LayerNorm)
    # grid inferred per sample: 4x4 and CLS + 3x3 in one padded batch match each sample alone
    xb, mask = padded_batch([16, 10], extra=2)
    out = rope(xb, mask).tokens
    torch.testing.assert_close(out[1], rope(xb[1:, :10]).tokens[0], atol=2e-5, rtol=1e-4)
    # valid tokens are numbered in order, so left padding works too
    left = torch.cat([100 * torch.randn(1, 3, IN), xb[1:, :10]], 1)
    left_mask = torch.arange(13)[None] >= 3
    torch.testing.assert_close(rope(left, left_mask).tokens, out[1:], atol=2e-5, rtol=1e-4)
    # 17 tokens = CLS + 4x4 grid, the same as stating the grid explicitly
    with_cls = torch.cat([torch.randn(1, 1, IN), x], 1)
    explicit = make("perceiver", rope_2d=True, grid_size=4, num_prefix_tokens=1)
    explicit.load_state_dict(rope.state_dict())
    torch.testing.assert_close(rope(with_cls).tokens, explicit(with_cls).tokens)
    with pytest.raises(ValueError, match="cannot infer a square grid.*grid_size"):
        rope(torch.randn(1, 7, IN))
    rect = make("perceiver", rope_2d=True, grid_size=[2, 3], num_prefix_tokens=1)
    assert rect(torch.randn(2, 7, IN)).tokens.shape == (2, 6, OUT)
    with pytest.raises(ValueError, match="grid_size 2x3"):
        rect(torch.randn(1, 9, IN))
    with pytest.raises(ValueError, match="divisible by 4"):
        make("perceiver", rope_2d=True, dim=24, heads=4)


# --- universal -----------------------------------------------------------------------------------------
def test_universal_modalities() -> None:
    p = make("universal")
    x, mask = padded_batch([6, 3])
    with pytest.raises(ValueError, match=r"unknown modality 'video'; known modalities: imu, audio"):
        p(x, mask, modality="video")
    with pytest.raises(ValueError, match="pass modality"):
        p(x, mask)
    a, b = p(x, mask, modality="imu").tokens, p(x, mask, modality="audio").tokens
    assert a.shape == b.shape == (2, 4, OUT) and not torch.allclose(a, b, atol=1e-3)
    # adding a modality with its own input width; the spec (and so a saved adapter) rebuilds it
    p.add_modality("ecg", in_dim=10)
    assert p(torch.randn(2, 5, 10), modality="ecg").tokens.shape == (2, 4, OUT)
    with pytest.raises(ValueError, match="expects tokens of width 10"):
        p(x, modality="ecg")
    q = create_projector(**json.loads(json.dumps(p.spec())))
    q.load_state_dict(p.state_dict())
    assert q.modalities == ["imu", "audio", "ecg"]
    static = make("universal", router="static")
    w = static.router_weights(torch.randn(2, 3, 32), torch.ones(2, 3, dtype=torch.bool), "imu")
    assert w.shape == (2, 4, 2) and torch.allclose(w.sum(-1), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"option 'modalities' expects list\[str\], got str"):
        create_projector("universal", in_dim=IN, out_dim=OUT, modalities="imu")
    with pytest.raises(ValueError, match="non-empty list"):
        create_projector("universal", in_dim=IN, out_dim=OUT, modalities=[])


# --- rvq -------------------------------------------------------------------------------------------------
def test_rvq_codes_to_vocab_mapping() -> None:
    p = make("rvq", stride=1)
    assert (p.num_quantizers, p.codebook_size, p.vocab_size_needed) == (3, 16, 48)
    codes = torch.tensor([[[1, 2, 3], [0, 15, 4]]])
    ids = p.codes_to_vocab(codes, offset=100)
    assert ids.tolist() == [[101, 118, 135, 100, 131, 136]]
    assert torch.equal(p.vocab_to_codes(ids, offset=100), codes)
    with pytest.raises(ValueError, match="slot q"):
        p.vocab_to_codes(torch.tensor([[118, 101, 135]]), offset=100)
    with pytest.raises(ValueError, match=r"codes \[B, N, 3\]"):
        p.codes_to_vocab(codes[..., :2], offset=0)
    out = p(torch.randn(2, 5, IN))
    torch.testing.assert_close(p.decode_codes(out.codes), out.tokens)


def _identity_rvq(**options: Any) -> Projector:
    p = create_projector("rvq", in_dim=2, out_dim=2, code_dim=2, num_quantizers=1, kmeans_init=False, **options)
    with torch.no_grad():
        p.proj_in.weight.copy_(torch.eye(2))
        p.proj_in.bias.zero_()
    return p.train()


def test_rvq_ema_tracks_cluster_means_without_codebook_loss() -> None:
    centers = torch.tensor([[4.0, 0.0], [-4.0, 0.0], [0.0, 4.0]])
    x = (centers[:, None] + 0.1 * torch.randn(3, 40, 2)).reshape(1, -1, 2)  # [1, 120, 2]
    p = _identity_rvq(codebook_size=3, decay=0.8, dead_code_steps=0)
    assert "codebooks" not in dict(p.named_parameters())
    p.codebooks.copy_(centers[None] + 1.0)
    p.ema_embed_sum.copy_(p.codebooks)
    for _ in range(40):
        out = p(x)
    assert set(out.losses) == {"commitment"}
    means = x[0].view(3, 40, 2).mean(1)
    torch.testing.assert_close(p.codebooks[0], means, atol=1e-3, rtol=1e-3)
    plain = _identity_rvq(codebook_size=3, ema=False)
    out = plain(x)
    assert set(out.losses) == {"commitment", "codebook"}
    out.losses["codebook"].backward()
    assert plain.codebooks.grad is not None and plain.codebooks.grad.abs().sum() > 0


def test_rvq_dead_codes_are_restarted_from_batch_vectors() -> None:
    p = _identity_rvq(codebook_size=4, decay=0.9, dead_code_steps=3)
    p.codebooks[0, 3] = p.ema_embed_sum[0, 3] = torch.tensor([1e3, 1e3])  # never the nearest code
    x = torch.randn(1, 50, 2)
    for _ in range(2):
        p(x)
    assert p.codebooks[0, 3, 0] > 900 and p.unused_steps[0, 3] == 2
    p(x)
    restarted = p.codebooks[0, 3]
    assert torch.cdist(restarted[None], x[0]).min() < 1e-5  # now equal to one of the batch vectors
    assert p.unused_steps[0, 3] == 0 and torch.equal(p.ema_embed_sum[0, 3], restarted)
    mask = torch.zeros(1, 50, dtype=torch.bool)
    mask[0, :10] = True
    usage = p.usage(p(x, mask).codes, mask)
    assert usage["perplexity"].shape == (1,) and 1.0 <= usage["perplexity"][0] <= 4.0


def test_rvq_training_statistics_ignore_padding() -> None:
    torch.manual_seed(3)
    a = create_projector("rvq", in_dim=IN, out_dim=OUT, codebook_size=8, code_dim=4, dead_code_steps=1).train()
    b = create_projector("rvq", in_dim=IN, out_dim=OUT, **a.config).train()
    b.load_state_dict(a.state_dict())
    x, mask = padded_batch([12, 5], extra=4)
    torch.manual_seed(4)
    a(x, mask)  # k-means init, EMA update and restarts see only valid tokens
    torch.manual_seed(4)
    b(x[:, :12], mask[:, :12])
    for (name, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, msg=name)


def _readme_texts(minilm_dir: Path) -> list[str]:
    """Real text: the model card's prose sentences and its dataset table's names."""
    text = (minilm_dir / "README.md").read_text().split("---", 2)[-1]
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("|"):
            out.append(line.strip("|").split("|")[0].strip())
        elif line and line[0] not in "#`-<>!":
            out += re.split(r"(?<=[.!?:])\s+", line)
    return [s for s in out if len(s.split()) >= 2 and not set(s) <= set("-: ")]


def test_rvq_fit_on_real_text_features_improves_usage_and_reconstruction(minilm_dir: Path) -> None:
    texts = _readme_texts(minilm_dir)
    assert len(texts) >= 50
    enc = create_encoder("text", pretrained=str(minilm_dir))
    with torch.no_grad():
        feats = enc(texts)
    x, mask = feats.tokens, feats.mask  # [B, T, 384]
    var = x[mask].var(0).sum() / x.shape[-1]

    def evaluate(p: Projector) -> tuple[float, float]:
        p.eval()
        with torch.no_grad():
            out = p(x, mask)
        err = ((out.tokens - x).pow(2).mean(-1)[mask].mean() / var).item()
        return p.usage(out.codes, mask)["perplexity"].mean().item(), err

    p = create_projector("rvq", in_dim=384, out_dim=384, num_quantizers=4, codebook_size=32, code_dim=32,
                         kmeans_init=False, decay=0.9, dead_code_steps=4)
    ppl0, err0 = evaluate(p)
    opt = torch.optim.Adam(p.parameters(), lr=1e-2)
    for _ in range(100):
        p.train()
        out = p(x, mask)
        recon = (out.tokens - x).pow(2).mean(-1)[mask].mean() / var
        loss = recon + sum(out.losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    ppl1, err1 = evaluate(p)
    assert ppl1 > 2 * ppl0 and ppl1 > 8, (ppl0, ppl1)
    assert err1 < 0.5 * err0 and err1 < 0.85, (err0, err1)  # 1.0 = predicting the mean feature
    assert p.usage()["used_fraction"].min() > 0.5  # running statistics over the fit

    # k-means on the first training batch starts from well-used codebooks
    km = create_projector("rvq", in_dim=384, out_dim=384, num_quantizers=4, codebook_size=32, code_dim=32)
    assert not km.initialized
    km.load_state_dict({k: v for k, v in p.state_dict().items() if k.startswith("proj_")}, strict=False)
    km.train()(x, mask)
    assert km.initialized
    z = km.proj_in(x[mask])
    ppl_km, _ = evaluate(km)
    assert ppl_km > 2 * ppl0, (ppl0, ppl_km)
    quant_err = F.mse_loss(km.codebooks[0][torch.cdist(z, km.codebooks[0]).argmin(-1)], z)
    assert quant_err < z.var(0).sum() / z.shape[-1]
