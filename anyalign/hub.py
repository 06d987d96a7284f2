"""Where weights and artifacts come from, recorded so that an artifact travels (`portable_source`: an asset's Hub id
or `asset:<name>`, `./path` inside the artifact, else an absolute path) and found again (`local_source`, with the
`ANYALIGN_WEIGHTS="RECORDED=PATH"` override) and artifacts from the Hub (`resolve_artifact`); uploads live in
`adapter/portable.py`."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from .assets import ASSETS, Asset, assets_root

logger = logging.getLogger(__name__)

ASSET_SCHEME = "asset:"
HUB_SCHEME = "hf-hub:"
OVERRIDE_ENV = "ANYALIGN_WEIGHTS"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


# --- weights ---------------------------------------------------------------------------------------------------
def is_hub_id(text: str) -> bool:
    """`org/name` (optionally `hf-hub:org/name`) that is not a local path."""
    text = text[len(HUB_SCHEME):] if text.startswith(HUB_SCHEME) else text
    return bool(_HUB_ID.match(text)) and not Path(text).expanduser().exists()


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~")) or os.path.isabs(text) or text in (".", "..")


def asset_for_path(path: str | os.PathLike) -> Asset | None:
    """The asset whose cache copy `path` is: in this cache, or (for a path that no longer exists, e.g. recorded on
    another machine) any asset cache laid out the same way."""
    p = Path(path).expanduser()
    if p.exists():
        here, root = p.resolve(), assets_root()
        return next((a for a in ASSETS.values() if (root / a.path).exists() and (root / a.path).resolve() == here),
                    None)
    return next((a for a in ASSETS.values() if p.as_posix().endswith("/" + a.path.strip("/"))), None)


def asset_for_id(source: str) -> Asset | None:
    """The asset recorded as `source` (`asset:<name>`, or the Hub id of an asset's weights)."""
    if source.startswith(ASSET_SCHEME):
        return ASSETS.get(source[len(ASSET_SCHEME):])
    source = source[len(HUB_SCHEME):] if source.startswith(HUB_SCHEME) else source
    return next((a for a in ASSETS.values() if source in (a.hub_id, a.same_as)), None)


def portable_source(source: str | os.PathLike | None, base: str | os.PathLike | None = None) -> str | None:
    """How an artifact at `base` records weights `source`: an asset's Hub id (or `asset:<name>`), `./path` when they
    live inside `base`, an absolute path otherwise; Hub ids and library tags unchanged."""
    if source is None:
        return None
    text = str(source)
    if not _looks_like_path(text) and not Path(text).expanduser().exists():
        return text  # a hub id, an asset:, a library tag
    p = Path(text).expanduser()
    if not p.is_absolute():
        if not p.exists():
            return text  # `./x` recorded relative to an artifact and not re-based yet: kept as written
        p = p.resolve()
    asset = asset_for_path(p)
    if asset is not None:
        return asset.portable_id
    if base is not None:
        b = Path(base).expanduser().resolve()
        if p.resolve().is_relative_to(b):
            return "./" + p.resolve().relative_to(b).as_posix()
    return str(p)


def rebase_source(source: str | None, base: str | os.PathLike) -> str | None:
    """A recorded `./path` (relative to the artifact at `base`) as an absolute path; other sources unchanged."""
    if source and source.startswith(("./", "../")):
        return str((Path(base) / source).resolve())
    return source


def hub_offline() -> bool:
    """True when the Hub must not be contacted (`HF_HUB_OFFLINE`, read now, not at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _unreachable(what: str, source: str, where: str) -> FileNotFoundError:
    return FileNotFoundError(f"{what}: weights {source!r} not found ({where}); point at a copy with "
                             f"{OVERRIDE_ENV}='{source}=PATH'")


def local_source(source: str | None, *, what: str = "encoder") -> str | None:
    """What to load for recorded weights `source`: an override, the local asset copy, a path, or the Hub id (when
    it can be reached: online, or in the Hub cache). Unreachable weights raise one line naming the override."""
    if source is None:
        return None
    text = str(source)
    pairs = (item.partition("=") for item in os.environ.get(OVERRIDE_ENV, "").split(";"))
    override = {k.strip(): v.strip() for k, sep, v in pairs if sep and k.strip() and v.strip()}.get(text)
    if override is not None:
        return str(Path(override).expanduser())
    if text.startswith(ASSET_SCHEME):
        asset = asset_for_id(text)
        if asset is None:
            raise FileNotFoundError(f"{what}: unknown asset {text!r}; expected one of "
                                    f"{', '.join(ASSET_SCHEME + n for n in ASSETS)}")
        local = assets_root() / asset.path
        if local.exists():
            return str(local)
        raise _unreachable(what, text, f"no copy at {local}; `python -m anyalign.assets {asset.name}` fetches it")
    if _looks_like_path(text):
        p = Path(text).expanduser()
        if p.exists():
            return str(p)
        asset = asset_for_path(p)  # an asset path recorded on another machine: this machine's copy or its Hub id
        if asset is not None:
            return local_source(asset.portable_id, what=what)
        raise _unreachable(what, text, "no such file or folder")
    asset = asset_for_id(text)
    if asset is not None and (assets_root() / asset.path).exists():
        return str(assets_root() / asset.path)
    if is_hub_id(text) and hub_offline():
        from huggingface_hub import snapshot_download

        try:
            snapshot_download(text.removeprefix(HUB_SCHEME), local_files_only=True)
        except Exception:  # noqa: BLE001 - not cached (LocalEntryNotFoundError), or a malformed cache: not usable
            hint = f"no asset copy at {assets_root() / asset.path}, " if asset is not None else ""
            raise _unreachable(what, text, f"{hint}not in the Hub cache, and HF_HUB_OFFLINE is set") from None
    return text


# --- artifacts ---------------------------------------------------------------------------------------------------
def resolve_artifact(name_or_path: str | os.PathLike, *, marker: str, what: str,
                     revision: str | None = None) -> Path:
    """A local artifact folder, or a Hub repo (`org/name`, `org/name@rev`, `hf-hub:org/name`) downloaded once into
    the Hub cache (`HF_HUB_OFFLINE` honoured: then only the cache is read). `marker`: the file the folder holds."""
    text = str(name_or_path)
    local = Path(text).expanduser()
    if local.exists() or _looks_like_path(text):
        return local
    repo, _, rev = text.removeprefix(HUB_SCHEME).partition("@")
    if not _HUB_ID.match(repo):
        return local  # the caller's missing-folder error names it
    revision = revision or rev or None
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo, revision=revision, local_files_only=hub_offline()))
    except Exception as e:  # noqa: BLE001 - no such repo, offline and not cached, no network: one line
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        offline = " (HF_HUB_OFFLINE is set: only the Hub cache is read)" if hub_offline() else ""
        raise FileNotFoundError(f"{text}: no such {what} folder here, and not available from the Hub{offline}: "
                                f"{reason}") from None
    if not (folder / marker).is_file():
        raise FileNotFoundError(f"{text}: the Hub repo (revision {revision or 'main'}) is not an anyalign {what} "
                                f"(missing {marker})")
    return folder


__all__ = ["ASSET_SCHEME", "OVERRIDE_ENV", "asset_for_id", "asset_for_path", "hub_offline", "is_hub_id",
           "local_source", "portable_source", "rebase_source", "resolve_artifact"]
