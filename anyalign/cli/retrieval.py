"""`anyalign embed`, `anyalign index build|train|add|delete|merge|info`, `anyalign search`, `anyalign serve` and
`anyalign eval retrieval`: the retrieval workflow from raw inputs to a served index."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from . import options as o

index_app = typer.Typer(help="Build, inspect and update FAISS indexes over embeddings.", no_args_is_help=True)


HELP_ORDER = 40  # place of this module's commands in `anyalign --help`


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command("embed")(embed_cmd)
    app.add_typer(index_app, name="index")
    app.command("search")(search_cmd)
    app.command("serve")(serve_cmd)
    eval_app.command("retrieval")(eval_retrieval_cmd)


LOCK_TIMEOUT = typer.Option(None, "--lock-timeout", help="Seconds to wait for another process writing this index "
                            "(default: as long as it takes).")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace an --output that is not an anyalign index.")


def _echo_config(cfg: object, output: Path, **extra: object) -> None:
    """The `--json` result of a command that writes an index: its config (tuning trace left out) and where."""
    from ..config import to_dict

    data = to_dict(cfg)
    data.get("tuning", {}).pop("trace", None)
    o.echo_json({"index": str(output), **extra, **data})


def _echo_skipped(skipped: dict) -> None:
    if skipped and (skipped.get("nonfinite") or skipped.get("zero")):
        ids = skipped.get("ids") or []
        typer.echo(f"  skipped {skipped.get('nonfinite', 0)} rows with NaN/inf values and {skipped.get('zero', 0)} "
                   f"all-zero rows (not indexed{'; first ids ' + ', '.join(map(str, ids[:5])) if ids else ''})")


def embed_cmd(
    inputs: list[Path] = typer.Argument(..., help="Media files/folders, .jsonl/.txt/.csv lists, tar shards or "
                                                  "feature folders."),
    output: Path = typer.Option(..., "--output", "-o", help="Embeddings folder to write."),
    adapter: Path = o.ADAPTER, encoder: str = o.ENCODER, pretrained: str = o.PRETRAINED, set_: list[str] = o.SET,
    autocast: str = o.AUTOCAST,
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    shard_size: int = typer.Option(50_000, "--shard-size", min=1, help="Rows per embeddings-XXXXX.npy file."),
    workers: int = o.WORKERS, device: str = o.DEVICE,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --output that is not an "
                                                              "embeddings folder."),
    as_json: bool = o.JSON,
) -> None:
    """Embed inputs into the shared space and write embedding shards for `anyalign index build`.

    Under `accelerate launch` / `torchrun` each rank embeds its own slice of the inputs into one shared folder."""
    from ..embedder import Embedder
    from ..retrieval.embed import check_embed_output, embed_to_folder
    from .options import CLIError

    if (adapter is None) == (encoder is None):
        raise CLIError("give exactly one of --adapter DIR or --encoder NAME")
    if adapter is not None and (pretrained or set_):
        raise CLIError("--pretrained/--set are for --encoder; an adapter records its encoder")
    check_embed_output(output, inputs, overwrite=overwrite)  # before any model loads
    device = o.resolve_device(device)
    embedder = Embedder.from_adapter(adapter, device=device, autocast=autocast) if adapter else \
        Embedder.from_encoder(o.encoder_spec(encoder, pretrained, set_, autocast), device=device)
    manifest = embed_to_folder(inputs, output, embedder, batch_size=batch_size, shard_size=shard_size,
                               num_workers=workers, overwrite=overwrite)
    if os.environ.get("RANK", "0") != "0":
        return  # under a launcher every rank returns the whole folder's manifest; rank 0 reports it
    if as_json:
        o.echo_json({"output": str(output), "count": manifest["count"], "dim": manifest["dim"],
                     "modality": embedder.modality, "failures": manifest["failures"],
                     "world_size": manifest.get("world_size", 1)})
        return
    typer.echo(f"embedded {manifest['count']} {embedder.modality} inputs (dim {manifest['dim']}) -> {output}"
               + (f"; {len(manifest['failures'])} failed (see embeddings.json)" if manifest["failures"] else "")
               + (f" ({manifest['world_size']} ranks)" if manifest.get("world_size") else ""))


@index_app.command("build")
def build_cmd(
    embeddings: list[Path] = typer.Argument(..., help="Embeddings folders, feature folders or .npy files."),
    output: Path = typer.Option(..., "--output", "-o", help="Index folder to write (replaced atomically)."),
    factory: str = typer.Option("auto", "--factory", help="'auto' or a faiss factory string (IVF1024,Flat ...)."),
    memory: str = typer.Option("4G", "--memory", help="Memory budget for the auto choice (e.g. 512M, 4G). "
                               "Compressed (PQ/SQ) indexes also keep the raw vectors on disk (see --raw-vectors): "
                               "memory-mapped, read through the page cache, not counted in this budget."),
    raw_vectors: str = typer.Option("float16", "--raw-vectors",
                                    help="For compressed indexes: keep the normalised vectors on disk as float16, "
                                         "float32 or none, to re-rank candidates exactly (tuned --refine)."),
    target_recall: float = typer.Option(0.95, "--target-recall",
                                        help="Tune nprobe/efSearch to this recall@k against exact search, in (0, 1]."),
    ef_construction: int = typer.Option(None, "--ef-construction", min=1,
                                        help="HNSW graphs: build-time beam (faiss's default 40); raise it when the "
                                             "build cannot reach --target-recall at any efSearch."),
    k: int = typer.Option(10, "-k", help="k of the tuning recall@k (>= 1)."),
    tune_queries: str = typer.Option("500", "--tune-queries",
                                     help="N corpus vectors held out as tuning queries, or an embeddings path of "
                                          "your own queries."),
    trained: Path = typer.Option(None, "--trained", help="Trained empty index (`index train`) to fill."),
    rank: int = typer.Option(0, "--rank", min=0, help="This part's rank (sharded build)."),
    world_size: int = typer.Option(1, "--world-size", min=1, help="Number of parts (sharded build)."),
    adapter: Path = o.ADAPTER, encoder: str = o.ENCODER, pretrained: str = o.PRETRAINED, set_: list[str] = o.SET,
    autocast: str = o.AUTOCAST, text_encoder: str = o.TEXT_ENCODER, text_pretrained: str = o.TEXT_PRETRAINED,
    text_set: list[str] = o.TEXT_SET, text_autocast: str = o.TEXT_AUTOCAST,
    gpu: bool = typer.Option(None, "--gpu/--no-gpu", help="Default: use GPUs when faiss reports them."),
    batch_size: int = typer.Option(65536, "--batch-size", min=1, help="Vectors added per batch."),
    overwrite: bool = OVERWRITE,
    lock_timeout: float = LOCK_TIMEOUT,
    as_json: bool = o.JSON,
) -> None:
    """Build an index: auto-chosen (or given) type, trained on a sample, filled in batches, tuned, saved.

    The query embedders come from the embeddings' records; the encoder spec options (and --text-...) add or
    replace one. Rows with NaN/inf values or zero norm are skipped and counted (see `index info`)."""
    from ..retrieval.autoindex import format_bytes
    from ..retrieval.index_build import build_index

    queries = int(tune_queries) if tune_queries.strip().lstrip("-").isdigit() else Path(tune_queries)
    embedders = o.query_embedders(adapter, encoder, pretrained, set_, autocast, text_encoder, text_pretrained,
                                  text_set, text_autocast)
    cfg = build_index(embeddings, output, factory=factory, memory=memory, target_recall=target_recall, k=k,
                      tune_queries=queries, trained=trained, rank=rank, world_size=world_size,
                      embedders=embedders, use_gpu=gpu, batch_size=batch_size, overwrite=overwrite,
                      lock_timeout=lock_timeout, raw_vectors=raw_vectors, ef_construction=ef_construction)
    size = (output / "index.faiss").stat().st_size
    if as_json:
        _echo_config(cfg, output, bytes=size)
        return
    typer.echo(f"built {cfg.factory} over {cfg.ntotal} vectors (dim {cfg.dim}) in {cfg.build_seconds:.1f}s "
               f"-> {output} ({format_bytes(size)}, {size / max(cfg.ntotal, 1):.1f} B/vector)")
    typer.echo(f"  why: {cfg.choice}")
    if cfg.tuning:
        from ..retrieval.tuning import describe_tuning

        typer.echo(f"  search params {cfg.search_params or '{}'}: {describe_tuning(cfg.tuning)}")
        if cfg.tuning.get("warning"):
            typer.echo(f"  warning: {cfg.tuning['warning']}")
    _echo_skipped(cfg.skipped)


@index_app.command("train")
def train_cmd(
    embeddings: list[Path] = typer.Argument(..., help="Embeddings to train on (a sample is used)."),
    output: Path = typer.Option(..., "--output", "-o"),
    factory: str = typer.Option("auto", "--factory"),
    memory: str = typer.Option("4G", "--memory"),
    world_size: int = typer.Option(1, "--world-size", min=1, help="Parts planned (auto choice sizes one part)."),
    overwrite: bool = OVERWRITE,
    lock_timeout: float = LOCK_TIMEOUT,
    as_json: bool = o.JSON,
) -> None:
    """Train an empty index once; parts built from it with --trained can be merged on disk."""
    from ..retrieval.index_build import build_index

    cfg = build_index(embeddings, output, factory=factory, memory=memory, train_only=True,
                      rank=0, world_size=world_size, overwrite=overwrite, lock_timeout=lock_timeout)
    if as_json:
        _echo_config(cfg, output)
        return
    typer.echo(f"trained {cfg.factory} (dim {cfg.dim}) -> {output}")


@index_app.command("merge")
def merge_cmd(
    parts: list[Path] = typer.Argument(..., help="Index parts built with --rank/--world-size."),
    output: Path = typer.Option(..., "--output", "-o"),
    ondisk: bool = typer.Option(False, "--ondisk", help="Merge IVF lists into one memory-mapped index.ivfdata."),
    overwrite: bool = OVERWRITE,
    lock_timeout: float = LOCK_TIMEOUT,
    as_json: bool = o.JSON,
) -> None:
    """Combine independently built parts: a searchable set, or (IVF) one on-disk index."""
    from ..retrieval.shards import combine_parts

    cfg = combine_parts(parts, output, ondisk=ondisk, overwrite=overwrite, lock_timeout=lock_timeout)
    if as_json:
        _echo_config(cfg, output, parts_in=[str(p) for p in parts])
        return
    typer.echo(f"{'merged' if ondisk else 'combined'} {len(parts)} parts ({cfg.ntotal} vectors) -> {output}")


@index_app.command("info")
def info_cmd(index: Path = typer.Argument(...), as_json: bool = o.JSON) -> None:
    """Show an index's type, size, tuned parameters and query embedders."""
    from ..config import to_dict
    from ..retrieval.index import read_config

    data = to_dict(read_config(index))
    data.get("tuning", {}).pop("trace", None)
    if as_json:
        o.echo_json(data)
        return
    for key in ("kind", "factory", "dim", "ntotal", "modality", "search_params", "tuning", "skipped", "choice",
                "embedders", "parts", "ondisk"):
        if data.get(key) not in (None, "", [], {}):
            typer.echo(f"{key:>14}: {data[key]}")


