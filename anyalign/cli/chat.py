"""`anyalign chat`: ask a causal LM about media files through trained adapters (a prompt without placeholders gets
one `<modality>` line per `--input`); `anyalign transcribe`: Whisper's own decoder (the ASR baseline), with the WER
where the inputs carry reference text; `anyalign eval transcription`: the LLM's WER through a speech adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from . import options as o
from .options import CLIError

HELP_ORDER = 60  # place of this module's commands in `anyalign --help`


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command("chat")(chat_cmd)
    app.command("transcribe")(transcribe_cmd)
    eval_app.command("transcription")(eval_transcription_cmd)


def _pairs(values: list[str] | None, option: str) -> list[tuple[str, str]]:
    out = []
    for value in values or []:
        modality, sep, target = value.partition("=")
        if not sep or not modality or not target:
            raise CLIError(f"{option} {value!r}: expected MODALITY=PATH (e.g. imu=runs/imu-adapter)")
        out.append((modality.strip(), target.strip()))
    return out



def load_model(llm: str | None, gguf_file: str | None, adapter: list[str] | None, bundle: Path | None,
               device: str | None, *, needs: list[tuple[str, str]] = ()) -> Any:
    """The MultimodalLM named by `--llm/--gguf-file/--adapter` or `--bundle` (shared by chat and eval
    transcription); `needs` lists (option text, modality) pairs that must have an adapter."""
    from ..llm import MultimodalLM

    adapters = _pairs(adapter, "--adapter")
    if bundle is not None and (llm or adapters):
        raise CLIError("--bundle already names the LLM and adapters; do not combine it with --llm/--adapter")
    if bundle is None and not llm:
        raise CLIError("pass --llm ID_OR_DIR (with optional --adapter MOD=DIR) or --bundle DIR")
    names = [m for m, _ in adapters]
    if len(set(names)) != len(names):
        raise CLIError(f"--adapter: one adapter per modality, got {names}")
    for what, modality in needs:
        if bundle is None and modality not in names:
            raise CLIError(f"{what}: no --adapter {modality}=DIR given")
    device = o.resolve_device(device)
    if bundle is not None:
        return MultimodalLM.from_pretrained(bundle, device=device)
    return MultimodalLM.from_pretrained(llm, dict(adapters), gguf_file=gguf_file, device=device)

def build_prompt(prompt: str, modalities: list[str], known: list[str]) -> str:
    """Prepend one placeholder per input when the prompt has none (see the module docstring)."""
    from ..llm.prompt import placeholder_pattern

    if not modalities or placeholder_pattern(known).search(prompt):
        return prompt
    return "".join(f"<{m}>\n" for m in modalities) + prompt


def chat_cmd(
    prompt: str = typer.Argument(..., help="The question; may contain <modality> placeholders."),
    llm: str = typer.Option(None, "--llm", help="Causal LM: hub id or folder (GGUF folders need --gguf-file)."),
    gguf_file: str = typer.Option(None, "--gguf-file", help="GGUF file name inside the --llm folder."),
    adapter: list[str] = typer.Option(None, "--adapter", help="MODALITY=DIR of a trained adapter (repeatable)."),
    bundle: Path = typer.Option(None, "--bundle", help="A saved MultimodalLM folder instead of --llm/--adapter."),
    inputs: list[str] = typer.Option(None, "--input", help="MODALITY=FILE media for the prompt (repeatable)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy decoding."),
    stream: bool = typer.Option(True, "--stream/--no-stream", help="Print tokens as they are generated."),
    chat_template: bool = typer.Option(True, "--chat-template/--no-chat-template",
                                       help="Wrap the prompt in the tokenizer's chat template when it has one."),
    device: str = o.DEVICE,
    as_json: bool = o.JSON,
) -> None:
    """Generate an answer about media files with a causal LM and modality adapters."""
    media = _pairs(inputs, "--input")
    names = [m for m, _ in _pairs(adapter, "--adapter")]
    for modality, file in media:  # cheap checks before the model loads
        if bundle is None and llm and modality not in names:
            raise CLIError(f"--input {modality}={file}: no --adapter {modality}=DIR given")
        if not Path(file).exists():
            raise FileNotFoundError(f"--input {modality}={file}: no such file")
    model = load_model(llm, gguf_file, adapter, bundle, device)
    grouped: dict[str, list[str]] = {}
    for modality, file in media:
        grouped.setdefault(modality, []).append(file)
    text = build_prompt(prompt, [m for m, _ in media], list(model.adapters))
    gen = {"max_new_tokens": max_new_tokens, "do_sample": temperature > 0}
    if temperature > 0:
        gen["temperature"] = temperature
    template = chat_template and model.use_chat_template
    if as_json:  # one document: no streaming
        answer = model.generate([text], inputs=grouped, chat_template=template, **gen)[0]
        o.echo_json({"prompt": text, "inputs": grouped, "answer": answer})
    elif stream:
        for piece in model.stream(text, inputs=grouped, chat_template=template, **gen):
            typer.echo(piece, nl=False)
        typer.echo("")
    else:
        typer.echo(model.generate([text], inputs=grouped, chat_template=template, **gen)[0])


def eval_transcription_cmd(
    dataset: Path = typer.Argument(..., help="Speech records with an audio input and a `text` transcript "
                                             "(e.g. the test.jsonl of `anyalign data speech`)."),
    llm: str = typer.Option(None, "--llm", help="Causal LM: hub id or folder (GGUF folders need --gguf-file)."),
    gguf_file: str = typer.Option(None, "--gguf-file", help="GGUF file name inside the --llm folder."),
    adapter: list[str] = typer.Option(None, "--adapter", help="MODALITY=DIR of the speech adapter."),
    bundle: Path = typer.Option(None, "--bundle", help="A saved MultimodalLM folder instead of --llm/--adapter."),
    whisper: Path = typer.Option(None, "--whisper", help="Whisper checkpoint folder whose own decoder "
                                                         "transcribes the same files, for comparison."),
    prompt: str = typer.Option("<audio>\nWhat was said?", "--prompt", help="The prompt the adapter was trained on."),
    modality: str = typer.Option("audio", "--modality"),
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first N records."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", min=1),
    output: Path = typer.Option(None, "--output", "-o", help="Write the JSON report (with every transcript) here."),
    device: str = o.DEVICE,
    as_json: bool = o.JSON,
) -> None:
    """Word error rate of the LLM's transcripts through a speech adapter (and of Whisper's own decoder on the
    same files), overall and per voice; prints one line per system."""
    from ..datasets.records import read_records
    from ..io import write_json
    from ..llm.transcribe import evaluate_transcription

    prompt = prompt.replace("\\n", "\n")
    records = read_records(dataset, modalities=[modality])[:limit]
    model = load_model(llm, gguf_file, adapter, bundle, device, needs=[(f"--modality {modality}", modality)])
    report = evaluate_transcription(records, model, prompt=prompt, modality=modality, whisper=whisper,
                                    batch_size=batch_size, max_new_tokens=max_new_tokens, quiet=o.is_quiet())
    report["dataset"] = str(dataset)
    lines = [f"llm      WER {report['llm']['wer']:.3f}  exact {report['llm']['exact_match']:.3f}  (n={report['n']})"]
    if "whisper" in report:
        ratio = report["wer_ratio_llm_to_whisper"]
        lines.append(f"whisper  WER {report['whisper']['wer']:.3f}  exact {report['whisper']['exact_match']:.3f}"
                     + (f"  llm/whisper {ratio:.2f}x" if ratio is not None else ""))
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_json(output, report)
    if as_json:
        o.echo_json(report)
    else:
        typer.echo("\n".join(lines))


def transcribe_cmd(
    inputs: list[str] = typer.Argument(..., help="Audio files, folders, jsonl/csv/txt lists or globs."),
    whisper: Path = typer.Option(None, "--whisper", help="Whisper checkpoint folder (default: the whisper-tiny.en "
                                                         "asset, `python -m anyalign.assets whisper-tiny.en`)."),
    reference: str = typer.Option("text", "--reference", help="Record field with the spoken text, for WER."),
    no_reference: bool = typer.Option(False, "--no-reference", help="Do not score, even where rows have text."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Clips (30 s windows) decoded together."),
    max_new_tokens: int = typer.Option(160, "--max-new-tokens", min=1, help="Tokens per 30 s window at most."),
    output: Path = typer.Option(None, "--output", "-o", help="Also write the rows as jsonl here."),
    device: str = o.DEVICE,
    as_json: bool = o.JSON,
) -> None:
    """Transcribe speech with Whisper's own decoder (greedy, batched); WER when the inputs have reference text."""
    from ..io import write_jsonl
    from ..llm.transcribe import transcribe

    report = transcribe(inputs, whisper, reference=None if no_reference else reference, batch_size=batch_size,
                        max_new_tokens=max_new_tokens, device=o.resolve_device(device), quiet=o.is_quiet())
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(output, [{"key": r["key"], "audio": r["audio"], "text": r["transcript"],
                              "reference": r["reference"]} for r in report["rows"]])
    if as_json:
        o.echo_json(report)
        return
    for r in report["rows"]:
        typer.echo(f"{r['key']}\t{r['transcript']}")
    if report["wer"] is not None:
        typer.echo(f"WER {report['wer']:.4f} over {report['n_scored']} of {report['n']} clips "
                   f"({report['reference_words']} reference words; Whisper's English normaliser)")
