"""Vision encoders (clip-image/-text, dinov2, timm-image, video) on tiny random configs of the real classes,
their pretrained-file round trips, the real EfficientNet-Lite0 checkpoint and the real videos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image

from anyalign.encoders import InputError, create_encoder, encoder_info
from anyalign.encoders.clip import register_model_configs
from anyalign.encoders.timm_image import convert_lukemelas_efficientnet, is_lukemelas_efficientnet
from anyalign.encoders.video import read_frames, sinusoidal_positions, uniform_indices
from anyalign.io import load_weights, save_weights

TINY_CLIP = "anyalign-tiny-vit"  # shipped in anyalign/model_configs: 32x32 images, 8px patches, widths 64/32
register_model_configs()  # make it known to open_clip for the reference models built here
TINY_DINO = dict(img_size=28, embed_dim=32, depth=2, num_heads=2)  # 2x2 patches of 14 px
RNG = np.random.default_rng(0)
IMAGES = [RNG.integers(0, 256, (40, 52, 3), dtype=np.uint8), RNG.integers(0, 256, (33, 30, 3), dtype=np.uint8)]


def assert_frozen(enc: torch.nn.Module) -> None:
    enc.train()
    assert not enc.training and not any(m.training for m in enc.modules())
    assert not any(p.requires_grad for p in enc.parameters())


@pytest.fixture(scope="module")
def clip_image():
    return create_encoder("clip-image", model=TINY_CLIP)


@pytest.fixture(scope="module")
def clip_text():
    return create_encoder("clip-text", model=TINY_CLIP)


# --- registration facts ----------------------------------------------------------------------------------------
def test_registration_facts_match_default_variants() -> None:
    cfg = open_clip.get_model_config("ViT-B-32")
    img, txt = encoder_info("clip-image"), encoder_info("clip-text")
    assert (img.token_dim, img.pooled_dim) == (cfg["vision_cfg"]["width"], cfg["embed_dim"]) == (768, 512)
    assert (txt.token_dim, txt.pooled_dim) == (cfg["text_cfg"]["width"], cfg["embed_dim"])
    dino = create_encoder("dinov2")  # random vit_small_patch14_dinov2, cheap
    assert (encoder_info("dinov2").token_dim, encoder_info("dinov2").pooled_dim) == (dino.token_dim, dino.pooled_dim)
    assert dino([IMAGES[0]]).tokens.shape == (1, 1 + 16 * 16, 384)  # 224 px / 14 px patches + cls
    eff = timm.create_model("efficientnet_lite0")
    assert (encoder_info("timm-image").token_dim, encoder_info("timm-image").pooled_dim) == (eff.num_features,) * 2
    assert encoder_info("video").pooled_dim == img.pooled_dim and encoder_info("video").modality == "video"


def test_extensions_and_input_spec(clip_image, clip_text) -> None:
    for ext in (".jpg", ".JPEG", ".png", ".bmp", ".webp", ".gif"):
        assert clip_image.accepts_file(f"x{ext}")
    assert not clip_image.accepts_file("x.mp4") and not clip_text.accepts_file("x.txt")
    video = create_encoder("video", model=TINY_CLIP, num_frames=2)
    assert all(video.accepts_file(f"clip{e}") for e in (".mp4", ".avi", ".mov", ".mkv", ".webm"))
    assert not video.accepts_file("x.jpg") and "mp4" in video.input_spec and "png" in clip_image.input_spec


# --- clip ------------------------------------------------------------------------------------------------------
def test_clip_image_shapes_inputs_and_reference(clip_image, tmp_path: Path) -> None:
    assert_frozen(clip_image)
    path = tmp_path / "a.png"
    Image.fromarray(IMAGES[0]).save(path)
    out = clip_image([str(path), IMAGES[1], Image.fromarray(IMAGES[0]), IMAGES[0].astype(np.float32) / 255])
    assert out.tokens.shape == (4, 1 + 4 * 4, 64) and out.mask.all() and out.pooled.shape == (4, 32)
    assert torch.allclose(out.pooled.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(out.pooled[0], out.pooled[2]) and torch.allclose(out.pooled[0], out.pooled[3], atol=1e-5)
    pixels = clip_image.collate([clip_image.load(x) for x in IMAGES])["pixels"]
    with torch.no_grad():
        ref = F.normalize(clip_image.visual(pixels), dim=-1)  # open_clip's own image embedding
        clip_image.visual.output_tokens = True
        _, ref_tokens = clip_image.visual(pixels)
        clip_image.visual.output_tokens = False
    both = clip_image(IMAGES)
    assert torch.allclose(both.pooled, ref, atol=1e-5)
    assert torch.allclose(both.tokens[:, 1:], ref_tokens, atol=1e-5)  # patch tokens after ln_post


def test_clip_text_mask_and_reference(clip_text) -> None:
    assert_frozen(clip_text)
    texts = ["a dog!", "a much longer caption about a striped cat on a mat"]
    out = clip_text(texts)
    tokenizer = open_clip.get_tokenizer(TINY_CLIP)
    ids = tokenizer(texts)
    assert out.mask.sum(-1).tolist() == [len(tokenizer.encode(t)) + 2 for t in texts]  # + start/end of text
    assert out.tokens.shape == (2, int(out.mask.sum(-1).max()), 32) and not out.mask[0, -1]
    with torch.no_grad():
        ref = F.normalize(clip_text.clip.encode_text(ids), dim=-1)
    assert torch.allclose(out.pooled, ref, atol=1e-5)
    alone = clip_text([texts[0]])  # causal text tower: a row does not depend on the batch's padding
    n = int(alone.mask.sum())
    assert torch.allclose(alone.tokens[0, :n], out.tokens[0, :n], atol=1e-5)
    assert clip_text.clip.visual is None  # image tower dropped
    with pytest.raises(InputError, match="expects strings"):
        clip_text([3])


def test_clip_pretrained_roundtrip(tmp_path: Path) -> None:
    ref = open_clip.create_model(TINY_CLIP).eval()
    save_weights(tmp_path / "clip.safetensors", ref.state_dict())
    torch.save(ref.state_dict(), tmp_path / "clip.pt")
    img = create_encoder("clip-image", pretrained=str(tmp_path / "clip.safetensors"), model=TINY_CLIP)
    txt = create_encoder("clip-text", pretrained=str(tmp_path / "clip.pt"), model=TINY_CLIP)
    pixels = img.collate([img.load(x) for x in IMAGES])["pixels"]
    with torch.no_grad():
        assert torch.allclose(img(IMAGES).pooled, ref.encode_image(pixels, normalize=True), atol=1e-6)
        ids = txt.collate(["a cat", "a dog"])["input_ids"]
        assert torch.allclose(txt(["a cat", "a dog"]).pooled, ref.encode_text(ids, normalize=True), atol=1e-6)
    # a tower-only checkpoint (the encoder's own state dict) loads too; the other tower's is rejected
    save_weights(tmp_path / "visual.safetensors", img.state_dict())
    again = create_encoder("clip-image", pretrained=str(tmp_path / "visual.safetensors"), model=TINY_CLIP)
    assert torch.equal(again(IMAGES).tokens, img(IMAGES).tokens)
    with pytest.raises(ValueError, match="visual.safetensors.*text tower"):
        create_encoder("clip-text", pretrained=str(tmp_path / "visual.safetensors"), model=TINY_CLIP)
    # an open_clip folder: open_clip_config.json + weights
    (tmp_path / "folder").mkdir()
    config = {"model_cfg": open_clip.get_model_config(TINY_CLIP)}
    (tmp_path / "folder" / "open_clip_config.json").write_text(json.dumps(config))
    save_weights(tmp_path / "folder" / "open_clip_model.safetensors", ref.state_dict())
    from_dir = create_encoder("clip-image", pretrained=str(tmp_path / "folder"))
    assert torch.equal(from_dir(IMAGES).pooled, img(IMAGES).pooled)
    # a config given as a JSON file path
    cfg = open_clip.get_model_config(TINY_CLIP)
    cfg["vision_cfg"]["layers"] = 1
    (tmp_path / "one-layer-tiny.json").write_text(json.dumps(cfg))
    one = create_encoder("clip-image", model=str(tmp_path / "one-layer-tiny.json"))
    assert len(one.visual.transformer.resblocks) == 1 and one(IMAGES[:1]).tokens.shape == (1, 17, 64)
    with pytest.raises(ValueError, match="clip.safetensors"):  # wrong architecture for these weights
        create_encoder("clip-image", pretrained=str(tmp_path / "clip.safetensors"),
                       model=str(tmp_path / "one-layer-tiny.json"))


TINY = {"clip-image": {"model": TINY_CLIP}, "clip-text": {"model": TINY_CLIP}, "dinov2": TINY_DINO,
        "timm-image": {"model": "test_efficientnet"}, "video": {"model": TINY_CLIP, "num_frames": 2}}


@pytest.mark.parametrize("name", sorted(TINY))
def test_bf16_autocast_close_to_fp32(name: str) -> None:
    fp32 = create_encoder(name, **TINY[name])
    bf16 = create_encoder(name, autocast="bf16", **TINY[name])
    bf16.load_state_dict(fp32.state_dict())
    inputs = ["a photo of a cat", "two dogs"] if name == "clip-text" else IMAGES
    if name == "video":
        inputs = [np.stack([IMAGES[0], IMAGES[0][::-1]]), np.stack([IMAGES[1]] * 3)]
    a, b = bf16(inputs), fp32(inputs)
    assert a.tokens.dtype == a.pooled.dtype == torch.float32 and a.tokens.shape == b.tokens.shape
    assert F.cosine_similarity(a.pooled, b.pooled).min() > 0.99


def test_clip_token_layer(clip_image) -> None:
    first = create_encoder("clip-image", model=TINY_CLIP, layer=0)
    first.load_state_dict(clip_image.state_dict())
    a, b = first(IMAGES), clip_image(IMAGES)
    assert a.tokens.shape == b.tokens.shape and not torch.allclose(a.tokens, b.tokens)
    assert torch.allclose(a.pooled, b.pooled)  # the embedding is always the final one


# --- dinov2 ----------------------------------------------------------------------------------------------------
def test_dinov2_tokens_pooled_and_roundtrip(tmp_path: Path) -> None:
    enc = create_encoder("dinov2", **TINY_DINO)
    assert_frozen(enc)
    out = enc(IMAGES)
    assert out.tokens.shape == (2, 1 + 4, 32) and out.mask.all() and out.pooled.shape == (2, 32)
    with torch.no_grad():
        feats = enc.model.forward_features(enc.collate([enc.load(x) for x in IMAGES])["pixels"])
    assert torch.allclose(out.pooled, feats[:, 0], atol=1e-6) and torch.allclose(out.tokens, feats, atol=1e-6)
    reg = create_encoder("dinov2", model="vit_small_patch14_reg4_dinov2", normalize=True, **TINY_DINO)
    r = reg(IMAGES)
    assert reg.model.num_prefix_tokens == 5 and r.tokens.shape == (2, 5, 32)  # registers dropped
    assert torch.allclose(r.pooled.norm(dim=-1), torch.ones(2), atol=1e-5)
    save_weights(tmp_path / "dino.safetensors", enc.model.state_dict())
    back = create_encoder("dinov2", pretrained=str(tmp_path / "dino.safetensors"), **TINY_DINO)
    assert torch.equal(back(IMAGES).tokens, out.tokens)
    bigger = create_encoder("dinov2", pretrained=str(tmp_path / "dino.safetensors"), **{**TINY_DINO, "img_size": 42})
    assert bigger(IMAGES).tokens.shape == (2, 1 + 9, 32)  # position embeddings resized by timm's filter


# --- timm-image ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["test_efficientnet", "test_vit"])
def test_timm_image_tokens_pooled_and_roundtrip(name: str, tmp_path: Path) -> None:
    enc = create_encoder("timm-image", model=name)
    assert_frozen(enc)
    out = enc(IMAGES)
    with torch.no_grad():
        feats = enc.model.forward_features(enc.collate([enc.load(x) for x in IMAGES])["pixels"])
        pooled = enc.model.forward_head(feats, pre_logits=True)
    tokens = feats.flatten(2).transpose(1, 2) if feats.dim() == 4 else feats
    assert out.tokens.shape == tokens.shape and out.tokens.shape[-1] == enc.token_dim and out.mask.all()
    assert torch.allclose(out.tokens, tokens, atol=1e-6) and torch.allclose(out.pooled, pooled, atol=1e-6)
    assert out.pooled.shape == (2, enc.pooled_dim)
    save_weights(tmp_path / "w.safetensors", enc.model.state_dict())
    back = create_encoder("timm-image", model=name, pretrained=str(tmp_path / "w.safetensors"))
    assert torch.equal(back(IMAGES).pooled, out.pooled)


def test_lukemelas_conversion_matches_timm_layout(assets: Path) -> None:
    state = load_weights(assets / "image" / "efficientnet-lite0.pth")
    assert is_lukemelas_efficientnet(state)
    converted = convert_lukemelas_efficientnet(state)
    own = timm.create_model("efficientnet_lite0").state_dict()
    assert converted.keys() == own.keys() and all(converted[k].shape == own[k].shape for k in own)
    assert converted["blocks.1.0.conv_pw.weight"] is state["_blocks.1._expand_conv.weight"]
    assert converted["blocks.0.0.conv_pw.weight"] is state["_blocks.0._project_conv.weight"]


def test_real_efficientnet_lite0_top1_and_bf16(assets: Path) -> None:
    data = pytest.importorskip("skimage.data")
    ckpt = str(assets / "image" / "efficientnet-lite0.pth")
    enc = create_encoder("timm-image", pretrained=ckpt, model="efficientnet_lite0")
    assert enc.transform.transforms[-1].mean.tolist() == [0.5] * 3  # this checkpoint's (x - 0.5) / 0.5
    photos = {"coffee": (data.coffee(), {967}), "chelsea": (data.chelsea(), {281, 282, 285}),
              "rocket": (data.rocket(), {657, 744, 812}), "motorcycle": (data.stereo_motorcycle()[0], {665, 670})}
    out = enc([img for img, _ in photos.values()])
    assert out.tokens.shape == (4, 7 * 7, 1280) and out.pooled.shape == (4, 1280)
    with torch.no_grad():
        top1 = enc.model.get_classifier()(out.pooled).argmax(-1).tolist()
    for (name, (_, ok)), pred in zip(photos.items(), top1):
        assert pred in ok, f"{name}: predicted ImageNet class {pred}, expected one of {sorted(ok)}"
    bf16 = create_encoder("timm-image", pretrained=ckpt, autocast="bf16")
    low = bf16([img for img, _ in photos.values()])
    assert F.cosine_similarity(low.pooled, out.pooled).min() > 0.99
    with torch.no_grad():
        assert bf16.model.get_classifier()(low.pooled).argmax(-1).tolist() == top1


# --- video -----------------------------------------------------------------------------------------------------
def test_video_real_files(assets: Path) -> None:
    files = sorted(str(p) for p in (assets / "video").glob("*.mp4"))
    assert len(files) == 4
    enc = create_encoder("video", model=TINY_CLIP, num_frames=4)
    assert_frozen(enc)
    out = enc(files)
    assert out.tokens.shape == (4, 4, 32) and out.mask.all() and out.pooled.shape == (4, 32)
    assert torch.allclose(out.pooled.norm(dim=-1), torch.ones(4), atol=1e-5)
    frames = read_frames(files[1], 4)  # the same frames through the image encoder directly
    per_frame = enc.image_encoder(frames).pooled  # [4, 32]
    assert torch.allclose(out.pooled[1], F.normalize(per_frame.mean(0), dim=0), atol=1e-5)
    pe = sinusoidal_positions(4, 32)
    expected = per_frame + 0.1 * per_frame.norm(dim=-1, keepdim=True) * pe
    assert torch.allclose(out.tokens[1], expected, atol=1e-5)
    long = create_encoder("video", model=TINY_CLIP, num_frames=150, temporal_scale=0.0)
    short = long([files[2]])  # carphone: 120 frames < 150
    assert short.tokens.shape == (1, 150, 32) and short.mask.sum() == 120 and not short.mask[0, 120:].any()
    assert (short.tokens[0, 120:] == 0).all()


def test_video_arrays_positions_and_errors(tmp_path: Path) -> None:
    enc = create_encoder("video", model=TINY_CLIP, num_frames=3)
    still = np.repeat(IMAGES[0][None], 5, axis=0)  # [T, H, W, C], identical frames
    out = enc([still])
    assert out.tokens.shape == (1, 3, 32) and not torch.allclose(out.tokens[0, 0], out.tokens[0, 1])
    assert torch.allclose(out.pooled[0], enc.image_encoder([IMAGES[0]]).pooled[0], atol=1e-5)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(2000))
    with pytest.raises(InputError, match="broken.mp4"):
        enc([str(bad)])
    with pytest.raises(InputError, match="missing.mp4.*not found"):
        enc([str(tmp_path / "missing.mp4")])
    with pytest.raises(InputError, match="expected a video path"):
        enc([42])
    assert uniform_indices(10, 4) == [1, 3, 6, 8] and uniform_indices(3, 8) == [0, 1, 2]
    timm_video = create_encoder("video", image_encoder="timm-image", model="test_efficientnet", num_frames=2)
    per_frame = timm_video.image_encoder([IMAGES[1]]).pooled  # [1, C], not unit norm
    tokens = timm_video([np.stack([IMAGES[1]] * 2)]).tokens[0]  # position scaled by each frame's norm
    assert torch.allclose(tokens, per_frame + 0.1 * per_frame.norm() * sinusoidal_positions(2, per_frame.shape[1]),
                          atol=1e-5)


def test_video_pretrained_goes_to_image_encoder(tmp_path: Path) -> None:
    ref = open_clip.create_model(TINY_CLIP).eval()
    save_weights(tmp_path / "clip.safetensors", ref.state_dict())
    enc = create_encoder("video", pretrained=str(tmp_path / "clip.safetensors"), model=TINY_CLIP, num_frames=1)
    pixels = enc.image_encoder.collate([enc.image_encoder.load(IMAGES[0])])["pixels"]
    with torch.no_grad():
        assert torch.allclose(enc([IMAGES[0][None]]).pooled, ref.encode_image(pixels, normalize=True), atol=1e-6)


# --- bad image inputs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["clip-image", "dinov2", "timm-image"])
def test_image_errors_name_the_input(family: str, tmp_path: Path) -> None:
    kwargs = {"clip-image": {"model": TINY_CLIP}, "dinov2": TINY_DINO, "timm-image": {"model": "test_efficientnet"}}
    enc = create_encoder(family, **kwargs[family])
    bad = tmp_path / "not_an_image.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    with pytest.raises(InputError, match="not_an_image.jpg"):
        enc([str(bad)])
    truncated = tmp_path / "truncated.png"
    Image.fromarray(IMAGES[0]).save(tmp_path / "full.png")
    truncated.write_bytes((tmp_path / "full.png").read_bytes()[:200])
    with pytest.raises(InputError, match="truncated.png"):
        enc.load(str(truncated))
    with pytest.raises(InputError, match="no_such.png.*not found"):
        enc.load(str(tmp_path / "no_such.png"))
    with pytest.raises(InputError, match=r"shape \(5, 5, 7\)"):
        enc.load(np.zeros((5, 5, 7), np.uint8))
