"""The quickstart's speech step: Whisper tiny.en bound to the MiniLM space (retrieval of new sentences, zero-shot
digits) and to SmolLM2 (spoken questions, transcripts), on speech synthesised here; and its report section."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RECIPES_DIR

# --- speech: Whisper tiny.en -> the MiniLM space (retrieval of new sentences, zero-shot digits) and -> SmolLM2
SPEECH_COMMANDS = ["yes", "no", "stop", "go", "left", "right", "up", "down", "on", "off"]
SPEECH_DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]  # never trained
SPEECH_SENTENCES = ["Please turn on the kitchen light.", "The train to London leaves at half past nine.",
                    "Where did you put my keys?", "It is going to rain this afternoon.",
                    "Can you play some music in the living room?", "The coffee is too hot to drink.",
                    "My sister lives in a small house near the sea.", "We need two loaves of bread and some milk.",
                    "The children are playing football in the park.", "Remind me to call the doctor tomorrow.",
                    "The museum opens at ten in the morning.", "A cold wind is blowing from the north."]
SPEECH_QUESTIONS = [("What is the capital of France?", "The capital of France is Paris."),
                    ("How many days are there in a week?", "There are seven days in a week."),
                    ("What do bees make?", "Bees make honey."),
                    ("How many legs does a spider have?", "A spider has eight legs."),
                    ("What colour is the sky on a clear day?", "The sky is blue on a clear day.")]
SPEECH_TRAIN_VOICES = ["en-us+m1", "en-us+f1", "en+m2", "en+f2", "en-gb-scotland+m3", "en-gb-x-rp+f3"]
SPEECH_HELDOUT_VOICE = "en-us-nyc+m5"  # a voice FAMILY (espeak:en-us-nyc) no training voice belongs to
SPEECH_HELDOUT_TEXTS = 0.25  # share of the sentences held out: spoken only by the held-out voice
ASK_PROMPT = "<audio>\nAnswer the spoken question."

SPEECH_RECIPE = "speech_text_ctc"  #: the shipped recipe of the words head, at the demo's size through overrides

SPEECH_LLM_RECIPE = "speech_llm_words"  #: the LLM reads what the words head heard; a LoRA learns the answers


def speech_sentences(fast: bool) -> list[str]:
    """Distinct short sentences to speak: Debian `fortunes` where installed (none holds a digit word), else the
    shipped list configs/data/speech/sentences.txt without the sentences that say a digit."""
    from .speech_corpus import FORTUNES_DIR, fortune_sentences

    n = 80 if fast else 400
    if FORTUNES_DIR.is_dir():
        return [u.text for u in fortune_sentences(n)]
    shipped = RECIPES_DIR / "data" / "speech" / "sentences.txt"
    lines = [ln.split("#", 1)[0].strip() for ln in shipped.read_text(encoding="utf-8").splitlines()]
    digits = set(SPEECH_DIGITS)
    keep = [ln for ln in lines if ln and not digits & {w.strip(",.?!;:'").lower() for w in ln.split()}]
    return (SPEECH_SENTENCES + keep)[:n]


def _speech_corpus(work: Path, fast: bool) -> dict[str, Path]:
    """Training commands, sentences split by text (the held-out quarter spoken only by a held-out voice family),
    digit words (never trained) in the held-out voice, and spoken questions (the LLM step) in every voice."""
    from .speech_corpus import Utterance, synthesize_corpus

    questions = SPEECH_QUESTIONS[:3] if fast else SPEECH_QUESTIONS
    voices, held = speech_train_voices(fast), [SPEECH_HELDOUT_VOICE]
    lists = {"commands": ([Utterance(c, label=c, takes=1 if fast else 2) for c in SPEECH_COMMANDS], voices, []),
             "sentences": ([Utterance(s) for s in speech_sentences(fast)], voices, held),
             "digits": ([Utterance(d, label=d) for d in SPEECH_DIGITS], [], held),
             "questions": ([Utterance(q, answer=a) for q, a in questions], voices, held)}
    out = {}
    for name, (utts, train_v, test_v) in lists.items():
        synthesize_corpus(utts, work / "speech" / name, voices=train_v, heldout_voices=test_v, progress=False,
                          heldout_texts=SPEECH_HELDOUT_TEXTS if name == "sentences" else 0.0,
                          voices_per_text=None if fast or name != "sentences" else 3)
        out[name] = work / "speech" / name
    return out


def speech_train_voices(fast: bool) -> list[str]:
    return SPEECH_TRAIN_VOICES[:2] if fast else SPEECH_TRAIN_VOICES


def speech_demo(paths: dict[str, Path], work: Path, *, fast: bool, contrastive_steps: int,
                llm_steps: int) -> dict[str, Any]:
    """Train a Whisper speech adapter into the MiniLM space and into SmolLM2 on synthesised speech, and measure it on
    sentences it never heard spoken by a voice family it never heard: speech -> text retrieval next to Whisper's own
    decoder on the same clips, zero-shot spoken digits (never trained), spoken questions, transcripts."""
    from ..align import load_recipe, train
    from ..datasets.records import read_records
    from ..embedder import Embedder
    from ..encoders import create_encoder
    from ..encoders.extract import extract
    from ..encoders.spec import EncoderSpec
    from ..features import collate_features, load_features
    from ..llm import MultimodalLM
    from ..llm.transcribe import evaluate_transcription, whisper_transcripts

    corpora = _speech_corpus(work, fast)
    whisper, minilm = str(paths["whisper-tiny.en"]), str(paths["minilm"])
    spec = EncoderSpec("whisper", whisper, {"padding": "longest"})  # the clip's own frames, not a 30 s pad
    encoder = create_encoder("whisper", pretrained=whisper, padding="longest")
    feats = work / "speech" / "features"
    for fold in ("train", "test"):
        for name, folder in corpora.items():  # one feature folder per list and fold (resumable, reused on reruns)
            if (folder / f"{fold}.jsonl").stat().st_size:
                extract(encoder, folder / f"{fold}.jsonl", feats / f"{name}-{fold}", batch_size=8, progress=False,
                        spec=spec)
    del encoder

    # stage 1: the words head (CTC on the transcripts of every training list), the shipped recipe at this size
    train_sources = [{"kind": "features", "path": str(feats / f"{n}-train"), "task": "ctc"} for n in corpora
                     if n != "digits"]
    stage1 = train(load_recipe(SPEECH_RECIPE, [
        "name=quickstart_speech_text", f"output_dir={json.dumps(str(work / 'speech_text'))}",
        f"adapters.audio.encoder.pretrained={json.dumps(whisper)}",
        f"anchors.text.encoder.pretrained={json.dumps(minilm)}", f"data.train={json.dumps(train_sources)}",
        f"data.eval={json.dumps([{'kind': 'features', 'path': str(feats / 'sentences-test')}])}",
        f"train.max_steps={contrastive_steps}", f"train.warmup_steps={max(2, contrastive_steps // 10)}",
        f"train.save_every={contrastive_steps}", f"eval.every={contrastive_steps}", "eval.at_start=false"]))
    adapter_dir = Path(stage1.adapters["audio"])

    speech = Embedder.from_adapter(adapter_dir, load_encoder=False)  # embeds the Whisper features cached above
    text = Embedder.from_encoder(EncoderSpec("text", minilm))
    held = {n: read_records(corpora[n] / "test.jsonl", modalities=["audio"]) for n in ("sentences", "digits",
                                                                                       "questions")}

    held_feats = {n: load_features(feats / f"{n}-test") for n in ("sentences", "digits")}  # read once

    def held_embeddings(name: str) -> np.ndarray:
        """Speech embeddings of the held-out recordings of list `name`, in `held[name]` order."""
        recs = held_feats[name]
        emb = dict(zip((str(r.key) for r in recs), speech.embed_features(collate_features(recs))))
        return np.stack([emb[r.key] for r in held[name]])

    # zero-shot spoken digits (no training text says one), as `anyalign classify --adapter` does it: the words
    # head embeds each held-out recording as the digit word it most likely says (its lexicon = the ten bare words)
    head = speech.adapter.embed_head
    head.constrain(SPEECH_DIGITS)
    dig_emb = held_embeddings("digits")
    word_emb = text.embed(SPEECH_DIGITS)  # speech templates: the words themselves
    pred = (dig_emb @ word_emb.T).argmax(1)
    zs_acc = float(np.mean([SPEECH_DIGITS[p] == r.label for p, r in zip(pred, held["digits"])]))
    # speech -> text among the held-out sentences (chance 1/N): the free transcript's embedding (what a FAISS index
    # of texts is searched with) and the lexicon-constrained one (candidates = the gallery), next to Whisper's
    # decoder + MiniLM on the same clips; text -> speech with players
    sentences = held["sentences"]
    texts = [r.text for r in sentences]
    head.constrain(None)
    s_emb = held_embeddings("sentences")
    head.constrain(texts)
    lex_emb = held_embeddings("sentences")
    head.constrain(None)
    t_emb = text.embed(texts)

    def recall(q_emb: np.ndarray) -> tuple[float, float]:
        sims = q_emb @ t_emb.T
        ranks = [int((sims[i] >= sims[i, i]).sum()) - 1 for i in range(len(texts))]  # ties count against
        return float(np.mean([r < 1 for r in ranks])), float(np.mean([r < 5 for r in ranks]))

    r1, r5 = recall(s_emb)
    lex_r1, lex_r5 = recall(lex_emb)
    heard = whisper_transcripts(whisper, [r.input("audio") for r in sentences], batch_size=8, quiet=True)
    base_r1, base_r5 = recall(text.embed([h or "." for h in heard]))
    queries = []
    for q in ["switch on the light in the kitchen", "what insects make honey", "will it rain later today"]:
        scores = (text.embed([q]) @ s_emb.T)[0]
        top = np.argsort(-scores)[:3]
        queries.append({"query": q, "hits": [{"audio": str(sentences[i].input("audio")), "text": texts[i],
                                              "score": float(scores[i])} for i in top]})

    # stage 2: SmolLM2 reads what the words head heard (llm_projector: heard); a LoRA learns to answer the spoken
    # questions and to write the transcript for "What was said?" (the shipped recipe at this size)
    gguf = next(paths["smollm2"].glob("*.gguf")).name
    asked_src = [{"kind": "features", "path": str(feats / "questions-train"), "task": "instruct"},
                 {"kind": "features", "path": str(feats / "sentences-train"), "task": "caption",
                  "prompts": ["<audio>\nWhat was said?"]}]
    stage2 = train(load_recipe(SPEECH_LLM_RECIPE, [
        "name=quickstart_speech_llm", f"output_dir={json.dumps(str(work / 'speech_llm'))}",
        f"model.llm={json.dumps(str(paths['smollm2']))}", f"model.gguf_file={gguf}",
        f"adapters.audio.encoder.pretrained={json.dumps(whisper)}",
        f"adapters.audio.init_from={json.dumps(str(adapter_dir))}",
        f"anchors.text.encoder.pretrained={json.dumps(minilm)}", f"data.train={json.dumps(asked_src)}",
        f"data.eval={json.dumps([{'kind': 'features', 'path': str(feats / 'questions-test'), 'task': 'instruct'}])}",
        f"train.max_steps={llm_steps}", "train.warmup_steps=3", f"train.save_every={llm_steps}",
        "train.log_every=5", f"eval.every={llm_steps}", "eval.at_start=true", "eval.batch_size=8"]))
    mlm = MultimodalLM.from_pretrained(stage2.output_dir / "mllm")
    asked = held["questions"]
    answers = mlm.generate([ASK_PROMPT] * len(asked), inputs={"audio": [r.input("audio") for r in asked]},
                           max_new_tokens=16, do_sample=False)
    answer_of = dict(SPEECH_QUESTIONS)
    chat = [{"question": r.text, "audio": str(r.input("audio")), "expected": answer_of[r.text],
             "answer": a.strip()} for r, a in zip(asked, answers)]
    said = held["sentences"][:4] if fast else held["sentences"]
    transcription = evaluate_transcription(said, mlm, whisper=whisper, batch_size=6, max_new_tokens=24, quiet=True)
    rows = [json.loads(line) for line in (stage2.output_dir / "metrics.jsonl").read_text().splitlines() if line]
    losses = [r["eval/audio/instruct_loss"] for r in rows if "eval/audio/instruct_loss" in r]
    return {"adapter": str(adapter_dir), "llm_adapter": stage2.adapters["audio"],
            "heldout_voice": SPEECH_HELDOUT_VOICE,
            "train_voices": speech_train_voices(fast),
            "protocol": "held-out sentences spoken by a held-out voice family (split by text and voice family)",
            "zeroshot_digits": zs_acc, "zeroshot_chance": 1 / len(SPEECH_DIGITS),
            "speech_to_text_R@1": r1, "speech_to_text_R@5": r5, "retrieval_chance_R@1": 1 / len(texts),
            "speech_to_text_lexicon_R@1": lex_r1, "speech_to_text_lexicon_R@5": lex_r5,
            "whisper_then_minilm_R@1": base_r1, "whisper_then_minilm_R@5": base_r5,
            "n_texts": len(texts),
            "n_train_texts": len((corpora["sentences"] / "texts-train.jsonl").read_text().splitlines()),
            "text_to_speech": queries, "chat": chat,
            "instruct_loss_before": losses[0] if losses else None,
            "instruct_loss_after": losses[-1] if losses else None,
            "wer_llm": transcription["llm"]["wer"], "wer_whisper": transcription["whisper"]["wer"],
            "transcripts": transcription["rows"], "steps": [stage1.step, stage2.step]}


def speech_section(rep: Any, sp: dict[str, Any]) -> None:
    """Speech part of the report: held-out-voice numbers with chance levels, players, answers and transcripts."""
    rep.heading("Speech: Whisper tiny.en bound to the MiniLM space and to SmolLM2")
    rep.text(f"Synthesised with espeak-ng: {len(SPEECH_COMMANDS)} command words, {sp['n_train_texts']} training "
             f"sentences and spoken questions in {len(sp['train_voices'])} training voices "
             f"({', '.join(sp['train_voices'])}). Retrieval and zero-shot below are on {sp['n_texts']} sentences "
             f"never used in training, spoken by {sp['heldout_voice']}, a voice family no training voice belongs to, "
             "and on the digit words, which no training text contains. Whisper's own decoder + MiniLM on the same "
             "clips is the reference (benchmarks/speech_generalise.py runs the full protocol).", muted=True)
    rep.text("The adapter is a CTC words head: it spells what it hears, and a clip's place in the space is MiniLM's "
             "embedding of that. Free transcript = that embedding (what a text index is searched with); lexicon = "
             "the head scores each candidate text (the gallery sentences, the ten digit words) by how likely it was "
             "said, and the clip embeds as the most likely one.", muted=True)
    rep.metrics({"spoken digits, zero-shot (lexicon)": f"{sp['zeroshot_digits']:.0%}",
                 "chance": f"{sp['zeroshot_chance']:.0%}",
                 f"speech -> new sentence R@1 (of {sp['n_texts']}), lexicon":
                     f"{sp['speech_to_text_lexicon_R@1']:.0%}",
                 "free transcript R@1": f"{sp['speech_to_text_R@1']:.0%}",
                 "R@1 chance": f"{sp['retrieval_chance_R@1']:.0%}",
                 "Whisper decoder + MiniLM R@1": f"{sp['whisper_then_minilm_R@1']:.0%}"})
    for q in sp["text_to_speech"]:
        rep.text(f"text -> speech: {q['query']}")
        rep.gallery([{"title": f"#{j + 1}  score {h['score']:.2f}", "audio": h["audio"], "lines": [h["text"]]}
                     for j, h in enumerate(q["hits"])])
    rep.heading("Spoken questions answered by SmolLM2 through the speech adapter")
    rep.text("SmolLM2 reads what the words head heard, as text (llm_projector: heard), so it answers a spoken "
             "question as it answers the same words typed; a LoRA trained on the training voices' questions and "
             "sentences learns the answers and to write the transcript for \"What was said?\".", muted=True)
    rep.gallery([{"title": "held-out voice (trained question)", "audio": c["audio"], "lines": [c["question"]]}
                 for c in sp["chat"]])
    for c in sp["chat"]:
        rep.chat(f"[spoken: {c['question']}] Answer the spoken question.", c["answer"])
    before, after = sp["instruct_loss_before"], sp["instruct_loss_after"]
    if before is not None and after is not None:
        rep.text(f"answer loss on the held-out voice: {before:.3f} before alignment, {after:.3f} after "
                 f"({sp['steps'][1]} steps)", muted=True)
    rep.heading("Transcripts of held-out sentences in the held-out voice")
    rep.text(f"word error rate: SmolLM2 through the adapter {sp['wer_llm']:.2f}, Whisper tiny.en's own decoder "
             f"{sp['wer_whisper']:.2f} (same files; espeak speech is hard for Whisper)", muted=True)
    rep.table(["said", "SmolLM2 + speech adapter", "Whisper tiny.en"],
              [[r["reference"], r["llm"], r["whisper"]] for r in sp["transcripts"]])
