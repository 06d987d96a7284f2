"""`anyalign embed`, `anyalign index build|train|add|delete|merge|info`, `anyalign search`, `anyalign serve` and
`anyalign eval retrieval`: the retrieval workflow from raw inputs to a served index."""

from __future__ import annotations

import json
from pathlib import Path

import typer

index_app = typer.Typer(help="Build, inspect and update FAISS indexes over embeddings.", no_args_is_help=True)


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command("embed")(embed_cmd)
    app.add_typer(index_app, name="index")
    app.command("search")(search_cmd)
    app.command("serve")(serve_cmd)
    eval_app.command("retrieval")(eval_retrieval_cmd)


def _embedder_specs(options: list[str] | None) -> dict[str, dict]:
    from ..retrieval.embedder import Embedder, parse_embedder_option

    specs: dict[str, dict] = {}
    for text in options or []:
        modality, spec = parse_embedder_option(text)
        if modality is None:
            modality = Embedder.from_spec(spec).modality
        specs[modality] = spec
    return specs


EMBEDDER_HELP = "Query embedder MODALITY=ADAPTER_DIR or MODALITY=encoder:NAME[@PRETRAINED] (repeatable)."


def embed_cmd(
    inputs: list[Path] = typer.Argument(..., help="Media files/folders, .jsonl/.txt lists, or feature folders."),
    output: Path = typer.Option(..., "--output", "-o", help="Embeddings folder to write."),
    adapter: Path = typer.Option(None, "--adapter", help="ModalityAdapter folder (save_pretrained output)."),
    encoder: str = typer.Option(None, "--encoder", help="Bare encoder name (identity on its pooled output)."),
    pretrained: str = typer.Option(None, "--pretrained", help="Weights for --encoder (folder, file or hub id)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    shard_size: int = typer.Option(50_000, "--shard-size", min=1, help="Rows per embeddings-XXXXX.npy file."),
    workers: int = typer.Option(0, "--workers", min=0, help="DataLoader workers decoding inputs."),
    device: str = typer.Option(None, "--device", help="torch device (default: CPU)."),
) -> None:
    """Embed inputs into the shared space and write embedding shards for `anyalign index build`."""
    from ..retrieval.embed import embed_to_folder
    from ..retrieval.embedder import Embedder
    from .main import CLIError

    if (adapter is None) == (encoder is None):
        raise CLIError("give exactly one of --adapter DIR or --encoder NAME")
    spec = {"adapter": str(adapter.resolve())} if adapter else {"encoder": encoder, "pretrained": pretrained}
    embedder = Embedder.from_spec(spec, device=device)
    manifest = embed_to_folder(inputs, output, embedder, batch_size=batch_size, shard_size=shard_size,
                               num_workers=workers)
    typer.echo(f"embedded {manifest['count']} {embedder.modality} inputs (dim {manifest['dim']}) -> {output}"
               + (f"; {len(manifest['failures'])} failed (see embeddings.json)" if manifest["failures"] else ""))


@index_app.command("build")
def build_cmd(
    embeddings: list[Path] = typer.Argument(..., help="Embeddings folders, feature folders or .npy files."),
    output: Path = typer.Option(..., "--output", "-o", help="Index folder to write (replaced atomically)."),
    factory: str = typer.Option("auto", "--factory", help="'auto' or a faiss factory string (IVF1024,Flat ...)."),
    memory: str = typer.Option("4G", "--memory", help="Memory budget for the auto choice (e.g. 512M, 4G)."),
    target_recall: float = typer.Option(0.95, "--target-recall", min=0.0, max=1.0,
                                        help="Tune nprobe/efSearch to this recall@k against exact search."),
    k: int = typer.Option(10, "-k", min=1, help="k of the tuning recall@k."),
    trained: Path = typer.Option(None, "--trained", help="Trained empty index (`index train`) to fill."),
    rank: int = typer.Option(0, "--rank", min=0, help="This part's rank (sharded build)."),
    world_size: int = typer.Option(1, "--world-size", min=1, help="Number of parts (sharded build)."),
    embedder: list[str] = typer.Option(None, "--embedder", help=EMBEDDER_HELP),
    gpu: bool = typer.Option(None, "--gpu/--no-gpu", help="Default: use GPUs when faiss reports them."),
    batch_size: int = typer.Option(65536, "--batch-size", min=1, help="Vectors added per batch."),
) -> None:
    """Build an index: auto-chosen (or given) type, trained on a sample, filled in batches, tuned, saved."""
    from ..retrieval.autoindex import format_bytes
    from ..retrieval.index import build_index

    cfg = build_index(embeddings, output, factory=factory, memory=memory, target_recall=target_recall, k=k,
                      trained=trained, rank=rank, world_size=world_size, embedders=_embedder_specs(embedder),
                      use_gpu=gpu, batch_size=batch_size)
    size = (output / "index.faiss").stat().st_size
    typer.echo(f"built {cfg.factory} over {cfg.ntotal} vectors (dim {cfg.dim}) in {cfg.build_seconds:.1f}s "
               f"-> {output} ({format_bytes(size)}, {size / max(cfg.ntotal, 1):.1f} B/vector)")
    typer.echo(f"  why: {cfg.choice}")
    if cfg.tuning:
        typer.echo(f"  search params {cfg.search_params or '{}'}: recall@{cfg.tuning['k']} = {cfg.tuning['recall']}"
                   f" vs exact ({cfg.tuning['queries']} queries)")


@index_app.command("train")
def train_cmd(
    embeddings: list[Path] = typer.Argument(..., help="Embeddings to train on (a sample is used)."),
    output: Path = typer.Option(..., "--output", "-o"),
    factory: str = typer.Option("auto", "--factory"),
    memory: str = typer.Option("4G", "--memory"),
    world_size: int = typer.Option(1, "--world-size", min=1, help="Parts planned (auto choice sizes one part)."),
) -> None:
    """Train an empty index once; parts built from it with --trained can be merged on disk."""
    from ..retrieval.index import build_index

    cfg = build_index(embeddings, output, factory=factory, memory=memory, train_only=True,
                      rank=0, world_size=world_size)
    typer.echo(f"trained {cfg.factory} (dim {cfg.dim}) -> {output}")


@index_app.command("merge")
def merge_cmd(
    parts: list[Path] = typer.Argument(..., help="Index parts built with --rank/--world-size."),
    output: Path = typer.Option(..., "--output", "-o"),
    ondisk: bool = typer.Option(False, "--ondisk", help="Merge IVF lists into one memory-mapped index.ivfdata."),
) -> None:
    """Combine independently built parts: a searchable set, or (IVF) one on-disk index."""
    from ..retrieval.shards import combine_parts

    cfg = combine_parts(parts, output, ondisk=ondisk)
    typer.echo(f"{'merged' if ondisk else 'combined'} {len(parts)} parts ({cfg.ntotal} vectors) -> {output}")


@index_app.command("info")
def info_cmd(index: Path = typer.Argument(...), as_json: bool = typer.Option(False, "--json")) -> None:
    """Show an index's type, size, tuned parameters and query embedders."""
    from ..config import to_dict
    from ..retrieval.index import read_config

    data = to_dict(read_config(index))
    data.get("tuning", {}).pop("trace", None)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    for key in ("kind", "factory", "dim", "ntotal", "modality", "search_params", "tuning", "choice", "embedders",
                "parts", "ondisk"):
        if data.get(key) not in (None, "", [], {}):
            typer.echo(f"{key:>14}: {data[key]}")


@index_app.command("add")
def add_cmd(index: Path = typer.Argument(...), embeddings: list[Path] = typer.Argument(...)) -> None:
    """Append embeddings to an index (new ids follow the existing ones)."""
    from ..retrieval.index import add_to_index

    cfg = add_to_index(index, embeddings)
    typer.echo(f"{index}: now {cfg.ntotal} vectors")


@index_app.command("delete")
def delete_cmd(
    index: Path = typer.Argument(...),
    ids: list[int] = typer.Option(None, "--id", help="Vector id to delete (repeatable)."),
    sources: list[str] = typer.Option(None, "--source", help="Delete items with this metadata source."),
) -> None:
    """Delete vectors by id or by source path."""
    from ..retrieval.index import delete_from_index
    from .main import CLIError

    if not ids and not sources:
        raise CLIError("give --id and/or --source")
    _, n = delete_from_index(index, ids or [], sources=sources or [])
    typer.echo(f"{index}: deleted {n} vectors")


def _retriever(index: Path, embedder: list[str] | None, device: str | None):  # noqa: ANN202
    from ..retrieval.retriever import Retriever

    return Retriever(index, _embedder_specs(embedder), device=device)


def search_cmd(
    index: Path = typer.Argument(..., help="Index folder."),
    text: str = typer.Option(None, "--text", help="Text query."),
    file: Path = typer.Option(None, "--file", help="Media file query (image/audio/video/IMU ...)."),
    vector: Path = typer.Option(None, "--vector", help=".npy file holding one query vector [dim]."),
    k: int = typer.Option(10, "-k", min=1),
    as_json: bool = typer.Option(False, "--json"),
    embedder: list[str] = typer.Option(None, "--embedder", help=EMBEDDER_HELP),
    nprobe: int = typer.Option(None, "--nprobe", min=1, help="Override the tuned nprobe (IVF)."),
    ef_search: int = typer.Option(None, "--ef-search", min=1, help="Override the tuned efSearch (HNSW)."),
    device: str = typer.Option(None, "--device"),
) -> None:
    """Search an index with a text, a media file or a vector."""
    import numpy as np

    from .main import CLIError

    if sum(x is not None for x in (text, file, vector)) != 1:
        raise CLIError("give exactly one of --text, --file or --vector")
    r = _retriever(index, embedder, device)
    params = {k_: v for k_, v in (("nprobe", nprobe), ("efSearch", ef_search)) if v is not None}
    if vector is not None:
        if not vector.is_file():
            raise FileNotFoundError(f"{vector}: no such .npy file")
        query = np.load(vector, allow_pickle=False)
        results = r.search(query, k, **params)
    elif text is not None:
        results = r.search_text(text, k, **params)
    else:
        results = r.search_file(file, k, **params)
    if as_json:
        typer.echo(json.dumps([x.to_dict() for x in results], indent=2, default=str))
        return
    for rank, x in enumerate(results, 1):
        m = x.metadata
        label = m.get("caption") or m.get("source") or ""
        typer.echo(f"{rank:>3}. {x.score:.4f}  #{x.id}  {m.get('modality') or ''}  {label}")


def serve_cmd(
    index: Path = typer.Argument(..., help="Index folder."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address; anything but loopback needs --token."),
    port: int = typer.Option(8000, "--port", help="TCP port (1..65535)."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", help="Request size limit (MB, > 0)."),
    embedder: list[str] = typer.Option(None, "--embedder", help=EMBEDDER_HELP),
    device: str = typer.Option(None, "--device"),
    token: str = typer.Option(None, "--token", envvar="ANYALIGN_SERVE_TOKEN", show_envvar=True,
                              help="Require 'Authorization: Bearer TOKEN' (the page: open it as /#token=TOKEN)."),
    allow_host: list[str] = typer.Option(None, "--allow-host",
                                         help="Host header to accept besides loopback and --host (repeatable)."),
    media_root: list[Path] = typer.Option(None, "--media-root", help="Serve media only from under these folders "
                                          "(repeatable; default: the folders the indexed media lie in)."),
) -> None:
    """Serve an HTTP search API and a web page with thumbnails and players."""
    from ..retrieval.server import check_serve_options, serve

    check_serve_options(host, port, max_upload_mb, token)  # before loading anything
    serve(_retriever(index, embedder, device), host=host, port=port, max_upload_mb=max_upload_mb, token=token,
          allow_hosts=allow_host or (), media_roots=media_root or None)


def eval_retrieval_cmd(
    queries: Path = typer.Argument(..., help="Query embeddings (e.g. captions)."),
    gallery: Path = typer.Argument(..., help="Gallery embeddings (exact search) or an index folder."),
    match: str = typer.Option("row", "--match", help="'row' (query i <-> item i) or a metadata field."),
    ks: str = typer.Option("1,5,10", "-k", help="Comma-separated K values."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Recall@K and mAP of a paired test set."""
    from ..retrieval.evaluate import evaluate_retrieval

    try:
        kv = [int(x) for x in ks.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"-k {ks!r}: expected comma-separated integers such as 1,5,10") from None
    out = evaluate_retrieval(queries, gallery, match=match, ks=kv)
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    for key, value in out.items():
        typer.echo(f"{key:>10}: {value:.4f}" if isinstance(value, float) else f"{key:>10}: {value}")
