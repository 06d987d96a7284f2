"""Portable artifacts: adapters record their weights by Hub id (asset copies), `./path` (weights inside the folder)
or an absolute path (a user's own), and the plugin that provides their encoder; a copied folder embeds identically,
also on a machine where only the Hub cache holds the weights; unreachable weights fail in one line naming the
override; an index built from a relative folder serves every item's media."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from _retrieval_helpers import image_corpus, tiny_bert, tiny_image_adapter

from anyalign.adapter import CONFIG_NAME, ModalityAdapter, build_adapter, stage_adapter
from anyalign.embedder import Embedder
from anyalign.encoders.spec import EncoderSpec
from anyalign.hub import local_source, portable_source
from anyalign.plugins import PluginError
from anyalign.registry import UnknownNameError

ROOT = Path(__file__).resolve().parents[1]
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = ["a person walking", "someone playing badminton on a court", "standing still"]
SHA = "0123456789abcdef0123456789abcdef01234567"


def _copy_tree(src: Path, dest: Path) -> Path:
    """A real copy of a folder (hard links where the file system allows: same bytes, no 90 MB write)."""
    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    return Path(shutil.copytree(src, dest, copy_function=link_or_copy))


def populate_hub_cache(cache: Path, repo_id: str, files: Path, revision: str = SHA) -> Path:
    """Lay `files` out as huggingface_hub's own cache does: models--org--name/snapshots/<rev>/..., refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    _copy_tree(files, repo / "snapshots" / revision)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return repo / "snapshots" / revision


def _text_adapter(encoder: EncoderSpec) -> ModalityAdapter:
    return build_adapter("text", encoder, feature="pooled", embed_dim=32,
                         embed_projector={"name": "mlp", "hidden_dim": 64}, space={"text": encoder})


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> tuple[Path, np.ndarray]:
    """A text adapter on MiniLM (given by its asset path), saved, with its reference vectors."""
    folder = tmp_path_factory.mktemp("portable") / "adapter"
    adapter = _text_adapter(EncoderSpec("text", str(minilm_dir)))
    adapter.save_pretrained(folder)
    return folder, Embedder(adapter.encoder, adapter).embed(TEXTS)


def test_asset_weights_recorded_by_hub_id(saved: tuple[Path, np.ndarray], minilm_dir: Path) -> None:
    cfg = json.loads((saved[0] / CONFIG_NAME).read_text())
    assert cfg["encoder"]["pretrained"] == MINILM_ID and cfg["space"]["text"]["pretrained"] == MINILM_ID
    assert cfg["plugins"] == []
    assert local_source(MINILM_ID) == str(minilm_dir)  # offline: the local asset copy
    assert portable_source("/elsewhere/.cache/anyalign-assets/text/all-MiniLM-L6-v2") == MINILM_ID  # another machine


def test_copied_adapter_embeds_identically(saved: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    copy = _copy_tree(saved[0], tmp_path / "moved" / "somewhere" / "adapter")
    got = Embedder.from_adapter(copy).embed(TEXTS)
    np.testing.assert_allclose(got, saved[1], atol=1e-6)


def test_weights_inside_the_folder_travel_with_it(minilm_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "a" / "adapter"
    weights = _copy_tree(minilm_dir, folder / "encoder")
    adapter = _text_adapter(EncoderSpec("text", str(weights)))
    adapter.save_pretrained(folder)
    ref = Embedder(adapter.encoder, adapter).embed(TEXTS)
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    assert cfg["encoder"]["pretrained"] == "./encoder"  # relative to the adapter, not this machine's path
    moved = shutil.move(str(folder), str(tmp_path / "b" / "moved"))
    loaded = ModalityAdapter.from_pretrained(moved)
    assert loaded.config.encoder.pretrained == str(Path(moved, "encoder").resolve())
    np.testing.assert_allclose(Embedder(loaded.encoder, loaded).embed(TEXTS), ref, atol=1e-6)
    staged = stage_adapter(moved, tmp_path / "upload")  # a Hub upload carries the weights that live inside
    assert (staged / "encoder" / "model.safetensors").is_file()
    again = ModalityAdapter.from_pretrained(staged)
    np.testing.assert_allclose(Embedder(again.encoder, again).embed(TEXTS), ref, atol=1e-6)


_OFFLINE_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from anyalign.embedder import Embedder
    out = {}
    try:
        out["vectors"] = Embedder.from_adapter(sys.argv[1]).embed(json.loads(sys.argv[2])).tolist()
    except FileNotFoundError as e:
        out["error"] = str(e)
    print(json.dumps(out))
""")


def _offline(adapter: Path, tmp_path: Path, **env: str) -> dict:
    full = {**os.environ, "HF_HUB_OFFLINE": "1", "ANYALIGN_ASSETS": str(tmp_path / "no-assets"),
            "HF_HUB_CACHE": str(tmp_path / "empty-hub"), "OMP_NUM_THREADS": "1", **env}
    proc = subprocess.run([sys.executable, "-c", _OFFLINE_SCRIPT, str(adapter), json.dumps(TEXTS)], env=full,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_recorded_path_gone_weights_from_hub_cache(saved: tuple[Path, np.ndarray], minilm_dir: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An adapter saved on another machine (its recorded MiniLM path does not exist here, no asset cache) embeds
    identically from a Hub cache holding the weights by their Hub id; without them: one line naming the override,
    and the override works."""
    folder = _copy_tree(saved[0], tmp_path / "adapter")
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    gone = "/home/someone-else/.cache/anyalign-assets/text/all-MiniLM-L6-v2"
    cfg["encoder"]["pretrained"] = cfg["space"]["text"]["pretrained"] = gone
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))
    assert not Path(gone).exists()
    hub = tmp_path / "hub"
    populate_hub_cache(hub, MINILM_ID, minilm_dir)

    got = _offline(folder, tmp_path, HF_HUB_CACHE=str(hub))  # a fresh process: the Hub cache is read at import
    np.testing.assert_allclose(np.array(got["vectors"]), saved[1], atol=1e-5)

    import huggingface_hub.constants

    monkeypatch.setenv("ANYALIGN_ASSETS", str(tmp_path / "no-assets"))  # nowhere to be found
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.delenv("ANYALIGN_WEIGHTS", raising=False)
    with pytest.raises(FileNotFoundError) as err:
        Embedder.from_adapter(folder)
    msg = str(err.value)
    assert "\n" not in msg and MINILM_ID in msg and "ANYALIGN_WEIGHTS" in msg and "HF_HUB_OFFLINE" in msg, msg
    monkeypatch.setenv("ANYALIGN_WEIGHTS", f"{MINILM_ID}={minilm_dir}")  # the override the message names
    np.testing.assert_allclose(Embedder.from_adapter(folder).embed(TEXTS), saved[1], atol=1e-5)