@index_app.command("add")
def add_cmd(
    index: Path = typer.Argument(...),
    embeddings: list[Path] = typer.Argument(...),
    lock_timeout: float = LOCK_TIMEOUT,
    as_json: bool = o.JSON,
) -> None:
    """Append embeddings to an index (new ids follow the existing ones; NaN/inf or zero rows are skipped)."""
    from ..retrieval.index import read_config
    from ..retrieval.index_update import add_to_index

    before = read_config(index).skipped
    cfg = add_to_index(index, embeddings, lock_timeout=lock_timeout)
    new = {key: cfg.skipped.get(key, 0) - before.get(key, 0) for key in ("nonfinite", "zero")}
    if as_json:
        o.echo_json({"index": str(index), "ntotal": cfg.ntotal, "skipped": new})
        return
    typer.echo(f"{index}: now {cfg.ntotal} vectors")
    _echo_skipped(new if any(new.values()) else {})


@index_app.command("delete")
def delete_cmd(
    index: Path = typer.Argument(...),
    ids: list[int] = typer.Option(None, "--id", help="Vector id to delete (repeatable)."),
    sources: list[str] = typer.Option(None, "--source", help="Delete items with this metadata source."),
    lock_timeout: float = LOCK_TIMEOUT,
    as_json: bool = o.JSON,
) -> None:
    """Delete vectors by id or by source path."""
    from ..retrieval.index_update import delete_from_index
    from .options import CLIError

    if not ids and not sources:
        raise CLIError("give --id and/or --source")
    cfg, n = delete_from_index(index, ids or [], sources=sources or [], lock_timeout=lock_timeout)
    if as_json:
        o.echo_json({"index": str(index), "deleted": n, "ntotal": cfg.ntotal})
        return
    typer.echo(f"{index}: deleted {n} vectors")


