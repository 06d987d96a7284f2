"""`anyalign push` (an adapter to the Hugging Face Hub, with a model card) and `anyalign export st` (a space as a
sentence-transformers model)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from . import options as o
from .options import CLIError

export_app = typer.Typer(help="Export a trained space to another library's format.", no_args_is_help=True)


HELP_ORDER = 90  # place of this module's commands in `anyalign --help`


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command("push")(push_cmd)
    export_app.command("st")(export_st_cmd)
    app.add_typer(export_app, name="export")


def push_cmd(
    adapter: str = typer.Argument(..., help="A saved adapter folder (RUN/adapters/MODALITY)."),
    repo_id: str = typer.Argument(..., help="Hub repo to create or update, e.g. user/imu-adapter."),
    private: bool = typer.Option(False, "--private", help="Create the repo private."),
    branch: str = typer.Option(None, "--branch", help="Upload to this branch (created if needed)."),
    token: str = typer.Option(None, "--token", envvar="HF_TOKEN", help="Hub token (default: `hf auth login`'s)."),
    message: str = typer.Option("Upload anyalign adapter", "--message", "-m", help="Commit message."),
    stage_only: Path = typer.Option(None, "--stage-only", help="Only write the files that would be uploaded (the "
                                                               "adapter and its README.md model card) here."),
    as_json: bool = o.JSON,
) -> None:
    """Upload an adapter to the Hugging Face Hub with a model card (its space, training data and measured numbers);
    load it anywhere with `ModalityAdapter.from_pretrained("user/name")` or `--adapter user/name`."""
    from ..adapter import push_adapter_folder, stage_adapter
    from ..hub import is_hub_id

    if not is_hub_id(repo_id) or "@" in repo_id:
        raise CLIError(f"{repo_id!r}: expected a Hub repo id such as user/imu-adapter")
    if not Path(adapter).is_dir():
        raise CLIError(f"{adapter}: no such adapter folder")
    if stage_only is not None:
        out = stage_adapter(adapter, stage_only, repo_id=repo_id)
        result = {"staged": str(out), "files": sorted(p.name for p in out.iterdir())}
    else:
        try:
            url = push_adapter_folder(adapter, repo_id, private=private, token=token, branch=branch,
                                      commit_message=message)
        except Exception as e:  # noqa: BLE001 - network, auth, permissions: one line
            raise CLIError(f"push to {repo_id} failed: {str(e).strip().splitlines()[0] if str(e).strip() else e}")
        result = {"repo": repo_id, "commit": url}
    typer.echo(json.dumps(result) if as_json else "\n".join(f"{k}: {v}" for k, v in result.items()))


def export_st_cmd(
    adapters: list[str] = typer.Argument(..., help="Saved adapter folders or Hub ids (one per modality) of one "
                                                   "space."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the sentence-transformers model."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output folder."),
    as_json: bool = o.JSON,
) -> None:
    """Write a space (its text side + the adapters' modalities) as a sentence-transformers model whose Router sends
    each input to its modality: `SentenceTransformer(DIR, trust_remote_code=True).encode(["a sentence"])`, and for a
    modality it does not infer `model.encode([{"imu": window}])`."""
    try:
        from ..export_st import export_sentence_transformers
    except ImportError as e:
        raise CLIError(f"export st needs sentence-transformers >= 5 (pip install 'anyalign[st]'): {e}") from None
    out = export_sentence_transformers(adapters, output, overwrite=overwrite)
    routes = json.loads((out / "router_config.json").read_text())["structure"]
    result = {"output": str(out), "routes": sorted(routes)}
    typer.echo(json.dumps(result) if as_json else f"wrote {out} (routes: {', '.join(sorted(routes))})")