def test_adapter_records_and_imports_its_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugin_dir = ROOT / "examples" / "frames-plugin"
    monkeypatch.syspath_prepend(str(plugin_dir))
    from anyalign.encoders import registry

    monkeypatch.delitem(sys.modules, "anyalign_frames", raising=False)  # as in a fresh process (other tests load it)
    for table in (registry.ENCODERS._items, registry.ENCODER_INFO, registry.ENCODER_OPTIONS):
        monkeypatch.delitem(table, "frames", raising=False)
    import anyalign_frames  # noqa: F401 - registers the "frames" encoder

    adapter = build_adapter("sensor", EncoderSpec("frames", options={"dim": 24, "frame": 5}), embed_dim=16,
                            embed_projector={"name": "mlp", "hidden_dim": 32})
    adapter.save_pretrained(tmp_path / "sensor")
    cfg = json.loads((tmp_path / "sensor" / CONFIG_NAME).read_text())
    assert cfg["plugins"] == ["anyalign_frames"]
    # a fresh process that was told nothing about the plugin imports it from the record
    code = ("from anyalign.adapter import ModalityAdapter; import sys; "
            "a = ModalityAdapter.from_pretrained(sys.argv[1]); print(type(a.encoder).__module__)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_dir), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    env.pop("ANYALIGN_PLUGINS", None)
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "sensor")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "anyalign_frames", proc.stderr[-1500:]

    # a recorded plugin that is not installed: one line naming it and --plugin
    cfg.update(plugins=["no_such_plugin_pkg"], encoder={**cfg["encoder"], "name": "no-such-encoder"})
    (tmp_path / "sensor" / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(PluginError, match=r"no-such-encoder.*no_such_plugin_pkg.*--plugin"):
        ModalityAdapter.from_pretrained(tmp_path / "sensor")
    cfg["plugins"] = []  # nothing recorded: the unknown name comes with the --plugin hint
    (tmp_path / "sensor" / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(UnknownNameError, match=r"unknown encoder 'no-such-encoder'.*--plugin"):
        ModalityAdapter.from_pretrained(tmp_path / "sensor")


def test_index_from_relative_folder_serves_every_media(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from anyalign.retrieval import Retriever, as_embedder, build_index, embed_to_folder
    from anyalign.retrieval.server import create_app

    image_corpus(tmp_path / "photos")
    adapter = tiny_image_adapter(tmp_path / "img")
    bert = tiny_bert(tmp_path / "bert")
    monkeypatch.chdir(tmp_path)
    embed_to_folder([Path("photos")], Path("emb"), as_embedder({"adapter": str(adapter)}))  # relative, as typed
    build_index(Path("emb"), Path("idx"), embedders={"text": {"encoder": "text", "pretrained": str(bert)}})
    monkeypatch.chdir(ROOT)  # served from elsewhere
    retriever = Retriever(tmp_path / "idx")
    rows = [r for part in retriever.parts for r in part.meta.field_values("source").values()]
    assert len(rows) == 6 and all(os.path.isabs(s) and Path(s).is_file() for s in rows), rows
    client = TestClient(create_app(retriever), base_url="http://127.0.0.1")
    hits = client.post("/api/search", json={"text": "a red square", "k": 6}).json()["results"]
    assert len(hits) == 6 and all(h["media_url"] == f"/api/media/{h['id']}" for h in hits)
    assert all(client.get(h["media_url"]).status_code == 200 for h in hits)
