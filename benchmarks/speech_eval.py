"""Held-out-voice speech numbers end to end, with the project's commands (what a user would run).

    python benchmarks/speech_eval.py [--data runs/speech] [--llm-steps 200] [--skip-llm]

1. `anyalign data speech`: the command words (3 takes per voice), the sentences and the spoken questions of
   configs/data/speech, each split by voice (`--voices` train, `--heldout-voices` test: never heard in training).
2. `anyalign extract` of Whisper tiny.en features per list and fold (resumable; the slow part on a CPU: Whisper always
   encodes a 30 s window, about 0.3-1 s per clip on 2 cores).
3. `anyalign train configs/speech_text_contrastive.yaml`, then on the held-out voices:
   zero-shot command accuracy with `anyalign classify` and `anyalign eval zeroshot` (chance 1/10), and speech -> text
   retrieval among all distinct test sentences with `anyalign embed` + `anyalign index build` + `anyalign eval
   retrieval --match text_id` (chance R@1 = 1/#sentences).
4. Unless --skip-llm: `anyalign train configs/speech_llm_caption.yaml`, then the word error rate of the LLM's
   transcriptions of held-out-voice sentences next to Whisper tiny.en's own greedy decoder on the same files.
Prints one JSON document with every number, its chance level and the split.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LISTS = ROOT / "configs" / "data" / "speech"
COMMANDS = "yes,no,stop,go,left,right,up,down,on,off"


def sh(*args: str, capture: bool = False) -> str:
    """Run an `anyalign` command; fail loudly with its output."""
    cmd = ["anyalign", *args]
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({res.returncode}):\n{res.stderr[-2000:]}")
    return res.stdout if capture else ""


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("SPEECH_DATA", "runs/speech")))
    ap.add_argument("--runs", type=Path, default=Path("runs"))
    ap.add_argument("--voices", default="en-us+m1,en+f2,en-gb-scotland+m3", help="training voices")
    ap.add_argument("--heldout-voices", default="en-us+m5", help="test voices (never in training)")
    ap.add_argument("--command-voices", default=None, help="training voices of the command words (default: --voices)")
    ap.add_argument("--command-heldout-voices", default=None)
    ap.add_argument("--sentences", type=int, default=100, help="use the first N sentences of sentences.txt")
    ap.add_argument("--contrastive-steps", type=int, default=600)
    ap.add_argument("--llm-steps", type=int, default=200)
    ap.add_argument("--wer-clips", type=int, default=50, help="held-out sentence recordings scored for WER")
    ap.add_argument("--skip-llm", action="store_true")
    args = ap.parse_args()
    assets = Path(os.environ.get("ANYALIGN_ASSETS", Path.home() / ".cache" / "anyalign-assets"))
    whisper = assets / "audio-models" / "whisper-tiny.en"
    minilm = assets / "text" / "all-MiniLM-L6-v2"
    data = args.data.resolve()
    os.environ["SPEECH_DATA"] = str(data)
    out: dict = {"split": {"train_voices": args.voices.split(","), "test_voices": args.heldout_voices.split(","),
                           "how": "by voice: test voices never occur in training; the texts are the same"}}
    t0 = time.time()

    # 1. corpora
    data.mkdir(parents=True, exist_ok=True)
    sentences = data / "sentences.txt"
    lines = [ln for ln in (LISTS / "sentences.txt").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    sentences.write_text("\n".join(lines[: args.sentences]) + "\n")
    cv = args.command_voices or args.voices
    ch = args.command_heldout_voices or args.heldout_voices
    for name, src, v, h in [("commands", LISTS / "commands.jsonl", cv, ch), ("sentences", sentences, args.voices,
                                                                             args.heldout_voices),
                            ("questions", LISTS / "questions.jsonl", args.voices, args.heldout_voices)]:
        sh("data", "speech", str(src), "-o", str(data / name), "--voices", v, "--heldout-voices", h, "--quiet")
    # 2. features
    for name in ("commands", "sentences", "questions"):
        for fold in ("train", "test"):
            sh("extract", "--encoder", "whisper", "--pretrained", str(whisper), "--input",
               str(data / name / f"{fold}.jsonl"), "--output", str(data / "features" / f"{name}-{fold}"),
               "--batch-size", "8", "--workers", "0", "--shard-size", "100", "--quiet")
    out["seconds_data"] = round(time.time() - t0, 1)

    # 3. speech -> text space
    run = args.runs / "speech_text_contrastive"
    sh("train", str(ROOT / "configs" / "speech_text_contrastive.yaml"), f"output_dir={run}",
       f"train.max_steps={args.contrastive_steps}")
    adapter = run / "adapters" / "audio"
    out["train_eval"] = json.loads((run / "eval.json").read_text())
    test_cmds = rows(data / "commands" / "test.jsonl")
    wavs = [str(data / "commands" / r["audio"]) for r in test_cmds]
    res = json.loads(sh("classify", "--adapter", str(adapter), "--labels", COMMANDS, "--template", "{}", "--json",
                        "-k", "1", *wavs, capture=True))
    hits = [p["predictions"][0]["label"] == r["label"] for p, r in zip(res["results"], test_cmds)]
    out["commands_classify"] = {"accuracy": sum(hits) / len(hits), "n": len(hits), "chance": 0.1}
    rep = json.loads(sh("eval", "zeroshot", str(data / "commands" / "labels.csv"), "--adapter", str(adapter),
                        "--fold", "test", "--template", "{}", "--json", "-o", str(run / "zeroshot-commands"),
                        capture=True))
    out["commands_eval_zeroshot"] = {k: rep["metrics"][k] for k in ("top1", "top5", "n", "chance")}
    emb = run / "emb"
    sh("embed", str(data / "features" / "sentences-test"), "--adapter", str(adapter), "-o", str(emb / "audio"))
    sh("embed", str(data / "sentences" / "texts-test.jsonl"), "--encoder", "text", "--pretrained", str(minilm),
       "-o", str(emb / "text"))
    sh("index", "build", str(emb / "text"), "-o", str(emb / "text-index"))
    r = json.loads(sh("eval", "retrieval", str(emb / "audio"), str(emb / "text-index"), "--match", "text_id",
                      "-k", "1,5,10", "--json", capture=True))
    n_sent = len(rows(data / "sentences" / "texts-test.jsonl"))
    out["speech_to_text_retrieval"] = {**r, "sentences": n_sent, "chance_R@1": 1 / n_sent}

    # 4. speech -> LLM transcription WER
    if not args.skip_llm:
        run_llm = args.runs / "speech_llm_caption"
        sh("train", str(ROOT / "configs" / "speech_llm_caption.yaml"), f"output_dir={run_llm}",
           f"train.max_steps={args.llm_steps}")
        out["llm_wer"] = wer_report(run_llm / "adapters" / "audio", data, whisper, assets, args.wer_clips)
    out["seconds_total"] = round(time.time() - t0, 1)
    print(json.dumps(out, indent=2))


def wer_report(adapter: Path, data: Path, whisper: Path, assets: Path, n: int) -> dict:
    """WER of SmolLM2 (through the adapter, on cached features) and of Whisper's own decoder, same clips."""
    import torch
    from transformers import AutoTokenizer, WhisperFeatureExtractor, WhisperForConditionalGeneration

    from anyalign.encoders.audio_io import load_audio
    from anyalign.features import load_features
    from anyalign.llm import MultimodalLM
    from anyalign.metrics import wer

    recs = load_features(data / "features" / "sentences-test")[:n]
    refs = [r.meta["text"] for r in recs]
    mlm = MultimodalLM.from_pretrained(assets / "llm" / "SmolLM2-135M-Instruct", {"audio": str(adapter)},
                                       gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", device="cpu")
    from anyalign.features import collate_features

    llm_hyp = []
    for i in range(0, len(recs), 8):
        feats = collate_features(recs[i:i + 8])
        llm_hyp += mlm.generate(["<audio>\nWhat was said?"] * len(feats.tokens), features={"audio": feats},
                                max_new_tokens=40, do_sample=False)
    model = WhisperForConditionalGeneration.from_pretrained(whisper).eval()
    fe = WhisperFeatureExtractor.from_pretrained(whisper)
    tok = AutoTokenizer.from_pretrained(whisper)
    w_hyp = []
    for i in range(0, len(recs), 8):
        waves = [load_audio(r.meta["source"], 16000) for r in recs[i:i + 8]]
        with torch.inference_mode():
            ids = model.generate(fe(waves, sampling_rate=16000, return_tensors="pt").input_features,
                                 max_new_tokens=60)
        w_hyp += tok.batch_decode(ids, skip_special_tokens=True)
    w_llm, w_whisper = wer(refs, llm_hyp), wer(refs, w_hyp)
    return {"clips": len(refs), "llm_wer": w_llm, "whisper_wer": w_whisper,
            "ratio": w_llm / w_whisper if w_whisper else None,
            "examples": [{"ref": a, "llm": b, "whisper": c} for a, b, c in list(zip(refs, llm_hyp, w_hyp))[:5]]}


if __name__ == "__main__":
    main()