def _retriever(index: Path, embedders: dict[str, dict], device: str | None):  # noqa: ANN202
    from ..retrieval.retriever import Retriever

    return Retriever(index, embedders, device=o.resolve_device(device) if embedders or device else device)


def search_cmd(
    index: Path = typer.Argument(..., help="Index folder."),
    text: str = typer.Option(None, "--text", help="Text query."),
    file: Path = typer.Option(None, "--file", help="Media file query (image/audio/video/IMU ...)."),
    vector: Path = typer.Option(None, "--vector", help=".npy file holding one query vector [dim]."),
    k: int = typer.Option(10, "-k", help="Results to return (>= 1; more than the index holds returns them all)."),
    as_json: bool = o.JSON,
    adapter: Path = o.ADAPTER, encoder: str = o.ENCODER, pretrained: str = o.PRETRAINED, set_: list[str] = o.SET,
    autocast: str = o.AUTOCAST, text_encoder: str = o.TEXT_ENCODER, text_pretrained: str = o.TEXT_PRETRAINED,
    text_set: list[str] = o.TEXT_SET, text_autocast: str = o.TEXT_AUTOCAST,
    nprobe: int = typer.Option(None, "--nprobe", min=1, help="Override the tuned nprobe (IVF)."),
    ef_search: int = typer.Option(None, "--ef-search", min=1, help="Override the tuned efSearch (HNSW)."),
    refine: int = typer.Option(None, "--refine", min=0,
                               help="Override the tuned re-ranking factor of compressed indexes: k x REFINE "
                                    "candidates re-scored exactly against the raw vectors on disk (0: none)."),
    device: str = o.DEVICE,
    modality: str = typer.Option(None, "--modality", "-m", help="Only return items of this modality (e.g. imu)."),
) -> None:
    """Search an index with a text, a media file or a vector (query embedders come from the index itself; the
    encoder spec options, and --text-..., add or replace one)."""
    import numpy as np

    from .options import CLIError

    if sum(x is not None for x in (text, file, vector)) != 1:
        raise CLIError("give exactly one of --text, --file or --vector")
    if k < 1:
        raise CLIError(f"-k must be >= 1, got {k}")
    r = _retriever(index, o.query_embedders(adapter, encoder, pretrained, set_, autocast, text_encoder,
                                            text_pretrained, text_set, text_autocast), device)
    params = {k_: v for k_, v in (("nprobe", nprobe), ("efSearch", ef_search), ("refine", refine)) if v is not None}
    if vector is not None:
        if not vector.is_file():
            raise FileNotFoundError(f"{vector}: no such .npy file")
        query = np.load(vector, allow_pickle=False)
        results = r.search(query, k, modality=modality, **params)
    elif text is not None:
        results = r.search_text(text, k, modality=modality, **params)
    else:
        results = r.search_file(file, k, modality=modality, **params)
    if as_json:
        o.echo_json([x.to_dict() for x in results])
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
    adapter: Path = o.ADAPTER, encoder: str = o.ENCODER, pretrained: str = o.PRETRAINED, set_: list[str] = o.SET,
    autocast: str = o.AUTOCAST, text_encoder: str = o.TEXT_ENCODER, text_pretrained: str = o.TEXT_PRETRAINED,
    text_set: list[str] = o.TEXT_SET, text_autocast: str = o.TEXT_AUTOCAST,
    device: str = o.DEVICE,
    token: str = typer.Option(None, "--token", envvar="ANYALIGN_SERVE_TOKEN", show_envvar=True,
                              help="Require 'Authorization: Bearer TOKEN' (the page: open it as /#token=TOKEN)."),
    allow_host: list[str] = typer.Option(None, "--allow-host",
                                         help="Host header to accept besides loopback and --host (repeatable)."),
    media_root: list[Path] = typer.Option(None, "--media-root", help="Serve media only from under these folders "
                                          "(repeatable; default: the folders the indexed media lie in)."),
) -> None:
    """Serve a web page, an HTTP search API and OpenAI-compatible embeddings (/v1/embeddings; API at /docs)."""
    from ..retrieval.server import check_serve_options, serve

    check_serve_options(host, port, max_upload_mb, token)  # before loading anything
    embedders = o.query_embedders(adapter, encoder, pretrained, set_, autocast, text_encoder, text_pretrained,
                                  text_set, text_autocast)
    serve(_retriever(index, embedders, device), host=host, port=port, max_upload_mb=max_upload_mb, token=token,
          allow_hosts=allow_host or (), media_roots=media_root or None)


