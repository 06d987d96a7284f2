"""OneLLM / Meta-Transformer on real data (BasicMotions: 40 train + 40 test windows, 4 balanced classes; more below).

Part `trunk` -- the frozen universal trunk (MiniLM's 6 BERT layers, or Whisper tiny.en's 4 encoder layers, behind
a trainable 1-D patch tokenizer, encoder `trunk`) against the dedicated IMU encoder trained from scratch, each with
the same MLP head, bound to the frozen MiniLM text space with configs/imu_text_contrastive.yaml's data, captions,
augmentation and schedule:
closed-set zero-shot top-1 on the test split (chance 0.25, N=40), the same with other wordings of the class names
(configs/data/basicmotions_phrasings.yaml, never training captions), generalised zero-shot with Walking unseen in
training (seen/unseen mean per-class accuracy, their harmonic mean, unseen-only top-1 with chance 1.0), trainable
parameters and wall time per training step.

Part `shared` -- the universal projection shared by two modalities vs one private copy per modality. The
accelerometer (channels 0-2) and the gyroscope (channels 3-5) of every window are two modalities, each with its own
3-channel IMU encoder trained from scratch; the shared-space head is one `universal` projector (shared experts,
a router and modality tokens per modality) or two. Reported per modality: closed-set zero-shot top-1 on the test
split (chance 0.25, N=40 each); trainable parameters; time per step. With `--progressive` also OneLLM's recipe:
accelerometer first, then the gyroscope added with the accelerometer kept at replay 0.25, each modality's numbers
after each stage (the same total number of steps as all-at-once).

With `--data japanesevowels` the same on JapaneseVowels (asset `japanesevowels`, from aeon's wheel) cut into its
first and last six LPC coefficients (an artificial split of one signal; chance 1/9, N=370 each).

Part `both` -- one run, both products (configs/imu_text_and_llm.yaml: shared-space head and LLM projector trained
together, contrastive and caption rows in every batch, losses weighted) against the two trained apart
(imu_text_contrastive.yaml, then imu_llm_caption.yaml on its frozen encoder, the same step count each): closed-set
zero-shot top-1 and new wordings (chance 0.25, N=40), held-out caption loss before/after, and the LLM's closed-set
answer (the class caption with the lowest summed next-token loss; chance 0.25, N=40).

Part `series` -- a second public time-series set, of a kind with no encoder here: JapaneseVowels (9 speakers, 12 LPC
cepstrum channels x 25 frames, 270 train / 370 test utterances, the archive's own split; test classes unbalanced:
chance 1/9, majority class 0.238). The frozen MiniLM and Whisper trunks (patch 5 -> 5 tokens, set before any run)
vs the IMU-style encoder from scratch (12 channels), each with the MLP head; the classes are speaker numbers,
captioned with an
arbitrary distinct name each (the text is only a class code), so only the closed-set top-1 means anything.

Part `joint` -- joint vs separate per modality: IMU (BasicMotions), speech (Whisper tiny.en), sounds (aisfx) and
images (EfficientNet-Lite0, Fashion-MNIST train-6pc-8cls: 48 photos of 8 classes); speech, sounds and images from
cached features made by configs/joint_instruct.yaml's own data steps (`joint_data`: `anyalign data speech`, then
`anyalign extract`), whose speech and sound sources it uses as shipped. Stage 1 binds IMU and images to the text
space alone (speech and sounds get no shared-space head here); then the LLM side is trained from those adapters with
one recipe (LoRA on SmolLM2, a universal projector, contrastive rows kept for IMU and images, batches of 16), either
per modality apart (its own projector and LoRA) or jointly (one projector and LoRA for all four, so each modality
gets a share of the rows of a batch; also at 4x the steps: as many rows per modality as apart). Reported per
modality: held-out caption loss before and after (BasicMotions test split, N=40; Fashion-MNIST test-6pc restricted
to the 8 training classes, N=48; the held-out 30% of the sounds; speech: "What was said?" on 50 clips of held-out
sentences spoken only by held-out voice families); for speech also the LLM's transcripts (WER) and its answers to
26 held-out spoken questions (13 questions x 2 held-out voices; none of them, and no voice family, seen in
training): WER and exact match of the greedy answer, and the closed-set answer choice (the one of the 13 held-out
reference answers with the lowest summed loss; chance 1/13), next to the same questions typed as text (the plain
LLM before, the LLM with the run's LoRA after); zero-shot through the shared space after stage 1 and after the
LLM stage (IMU and images, closed set; chance 0.25 and 0.125).

One run per condition, seed 0; no tuning on the test split (steps and settings are the recipe's).

    export ANYALIGN_ASSETS=~/.cache/anyalign-assets
    python -m anyalign.assets japanesevowels       # once, for --data japanesevowels and part `series`
    python benchmarks/onellm.py [--steps 200] [--only trunk|shared|both|series|joint] [--progressive]
        [--data basicmotions|japanesevowels] [--no-equal-rows] [--modalities imu,speech,audio,image] [--json out.json]

Measured on a shared, loaded 2-core CPU (s/step are rough), seed 0, one run each:
- both, 30 steps: one run closed set 1.00, new wordings 1.00, LLM caption choice 0.75, caption loss 2.20 -> 0.42
  (10.7 s/step); apart 1.00, 1.00, 1.00, 2.28 -> 0.43 (0.40 + 11.4 s/step). Same trainable parameters (2.99 M).
- trunk (BasicMotions, N=40, chance 0.25), closed set after 20 / 200 steps: scratch 1.00 / 1.00, MiniLM trunk
  0.775 / 1.00, Whisper trunk 0.85 / 0.975; at 200, new wordings 1.00, 0.9625, 0.9375 and, with Walking held
  out, its accuracy 0.00 for all three. 2.51 M vs 0.42 M trainable parameters (both trunks); 0.20, 0.14,
  0.10 s/step at 200.
- series: scratch 0.968 (100 steps) / 0.989 (400); MiniLM trunk 0.554 / 0.630; Whisper trunk 0.692 / 0.732
  (0.42 M vs 2.51 M trainable parameters; 0.04-0.07 s/step each, too close to rank on this loaded box).
  BasicMotions' tie does not hold here: the frozen trunks lag by 0.26 (Whisper) and 0.36 (MiniLM).
- shared, japanesevowels, 100 steps: private 0.889 / 0.859 (1.62 M parameters), shared 0.932 / 0.859 (0.97 M);
  progressive (50 + 50 steps, replay 0.25): low half 0.922 after stage 1, 0.835 after stage 2 (forgetting),
  high half 0.608, against 0.932 / 0.859 all at once.
- joint, four modalities, 30 steps (IMU, speech, sounds, images; 5.5 s/step): stage-1 zero-shot IMU 1.00, images
  0.8125. Held-out caption loss before -> after, apart (30 steps each) / joint (30 steps) / joint (120 steps, as
  many rows per modality as apart): IMU 2.46 -> 0.19 / 2.22 -> 1.43 / 0.50; speech ("What was said?", N=50)
  3.92 -> 3.06 / 3.94 -> 3.10 / 2.80; spoken questions (answer loss, N=26) 3.01 -> 2.05 / 3.04 -> 2.15 / 1.85;
  sounds (N=12) 10.04 -> 5.20 / 9.67 -> 7.57 / 5.97; images (N=48) 3.51 -> 0.63 / 3.73 -> 2.33 / 0.64.
  Zero-shot after: IMU 1.00 in all; images 0.854 / 0.833 / 0.750 (chance 0.125). Speech through 8 modality tokens
  does not carry the words yet at these step counts: transcript WER 1.83-1.89 before -> 0.90-0.91 after in every
  run (the LLM learns the answer style, not the content; exact match 0), spoken-question answers exact 0 and the
  closed-set choice 0.077 = chance (1/13) before and after in every run; the same questions typed: closed-set 1.00
  for the plain LLM and after each run, exact 0.23 (plain LLM) / 0.38 / 0.38 / 0.23. Trainable parameters 3.44 M,
  3.14 M, 3.18 M, 4.23 M apart vs 5.06 M joint. Speech alone at 200 steps (`--modalities speech --steps 200`,
  5.8 s/step): caption loss 3.92 -> 2.83, transcript WER 0.89, spoken-question answer loss 3.01 -> 2.73 (it now
  answers with training answers: overfitting), closed-set choice 0.115 (3 of 26; chance 0.077): still no evidence
  that 8 universal modality tokens carry the words. The earlier two-modality run (IMU + images): joint 30 steps
  IMU 0.60, images 0.99; at 60 steps 0.19 / 0.33.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anyalign.align import load_recipe  # noqa: E402
from anyalign.align.data import Batch, Collator  # noqa: E402
from anyalign.align.progressive import train_progressive  # noqa: E402
from anyalign.align.trainer import Trainer  # noqa: E402
from anyalign.assets import assets_root  # noqa: E402
from anyalign.datasets.uea import load_uea  # noqa: E402
from anyalign.zeroshot.protocols import phrasing_protocol, read_phrasings, top1, unseen_protocol  # noqa: E402

RECIPE = ROOT / "configs/imu_text_contrastive.yaml"
PHRASINGS = ROOT / "configs/data/basicmotions_phrasings.yaml"
SEEN = ["Badminton", "Running", "Standing"]  # Walking unseen in training
UPM = {"name": "universal", "num_experts": 3, "num_modality_tokens": 8, "dim": 128, "heads": 4}
IMU_SMALL = {"dim": 64, "depth": 1, "heads": 4}


def _trainable(trainer: Trainer) -> int:
    return sum(p.numel() for _, p in trainer.unwrapped.trainable_parameters())


@torch.no_grad()
def _scores(trainer: Trainer, index: int, modality: str
            ) -> tuple[torch.Tensor, list[int], list[str], list[str], torch.Tensor]:
    """Eval source `index`: test embeddings, labels, class names, templates, scores against the class prompts."""
    model = trainer.unwrapped.eval()
    ds = trainer.data.eval_sets[index]
    embs, ys = [], []
    for batch in DataLoader(ds, batch_size=64, collate_fn=Collator(trainer.data.collate_fns, ds.labels)):
        batch = batch.to(model.device)
        embs.append(model.embed(modality, model.features(modality, batch.media[modality]))[0].float().cpu())
        ys += batch.labels.tolist()
    emb = F.normalize(torch.cat(embs), dim=-1)
    cls = torch.stack([F.normalize(model.anchor_texts("text", ps).mean(0), dim=-1).cpu()
                       for ps in ds.class_prompts().values()])
    templates = [t.replace("{label}", "{}").replace("{caption}", "{}") for t in ds.caption_pool(0).templates]
    return emb, ys, list(ds.labels), templates, emb @ cls.t()


def _fit(recipe: object, out: Path) -> tuple[Trainer, float]:
    trainer = Trainer(recipe, output_dir=out)
    t0 = time.perf_counter()
    trainer.fit()
    return trainer, (time.perf_counter() - t0) / recipe.train.max_steps


# --- part 1: frozen trunk vs IMU encoder from scratch ------------------------------------------------------------
WHISPER = "audio-models/whisper-tiny.en"  # the other trunk: Whisper tiny.en's 4 encoder layers (same width, 384)


def run_trunk(steps: int, out: Path, assets: Path) -> dict:
    minilm, whisper = assets / "text/all-MiniLM-L6-v2", assets / WHISPER
    encoders = {"imu_scratch": "imu",
                "trunk_minilm": json.dumps({"name": "trunk", "pretrained": str(minilm), "options": {"patch": 10}}),
                "trunk_whisper": json.dumps({"name": "trunk", "pretrained": str(whisper), "options": {"patch": 10}})}
    base = [f"train.max_steps={steps}", "eval.at_start=false", "eval.every=0", "train.tensorboard=false",
            "train.save_every=100000"]
    res = {}
    for name, enc in encoders.items():
        row: dict = {}
        for part in ("all", "subset"):
            classes = "data.train.0.classes=" + (json.dumps(SEEN) if part == "subset" else "null")
            recipe = load_recipe(RECIPE, [*base, f"adapters.imu.encoder={enc}", classes])
            trainer, per_step = _fit(recipe, out / f"{name}-{part}")
            emb, ys, cls_names, templates, scores = _scores(trainer, 0, "imu")
            if part == "all":
                embed_text = lambda texts, m=trainer.unwrapped: m.anchor_texts("text", texts).cpu()  # noqa: E731
                closed = top1(scores, ys)
                ph = phrasing_protocol(emb, ys, cls_names, embed_text, templates,
                                       read_phrasings(PHRASINGS, cls_names), closed)
                row.update(closed_set_top1=closed, new_wordings_top1=ph["mean_top1"],
                           new_wordings_ratio=ph["mean_ratio"], trainable_params=_trainable(trainer),
                           s_per_step=round(per_step, 4))
            else:
                u = unseen_protocol(scores, ys, cls_names, SEEN)
                row.update(unseen={k: u[k] for k in ("seen_accuracy", "unseen_accuracy", "harmonic_mean",
                                                     "unseen_only_top1", "chance_all", "chance_unseen_only")})
        res[name] = {**row, "n_test": 40, "chance": 0.25}
        print(name, json.dumps(res[name]), flush=True)
    return res


# --- part 2: shared vs private universal projection ------------------------------------------------------------
def _two_modality_set(name: str) -> dict:
    """A data set cut into two modalities by channels: BasicMotions' accelerometer (channels 0-2) and gyroscope
    (3-5); JapaneseVowels' first and last six LPC cepstrum coefficients (an artificial split: two halves of one
    signal), with their captions."""
    if name == "basicmotions":
        src = yaml.safe_load(RECIPE.read_text())["data"]["train"][0]
        return {"path": "imu/BasicMotions", "channels": {"acc": (0, 3), "gyro": (3, 6)},
                "label_text": src["label_text"], "caption_templates": src["caption_templates"],
                "augment": src["augment"]}
    return {"path": "timeseries/JapaneseVowels", "channels": {"lpc_low": (0, 6), "lpc_high": (6, 12)},
            "label_text": VOWEL_SPEAKERS, "caption_templates": VOWEL_TEMPLATES, "augment": VOWEL_AUGMENT}


def _split_data(assets: Path, root: Path, spec: dict) -> dict[str, dict[str, Path]]:
    """The set's windows cut into its two modalities (channel ranges), per split, as .npy files + jsonl."""
    paths: dict[str, dict[str, Path]] = {}
    for split in ("train", "test"):
        ds = load_uea(assets / spec["path"], split)
        for m, (a, b) in spec["channels"].items():
            ch = slice(a, b)
            d = root / split / m
            d.mkdir(parents=True, exist_ok=True)
            lines = []
            for i, (x, label) in enumerate(zip(ds.x, ds.labels)):
                np.save(d / f"{i:03d}.npy", x[ch].astype(np.float32))
                lines.append(json.dumps({m: f"{i:03d}.npy", "label": label}))
            (d / "data.jsonl").write_text("\n".join(lines) + "\n")
            paths.setdefault(split, {})[m] = d / "data.jsonl"
    return paths


