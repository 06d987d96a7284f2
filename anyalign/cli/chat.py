"""`anyalign chat`: ask a causal LM about media files through trained adapters.

    anyalign chat --llm HuggingFaceTB/SmolLM2-135M-Instruct --adapter imu=runs/imu --input imu=walk.npy \\
        "What is the person doing?"

A prompt without placeholders gets one `<modality>` placeholder per `--input`, in the order given, on its own
line before the text; a prompt with placeholders must match the inputs one to one.
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command("chat")(chat_cmd)


def _pairs(values: list[str] | None, option: str) -> list[tuple[str, str]]:
    from .main import CLIError

    out = []
    for value in values or []:
        modality, sep, target = value.partition("=")
        if not sep or not modality or not target:
            raise CLIError(f"{option} {value!r}: expected MODALITY=PATH (e.g. imu=runs/imu-adapter)")
        out.append((modality.strip(), target.strip()))
    return out


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
    device: str = typer.Option(None, help="Device, e.g. cuda or cpu (default: cuda when available)."),
) -> None:
    """Generate an answer about media files with a causal LM and modality adapters."""
    import torch

    from ..llm import MultimodalLM
    from .main import CLIError

    adapters = _pairs(adapter, "--adapter")
    media = _pairs(inputs, "--input")
    if bundle is not None and (llm or adapters):
        raise CLIError("--bundle already names the LLM and adapters; do not combine it with --llm/--adapter")
    if bundle is None and not llm:
        raise CLIError("pass --llm ID_OR_DIR (with optional --adapter MOD=DIR) or --bundle DIR")
    names = [m for m, _ in adapters]
    if len(set(names)) != len(names):
        raise CLIError(f"--adapter: one adapter per modality, got {names}")
    for modality, file in media:
        if bundle is None and modality not in names:
            raise CLIError(f"--input {modality}={file}: no --adapter {modality}=DIR given")
        if not Path(file).exists():
            raise FileNotFoundError(f"--input {modality}={file}: no such file")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if bundle is not None:
        model = MultimodalLM.from_pretrained(bundle, device=device)
    else:
        model = MultimodalLM.from_pretrained(llm, dict(adapters), gguf_file=gguf_file, device=device)
    grouped: dict[str, list[str]] = {}
    for modality, file in media:
        grouped.setdefault(modality, []).append(file)
    text = build_prompt(prompt, [m for m, _ in media], list(model.adapters))
    gen = {"max_new_tokens": max_new_tokens, "do_sample": temperature > 0}
    if temperature > 0:
        gen["temperature"] = temperature
    template = chat_template and model.use_chat_template
    if stream:
        for piece in model.stream(text, inputs=grouped, chat_template=template, **gen):
            typer.echo(piece, nl=False)
        typer.echo("")
    else:
        typer.echo(model.generate([text], inputs=grouped, chat_template=template, **gen)[0])