def eval_retrieval_cmd(
    queries: Path = typer.Argument(..., help="Query embeddings (e.g. captions)."),
    gallery: Path = typer.Argument(..., help="Gallery embeddings (exact search) or an index folder."),
    match: str = typer.Option("row", "--match", help="'row' (query i <-> item i) or a metadata field."),
    ks: str = typer.Option("1,5,10", "-k", help="Comma-separated K values."),
    hubness: str = typer.Option("none", "--hubness", help="Hub correction: none, is (inverted softmax) or qb-norm "
                                "(anyalign.hubness); needs --bank."),
    bank: Path = typer.Option(None, "--bank", help="Reference query embeddings for --hubness (e.g. training "
                              "queries; never the evaluated ones)."),
    beta: float = typer.Option(20.0, "--hubness-beta", help="Inverse temperature of the hubness correction."),
    as_json: bool = o.JSON,
) -> None:
    """Recall@K and mAP of a paired test set."""
    from ..hubness import Hubness
    from ..retrieval.evaluate import evaluate_retrieval

    try:
        kv = [int(x) for x in ks.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"-k {ks!r}: expected comma-separated integers such as 1,5,10") from None
    out = evaluate_retrieval(queries, gallery, match=match, ks=kv, hubness=Hubness(hubness, beta),
                             bank=bank)
    if as_json:
        o.echo_json(out)
        return
    for key, value in out.items():
        if key == "median_rank" and value is None:
            value = f"> {max(kv)} (beyond the ranks searched)"
        typer.echo(f"{key:>11}: {value:.4f}" if isinstance(value, float) else f"{key:>11}: {value}")