def _two_modality_recipe(paths: dict, shared: bool, steps: int, out: Path, name: str, spec: dict,
                         progressive: bool = False) -> Path:
    base = yaml.safe_load(RECIPE.read_text())
    src = spec
    mods = tuple(spec["channels"])
    head = "upm" if shared else None
    recipe = {
        "name": name, "seed": 0,
        "adapters": {m: {"encoder": {"name": "imu", "options": {"channels": b - a, **IMU_SMALL}},
                         "train_encoder": True, "embed_projector": head or {**UPM, "modalities": [m]}}
                     for m, (a, b) in spec["channels"].items()},
        "anchors": base["anchors"],
        "data": {part: [{"kind": "jsonl", "path": str(paths[split][m]), "modality": m,
                         "label_text": src["label_text"], "caption_templates": src["caption_templates"],
                         **({"augment": src["augment"]} if part == "train" else {})} for m in mods]
                 for part, split in (("train", "train"), ("eval", "test"))},
        "train": {**base["train"], "max_steps": steps, "save_every": 100000, "tensorboard": False},
        "eval": {"at_start": False, "every": 0, "recall_k": [1]},
    }
    if shared:
        recipe["projectors"] = {"upm": {k: v for k, v in UPM.items()}}
    if progressive:
        recipe["progressive"] = {"replay": 0.25, "stages": [{"add": [mods[0]], "max_steps": steps // 2},
                                                            {"add": [mods[1]], "max_steps": steps - steps // 2}]}
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def run_shared(steps: int, out: Path, assets: Path, progressive: bool, dataset: str = "basicmotions") -> dict:
    spec = _two_modality_set(dataset)
    paths = _split_data(assets, out / "data", spec)
    test = load_uea(assets / spec["path"], "test")
    res: dict = {"data": dataset, "n_test_per_modality": len(test), "chance": round(1 / len(test.classes), 4)}
    for name, shared in (("private", False), ("shared", True)):
        trainer, per_step = _fit(load_recipe(_two_modality_recipe(paths, shared, steps, out, name, spec)), out / name)
        scored = {m: _scores(trainer, i, m) for i, m in enumerate(spec["channels"])}
        row = {m: top1(sc[4], sc[1]) for m, sc in scored.items()}
        res[name] = {"closed_set_top1": row, "trainable_params": _trainable(trainer),
                     "s_per_step": _step_time(out / name)}
        print(name, json.dumps(res[name]), flush=True)
    if progressive:
        recipe = load_recipe(_two_modality_recipe(paths, True, steps, out, "progressive", spec, progressive=True))
        report = train_progressive(recipe, output_dir=out / "progressive")
        res["progressive"] = [{"stage": r["stage"], "modalities": r["modalities"], "replay_share": r["replay_share"],
                               **{k: v for k, v in r["metrics"].items() if k.endswith("zeroshot_acc")}}
                              for r in report["stages"]]
        print("progressive", json.dumps(res["progressive"]), flush=True)
    return res


# --- part 3: one run, both products vs the two trained apart -------------------------------------------------------
@torch.no_grad()
def _caption_choice(trainer: Trainer, index: int, modality: str) -> float:
    """Closed-set answer of the LLM: the class caption with the lowest summed next-token loss, top-1 vs the label."""
    model = trainer.unwrapped.eval()
    ds = trainer.data.eval_sets[index]
    candidates = [ps[0] for ps in ds.class_prompts().values()]  # "The person is playing badminton." per class
    right = total = 0
    for batch in DataLoader(ds, batch_size=20, collate_fn=Collator(trainer.data.collate_fns, ds.labels)):
        batch = batch.to(model.device)
        feats = {modality: model.features(modality, batch.media[modality])}
        for r in range(len(batch)):
            nll = []
            for cand in candidates:
                b = Batch(batch.tasks, batch.media, batch.captions, batch.prompts, [cand] * len(batch),
                          batch.labels, batch.keys)
                nll.append(float(model.llm_loss(b, feats, [r], lm_only=True)) * model.target_tokens([cand]))
            right += int(int(np.argmin(nll)) == int(batch.labels[r]))
            total += 1
    return right / total


def _metric(out: Path, key: str, step: int) -> float:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return next(r[key] for r in rows if r.get("step") == step and key in r)


def _step_time(out: Path) -> float:
    """Mean training time per step from the run's own log (evaluations excluded)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    times = [recipe["train"]["batch_size"] / r["samples_per_s"] for r in rows if r.get("samples_per_s")]
    return round(float(np.mean(times)), 3)


def run_both(steps: int, out: Path) -> dict:
    """configs/imu_text_and_llm.yaml (one run) vs imu_text_contrastive.yaml then imu_llm_caption.yaml."""
    quick = [f"train.max_steps={steps}", "train.save_every=100000", "train.tensorboard=false", "eval.every=0",
             "eval.at_start=true"]
    res: dict = {}
    one, _ = _fit(load_recipe(ROOT / "configs/imu_text_and_llm.yaml", quick), out / "one_run")
    emb, ys, cls_names, templates, scores = _scores(one, 0, "imu")
    res["one_run"] = {"closed_set_top1": top1(scores, ys), "caption_choice_top1": _caption_choice(one, 1, "imu"),
                      "caption_loss_before": _metric(out / "one_run", "eval/imu2/caption_loss", 0),
                      "caption_loss": _metric(out / "one_run", "eval/imu2/caption_loss", steps),
                      "trainable_params": _trainable(one), "steps": steps, "s_per_step": _step_time(out / "one_run")}
    res["one_run"]["new_wordings_top1"] = phrasing_protocol(
        emb, ys, cls_names, lambda t, m=one.unwrapped: m.anchor_texts("text", t).cpu(), templates,
        read_phrasings(PHRASINGS, cls_names), res["one_run"]["closed_set_top1"])["mean_top1"]
    print("one_run", json.dumps(res["one_run"]), flush=True)
    con, _ = _fit(load_recipe(RECIPE, quick), out / "apart_contrastive")
    emb, ys, cls_names, templates, scores = _scores(con, 0, "imu")
    closed = top1(scores, ys)
    wordings = phrasing_protocol(emb, ys, cls_names, lambda t, m=con.unwrapped: m.anchor_texts("text", t).cpu(),
                                 templates, read_phrasings(PHRASINGS, cls_names), closed)["mean_top1"]
    os.environ["IMU_ADAPTER"] = str(out / "apart_contrastive/adapters/imu")
    cap, _ = _fit(load_recipe(ROOT / "configs/imu_llm_caption.yaml", quick), out / "apart_caption")
    res["apart"] = {"closed_set_top1": closed, "new_wordings_top1": wordings,
                    "caption_choice_top1": _caption_choice(cap, 0, "imu"),
                    "caption_loss_before": _metric(out / "apart_caption", "eval/imu/caption_loss", 0),
                    "caption_loss": _metric(out / "apart_caption", "eval/imu/caption_loss", steps),
                    "trainable_params": _trainable(con) + _trainable(cap), "steps": f"{steps} + {steps}",
                    "s_per_step": [_step_time(out / "apart_contrastive"), _step_time(out / "apart_caption")]}
    print("apart", json.dumps(res["apart"]), flush=True)
    return {**res, "n_test": 40, "chance": 0.25}


# --- part 4: a second public time-series set: JapaneseVowels (frozen trunk vs encoder from scratch) ----------------
#: JapaneseVowels' classes are nine (male) speakers numbered 1-9; the set has no names, so each class is given an
#: arbitrary distinct one: the text is only a class code in the shared space (MiniLM cosine between these class
#: prompts 0.75 on average, against 0.90 for "speaker one" ... "speaker nine")
VOWEL_SPEAKERS = dict(zip("123456789", ["Hiroshi", "Kenji", "Takeshi", "Yuki", "Daisuke", "Satoshi", "Makoto",
                                        "Akira", "Taro"]))
VOWEL_TEMPLATES = ["a Japanese vowel spoken by {label}.", "{label} says the vowel ae.",
                   "a recording of {label} speaking."]
VOWEL_AUGMENT = {"shift": 0.1, "scale": 0.1, "jitter": 0.05}


def _series_recipe(path: Path, encoder: dict, steps: int, out: Path, name: str) -> Path:
    base = yaml.safe_load(RECIPE.read_text())
    src = {"kind": "uea", "path": str(path), "modality": "vowels", "label_text": VOWEL_SPEAKERS,
           "caption_templates": VOWEL_TEMPLATES}
    recipe = {"name": name, "seed": 0,
              "adapters": {"vowels": {"encoder": encoder, "train_encoder": True,
                                      "embed_projector": base["adapters"]["imu"]["embed_projector"]}},
              "anchors": base["anchors"],
              "data": {"train": [{**src, "split": "train", "augment": VOWEL_AUGMENT}],
                       "eval": [{**src, "split": "test"}]},
              "train": {**base["train"], "max_steps": steps, "save_every": 100000, "tensorboard": False,
                        "log_every": 5},
              "eval": {"at_start": False, "every": 0, "recall_k": [1]}}
    file = out / f"{name}.yaml"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return file


def run_series(steps: int, out: Path, assets: Path) -> dict:
    """Trunk vs IMU-style encoder from scratch on JapaneseVowels (12 LPC channels x 25 frames, 9 speakers)."""
    path = assets / "timeseries/JapaneseVowels"
    test = load_uea(path, "test")
    counts = np.bincount(test.targets)
    encoders = {"scratch": {"name": "imu", "options": {"channels": 12}},
                "trunk_minilm": {"name": "trunk", "pretrained": str(assets / "text/all-MiniLM-L6-v2"),
                                 "options": {"channels": 12, "patch": 5}},
                "trunk_whisper": {"name": "trunk", "pretrained": str(assets / WHISPER),
                                  "options": {"channels": 12, "patch": 5}}}
    res: dict = {}
    for name, enc in encoders.items():
        trainer, _ = _fit(load_recipe(_series_recipe(path, enc, steps, out, name)), out / name)
        _, ys, _, _, scores = _scores(trainer, 0, "vowels")
        res[name] = {"closed_set_top1": top1(scores, ys), "trainable_params": _trainable(trainer),
                     "s_per_step": _step_time(out / name)}
        print(name, json.dumps(res[name]), flush=True)
    return {**res, "steps": steps, "n_train": len(load_uea(path, "train")), "n_test": len(test),
            "chance": round(1 / len(counts), 4), "majority": round(float(counts.max() / counts.sum()), 4)}


# --- part 5: joint vs separate per modality (IMU, speech, sounds, images into SmolLM2) -----------------------------
FASHION_SEEN = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sneaker", "Bag", "Ankle boot"]
IMAGE_TEMPLATES = ["a photo of a {label}.", "a picture of a {label}.", "a product photo of a {label}."]
JOINT_UPM = {"name": "universal", "num_experts": 3, "num_modality_tokens": 8, "dim": 256, "heads": 4}
JOINT_RECIPE = ROOT / "configs/joint_instruct.yaml"
#: configs/joint_instruct.yaml's data steps (its header): the speech corpora, split by voice family and text
SPEECH_VOICES = ["--voices", "en-us+m1,en-us+f1,en+m2,en-gb-x-rp+f3", "--heldout-voices", "en-us-nyc+m5,en-029+f1"]
SPEECH_LISTS = {"sentences": ("sentences.txt", ["--heldout-texts", "0.25", "--voices-per-text", "1"]),
                "questions": ("questions.jsonl", ["--heldout-texts", "0.3", "--voices-per-text", "2"])}
WHAT_WAS_SAID = "<speech>\nWhat was said?"


def _cli(args: list[str]) -> None:
    from anyalign.cli.main import main as cli_main

    try:
        cli_main([*args, "--quiet"])
    except SystemExit as e:
        if e.code:
            raise RuntimeError(f"anyalign {' '.join(args)} exited with {e.code}") from None


def joint_data(root: Path, assets: Path) -> Path:
    """configs/joint_instruct.yaml's data steps, in process: the speech corpora, then Whisper (speech), aisfx (sounds)
    and EfficientNet-Lite0 (images) features under `root/features` (what $JOINT_DATA holds); reruns keep them."""
    feats = root / "features"
    for name, (lst, opts) in SPEECH_LISTS.items():
        if not (root / name / "test.jsonl").is_file():
            _cli(["data", "speech", str(ROOT / "configs/data/speech" / lst), *SPEECH_VOICES, *opts,
                  "-o", str(root / name)])
        for fold in ("train", "test"):
            _cli(["extract", "--encoder", "whisper", "--pretrained", str(assets / "audio-models/whisper-tiny.en"),
                  "--set", "padding=longest", "--input", str(root / name / f"{fold}.jsonl"),
                  "--output", str(feats / f"{name}-{fold}"), "--workers", "0"])
    _cli(["extract", "--encoder", "aisfx", "--pretrained", str(assets / "audio-models/aisfx"), "--input",
          str(ROOT / "configs/data/joint_sounds.jsonl"), "--output", str(feats / "sounds"), "--workers", "0"])
    for split in ("train-6pc-8cls", "test-6pc"):
        _cli(["extract", "--encoder", "timm-image", "--pretrained", str(assets / "image/efficientnet-lite0.pth"),
              "--input", str(assets / f"image/fashion-mnist/{split}.jsonl"), "--output",
              str(feats / f"images-{split}"), "--workers", "0"])
    return root


def _write(recipe: dict, out: Path, name: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "seed": 0, **recipe}, sort_keys=False))
    return out / f"{name}.yaml"


def _eval_losses(out: Path, step: int) -> dict[str, float]:
    """Eval losses logged at `step`, keyed `<tag>/<task>_loss` (a tag is the modality plus the source's number)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {k.split("/", 1)[1]: v for r in rows if r.get("step") == step for k, v in r.items()
            if k.startswith("eval/") and k.endswith("_loss")}


def _of(losses: dict[str, float], modality: str, task: str = "caption") -> float:
    """The `task` loss of `modality`'s first eval source of that task."""
    return next(v for k, v in losses.items() if k.split("/")[0].rstrip("0123456789") == modality
                and k.endswith(f"/{task}_loss"))


def _zeroshot(trainer: Trainer, index: int, modality: str) -> float:
    scored = _scores(trainer, index, modality)
    return top1(scored[4], scored[1])


@torch.no_grad()
def _answer_nll(mllm: object, prompts: list[str], targets: list[str], features: dict | None) -> list[float]:
    """Summed next-token loss of each target after its prompt (and media), one value per row."""
    prep = mllm.prepare(prompts, targets, features=features or {})
    lay = prep.layout
    logits = mllm.llm(inputs_embeds=prep.embeds, attention_mask=lay.attention_mask, position_ids=lay.position_ids,
                      use_cache=False).logits[:, :-1].float()
    labels = lay.labels[:, 1:]
    nll = F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none") * (labels >= 0)
    return nll.sum(1).tolist()


@torch.no_grad()
def _speech_answers(trainer: Trainer, index: int, *, choice: bool, text_prompt: str | None = None,
                    max_new_tokens: int = 20) -> dict:
    """Eval source `index` (speech rows with a prompt and a reference target): the LLM's greedy answers vs the
    references (WER; exact match after Whisper's normaliser) and with `choice`, among the source's distinct
    references, the one with the lowest summed loss (closed-set, chance 1/K). With `text_prompt` ("{text}" is what
    was said) the text is typed instead of spoken: what the same LLM (and LoRA) does when it hears perfectly."""
    from anyalign.metrics.wer import normalize_text, wer

    model = trainer.unwrapped.eval()
    mllm = model.frozen.mllm
    ds = trainer.data.eval_sets[index]
    texts = iter([rec["caption"] for _, rec in ds.records])  # what was said (the DataLoader keeps the order)
    batches = []
    for batch in DataLoader(ds, batch_size=16, collate_fn=Collator(trainer.data.collate_fns, ds.labels)):
        batch = batch.to(model.device)
        feats = model.features("speech", batch.media["speech"])
        if text_prompt is None:
            batches.append((list(batch.prompts), list(batch.targets), feats))
        else:
            batches.append(([text_prompt.format(text=next(texts)) for _ in batch.prompts], list(batch.targets), None))
    candidates = sorted({t for _, targets, _ in batches for t in targets})
    refs, hyps, right = [], [], []
    for prompts, targets, feats in batches:
        refs += targets
        hyps += mllm.generate(prompts, features={"speech": feats} if feats is not None else None,
                              max_new_tokens=max_new_tokens, do_sample=False)
        for r in range(len(prompts)) if choice else ():
            f = None if feats is None else {"speech": feats[torch.full((len(candidates),), r, dtype=torch.long)]}
            nll = _answer_nll(mllm, [prompts[r]] * len(candidates), candidates, f)
            right.append(candidates[int(np.argmin(nll))] == targets[r])
    out = {"n": len(refs), "wer": round(wer(refs, hyps), 4),
           "exact": round(float(np.mean([normalize_text(h) == normalize_text(r) for h, r in zip(hyps, refs)])), 4),
           "examples": [[r, h] for r, h in zip(refs, hyps)][:2]}
    if choice:
        out.update(distinct=len(candidates), choice_top1=round(float(np.mean(right)), 4),
                   choice_chance=round(1 / len(candidates), 4))
    return out


def _speech_metrics(trainer: Trainer, sentences: int, questions: int, typed: bool = True) -> dict:
    """Transcripts of held-out sentences, spoken-question answers, and (`typed`) the questions typed instead."""
    out = {"transcripts": _speech_answers(trainer, sentences, choice=False),
           "spoken_questions": _speech_answers(trainer, questions, choice=True)}
    if typed:
        out["typed_questions"] = _speech_answers(trainer, questions, choice=True,
                                                 text_prompt="{text}\nAnswer the question.")
    return out


def run_joint(steps: int, out: Path, assets: Path, equal_rows: bool = True,
              modalities: tuple[str, ...] = ("imu", "speech", "audio", "image")) -> dict:
    """Stage 1 (shared space, IMU and images), then the LLM side trained per modality apart or jointly (one universal
    projector + LoRA, contrastive rows kept in the mix); speech, sounds and images from cached features. Held-out
    caption loss before/after, spoken-question answers before/after, zero-shot after stage 1 and after."""
    data = joint_data(out / "data", assets)
    os.environ["JOINT_DATA"] = str(data)
    feats = data / "features"
    shipped = load_recipe(JOINT_RECIPE, check=False)
    base = yaml.safe_load(RECIPE.read_text())
    llm = {"llm": str(assets / "llm/SmolLM2-135M-Instruct"), "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    quick = {"max_steps": steps, "save_every": 100000, "tensorboard": False, "log_every": 5}
    image_enc = {"encoder": {"name": "timm-image", "pretrained": str(assets / "image/efficientnet-lite0.pth")}}
    head = base["adapters"]["imu"]["embed_projector"]
    img = {"kind": "features", "modality": "image"}
    img_con = {"train": {**img, "path": str(feats / "images-train-6pc-8cls"), "caption_templates": IMAGE_TEMPLATES},
               "eval": {**img, "path": str(feats / "images-test-6pc"), "classes": FASHION_SEEN,
                        "caption_templates": IMAGE_TEMPLATES}}
    cap = {"task": "caption", "caption_templates": ["A photo of a {label}."],
           "prompts": ["<image>\nWhat is in this picture?"]}
    img_cap = {k: {**v, **cap} for k, v in img_con.items()}
    imu_cap = yaml.safe_load((ROOT / "configs/imu_llm_caption.yaml").read_text())["data"]
    imu_con = {k: base["data"][k][0] for k in ("train", "eval")}

    def shipped_sources(m: str, split: str) -> list[dict]:  # the joint recipe's own speech and sound sources
        return [{k: v for k, v in vars(s).items() if v is not None and k not in ("captions", "augment")}
                for s in getattr(shipped.data, split) if s.modality == m]

    res: dict = {"steps": steps}

    # stage 1: IMU and images each bound to the text space on their own (speech and sounds get no shared-space head)
    s1_imu, _ = _fit(load_recipe(RECIPE, [f"train.max_steps={steps}", "train.save_every=100000",
                                          "train.tensorboard=false", "eval.every=0", "eval.at_start=false"]),
                     out / "s1_imu")
    s1_img, _ = _fit(load_recipe(_write({
        "adapters": {"image": {**image_enc, "feature": "pooled", "embed_projector": head}}, "anchors": base["anchors"],
        "data": {k: [img_con[k]] for k in ("train", "eval")},
        "train": {**base["train"], "batch_size": 16, **quick}, "eval": {"at_start": False, "every": 0}},
        out, "s1_image")), out / "s1_image")
    res["stage1_zeroshot"] = {"imu": _zeroshot(s1_imu, 0, "imu"), "image": _zeroshot(s1_img, 0, "image")}
    print("stage1", json.dumps(res["stage1_zeroshot"]), flush=True)
    ad_imu, ad_img = str(out / "s1_imu/adapters/imu"), str(out / "s1_image/adapters/image")

    # separate: each modality alone with the joint stage's recipe (LoRA, its own universal projector, the same
    # rows); joint: one universal projector shared by all four
    train = {"batch_size": 16, "lr": 5.0e-4, "warmup_steps": 5, **quick}
    adapters = {"imu": {"encoder": "imu", "init_from": ad_imu, "embed_projector": head},
                "speech": {"encoder": shipped.adapters["speech"].encoder.to_dict()},
                "audio": {"encoder": shipped.adapters["audio"].encoder.to_dict()},
                "image": {**image_enc, "feature": "pooled", "init_from": ad_img, "embed_projector": head}}
    sources = {"imu": {k: [imu_con[k], imu_cap[k][0]] for k in ("train", "eval")},
               "image": {k: [img_con[k], img_cap[k]] for k in ("train", "eval")},
               **{m: {k: shipped_sources(m, k) for k in ("train", "eval")} for m in ("speech", "audio")}}
    shared_space = ("imu", "image")

    def stage(mods: tuple[str, ...], name: str, n: int = steps) -> dict:
        shared = len(mods) > 1
        evals = [(m, s) for m in mods for s in sources[m]["eval"]]
        recipe = _write({
            "model": {**llm, "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}},
            **({"projectors": {"upm": JOINT_UPM}} if shared else {}),
            "adapters": {m: {**adapters[m], "llm_projector": "upm" if shared else {**JOINT_UPM, "modalities": [m]}}
                         for m in mods},
            "anchors": base["anchors"],
            "data": {"train": [s for m in mods for s in sources[m]["train"]], "eval": [s for _, s in evals]},
            "train": {**train, "max_steps": n}, "eval": {"at_start": True, "every": 0}}, out, name)
        trainer = Trainer(load_recipe(recipe), output_dir=out / name)
        at = {m: [i for i, (mm, _) in enumerate(evals) if mm == m] for m in mods}
        speech_idx = None
        if "speech" in mods:  # the held-out sentences (caption) and spoken questions (instruct)
            speech_idx = (at["speech"][0], next(i for i in at["speech"] if evals[i][1]["task"] == "instruct"))
            # typed questions before training: the plain LLM (LoRA starts at zero), the same for every run
            speech_before = _speech_metrics(trainer, *speech_idx, typed="typed_questions_base_llm" not in res)
            if "typed_questions" in speech_before:
                res["typed_questions_base_llm"] = speech_before.pop("typed_questions")
        trainer.fit()
        before, after = _eval_losses(out / name, 0), _eval_losses(out / name, n)
        row: dict = {m: {"caption_loss_before": _of(before, m), "caption_loss_after": _of(after, m),
                         "n_caption_eval": len(trainer.data.eval_sets[next(i for i in at[m] if evals[i][1].get("task")
                                                                      == "caption")])} for m in mods}
        for m in shared_space:
            if m in mods:
                row[m]["zeroshot_after"] = _zeroshot(trainer, at[m][0], m)
        if speech_idx is not None:
            row["speech"].update(question_loss_before=_of(before, "speech", "instruct"),
                                 question_loss_after=_of(after, "speech", "instruct"),
                                 before=speech_before, after=_speech_metrics(trainer, *speech_idx))
        return {**row, "steps": n, "trainable_params": _trainable(trainer), "s_per_step": _step_time(out / name)}

    mods = tuple(m for m in ("imu", "speech", "audio", "image") if m in modalities)
    res["separate"] = {}
    for m in mods:
        res["separate"][m] = stage((m,), f"separate_{m}")
        print("separate", m, json.dumps(res["separate"][m]), flush=True)
    if len(mods) < 2:
        return res
    res["joint"] = stage(mods, "joint")
    print("joint", json.dumps(res["joint"]), flush=True)
    if equal_rows:  # as many rows per modality as apart (4x the steps)
        res["joint_equal_rows"] = stage(mods, "joint_equal", len(mods) * steps)
        print("joint_equal_rows", json.dumps(res["joint_equal_rows"]), flush=True)
    res.update(chance={"imu": 0.25, "image": 0.125},
               split="BasicMotions test split; Fashion-MNIST test-6pc, its 8 training classes (closed set); speech: "
                     "held-out voices (en-us-nyc+m5, en-029+f1) speaking held-out sentences and questions only; "
                     "sounds: 30% of the freedesktop sounds by file-name hash")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--only", choices=["trunk", "shared", "both", "series", "joint"])
    ap.add_argument("--progressive", action="store_true")
    ap.add_argument("--data", choices=["basicmotions", "japanesevowels"], default="basicmotions",
                    help="the set `shared` (and --progressive) cuts into two modalities")
    ap.add_argument("--no-equal-rows", dest="equal_rows", action="store_false",
                    help="part joint: skip the joint run at 4x the steps (as many rows per modality as apart)")
    ap.add_argument("--modalities", default="imu,speech,audio,image",
                    help="part joint: the modalities (one alone: only its separate run)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    assets = assets_root()
    if assets is None or not (assets / "imu/BasicMotions").is_dir():
        raise SystemExit("needs the real assets (BasicMotions, MiniLM): run `anyalign quickstart` or set "
                         "ANYALIGN_ASSETS")
    os.environ["ANYALIGN_ASSETS"] = str(assets)
    report: dict = {"steps": args.steps, "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "trunk"):
            report["trunk_vs_scratch"] = run_trunk(args.steps, Path(tmp) / "trunk", assets)
        if args.only in (None, "shared"):
            report["shared_vs_private"] = run_shared(args.steps, Path(tmp) / "shared", assets, args.progressive,
                                                     args.data)
        if args.only in (None, "both"):
            report["one_run_vs_apart"] = run_both(args.steps, Path(tmp) / "both")
        if args.only in (None, "series"):
            report["japanese_vowels"] = run_series(args.steps, Path(tmp) / "series", assets)
        if args.only in (None, "joint"):
            report["joint_vs_separate"] = run_joint(args.steps, Path(tmp) / "joint", assets, args.equal_rows,
                                                    tuple(args.modalities.split(",")))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
