"""Issue 24, nothing lost and nothing silent: interrupts, output ownership, hostile recipes, writers' limits,
plugins, disk full and the remaining tracebacks. Tiny random-init models of the real architectures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from _cli import run_captured as run
from _retrieval_helpers import clustered, tiny_bert

ROOT = Path(__file__).resolve().parents[1]
LINES = ["a red square", "a blue circle", "the dog", "a photo of the cat", "a green video", "the yellow sound"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("bert") / "bert")


def _one_line(err: str) -> bool:
    """Exactly one `error:` line and no traceback (progress bars of model loading may precede it)."""
    return sum(line.startswith("error:") for line in err.splitlines()) == 1 and "Traceback" not in err


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "TOKENIZERS_PARALLELISM": "false"}


def _interrupt(args: list[str], ready: callable, sig: int = signal.SIGINT, timeout: float = 240) -> tuple[int, str]:
    """Run `anyalign ARGS` in a subprocess, send `sig` once `ready()` is true; (exit status, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "anyalign.cli.main", *map(str, args)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    try:
        while not ready() and proc.poll() is None and time.monotonic() - t0 < timeout:
            time.sleep(0.05)
        assert proc.poll() is None, f"finished before the signal: {proc.communicate()}"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


# --- 1. interrupts -----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_embed_exits_nonzero_and_writes_nothing(tmp_path: Path, bert: Path, sig: int) -> None:
    (tmp_path / "big.txt").write_text("".join(f"a red dog {i}\n" for i in range(20_000)))
    out = tmp_path / "emb"

    def ready() -> bool:  # the embedding loop runs once the tokenizer cache of the encoder has been touched
        return any(p.name.startswith(".emb.") for p in tmp_path.iterdir())

    code, err = _interrupt(["embed", tmp_path / "big.txt", "--encoder", "text", "--pretrained", bert, "-o", out,
                            "--batch-size", "8"], ready, sig)
    assert code == 128 + sig, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"interrupted by {signal.Signals(sig).name} during `anyalign embed`"), err
    assert "run the same command again" in last and "Traceback" not in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def _imu_corpus(root: Path, n: int = 16) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        np.save(root / f"w{i:03d}.npy", rng.normal(size=(6, 32)).astype(np.float32))
        lines.append(json.dumps({"imu": f"w{i:03d}.npy", "caption": f"a {['red', 'blue'][i % 2]} dog"}))
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    return root / "data.jsonl"


def _recipe(tmp_path: Path, bert: Path, **train: object) -> Path:
    recipe = {
        "name": "t",
        "adapters": {"imu": {"encoder": {"name": "imu", "options": {"dim": 16, "depth": 1, "heads": 2}},
                             "train_encoder": True, "embed_projector": {"name": "mlp", "hidden_dim": 16}}},
        "anchors": {"text": {"encoder": {"name": "text", "pretrained": str(bert)}}},
        "data": {"train": [{"kind": "jsonl", "path": str(_imu_corpus(tmp_path / "imu"))}]},
        "train": {"batch_size": 4, "max_steps": 4, "lr": 1e-3, "warmup_steps": 1, "save_every": 2, "log_every": 1,
                  "tensorboard": False, **train},
        "eval": {"at_start": False},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_interrupted_train_exits_130_and_says_resume(tmp_path: Path, bert: Path) -> None:
    recipe = _recipe(tmp_path, bert, max_steps=100_000, save_every=2)
    out = tmp_path / "run"
    code, err = _interrupt(["train", recipe, "-o", out], lambda: (out / "checkpoints" / "step-000002").is_dir())
    assert code == 130, err
    assert "during `anyalign train`" in err and "rerun with --resume" in err, err
    assert "Traceback" not in err


# --- 2. ownership of outputs -------------------------------------------------------------------------------
def _decoy(path: Path) -> Path:
    """A user's folder that merely holds a file named like an embeddings manifest."""
    path.mkdir()
    (path / "embeddings.json").write_text('{"mine": true}')
    (path / "data.csv").write_text("1,2\n")
    (path / "src").mkdir()
    (path / "src" / "main.py").write_text("print(1)\n")
    return path


def test_embed_keeps_a_folder_that_only_holds_a_file_named_embeddings_json(tmp_path, capsys, bert) -> None:
    (tmp_path / "c.txt").write_text("\n".join(LINES) + "\n")
    decoy = _decoy(tmp_path / "out")
    code, _, err = run(capsys, "embed", tmp_path / "c.txt", "--encoder", "text", "--pretrained", bert, "-o", decoy)
    assert code == 2 and "refusing to replace it" in err and _one_line(err), err
    assert (decoy / "data.csv").is_file() and (decoy / "src" / "main.py").is_file()
    # a real embeddings folder is replaced without --overwrite; with a foreign file added it is not
    assert run(capsys, "embed", tmp_path / "c.txt", "--encoder", "text", "--pretrained", bert, "-o",
               tmp_path / "emb")[0] == 0
    assert run(capsys, "embed", tmp_path / "c.txt", "--encoder", "text", "--pretrained", bert, "-o",
               tmp_path / "emb")[0] == 0
    (tmp_path / "emb" / "notes.txt").write_text("mine")
    code, _, err = run(capsys, "embed", tmp_path / "c.txt", "--encoder", "text", "--pretrained", bert, "-o",
                       tmp_path / "emb")
    assert code == 2 and "notes.txt" in err and (tmp_path / "emb" / "notes.txt").is_file()


def test_output_equal_to_or_around_the_input_is_refused_before_reading(tmp_path, capsys, bert) -> None:
    (tmp_path / "c.txt").write_text("\n".join(LINES) + "\n")
    assert run(capsys, "embed", tmp_path / "c.txt", "--encoder", "text", "--pretrained", bert, "-o",
               tmp_path / "emb")[0] == 0
    before = sorted(p.name for p in (tmp_path / "emb").iterdir())
    for args in (["embed", tmp_path / "emb", "--encoder", "text", "--pretrained", bert, "-o", tmp_path / "emb",
                  "--overwrite"],
                 ["index", "build", tmp_path / "emb", "-o", tmp_path / "emb", "--overwrite"],
                 ["index", "build", tmp_path / "emb", "-o", tmp_path, "--overwrite"],
                 ["index", "build", tmp_path / "emb", "-o", tmp_path / "emb" / "idx"]):
        code, _, err = run(capsys, *args)
        assert code == 2 and "the input" in err and _one_line(err), (args, err)
    assert sorted(p.name for p in (tmp_path / "emb").iterdir()) == before
    code, _, err = run(capsys, "extract", "-e", "text", "--pretrained", bert, "-i", tmp_path, "-o",
                       tmp_path / "feats")
    assert code == 2 and "lies inside the input" in err, err


def test_extract_refuses_a_user_folder_as_output(tmp_path, capsys, bert) -> None:
    (tmp_path / "c.txt").write_text("\n".join(LINES) + "\n")
    user = tmp_path / "out"
    user.mkdir()
    (user / "manifest.json").write_text('{"mine": 1}')
    code, _, err = run(capsys, "extract", "-e", "text", "--pretrained", bert, "-i", tmp_path / "c.txt", "-o", user)
    assert code == 2 and "not an anyalign feature folder" in err, err
    assert (user / "manifest.json").read_text() == '{"mine": 1}'


# --- 3. extract resume fingerprints each input -----------------------------------------------------------
def _pooled(folder: Path) -> dict[str, np.ndarray]:
    from anyalign.features import iter_features

    return {str(r.key): np.asarray(r.pooled) for r in iter_features(folder)}


def test_extract_resume_reencodes_an_edited_text_line_only(tmp_path, capsys, bert) -> None:
    lines = tmp_path / "c.txt"
    lines.write_text("\n".join(LINES) + "\n")
    args = ["extract", "-e", "text", "--pretrained", bert, "-i", lines, "--shard-size", "2", "--workers", "0",
            "--quiet"]
    assert run(capsys, *args, "-o", tmp_path / "f")[0] == 0
    before = _pooled(tmp_path / "f")
    lines.write_text("\n".join([LINES[0], "the white dog", *LINES[2:]]) + "\n")  # line 1 edited in place
    code, out, err = run(capsys, *args, "-o", tmp_path / "f")
    assert code == 0 and "1 new" in out, (out, err)
    assert run(capsys, *args, "-o", tmp_path / "fresh")[0] == 0
    after, fresh = _pooled(tmp_path / "f"), _pooled(tmp_path / "fresh")
    assert sorted(after) == sorted(fresh) and len(after) == len(LINES)
    for key in fresh:
        np.testing.assert_allclose(after[key], fresh[key], atol=1e-5)
    assert not np.allclose(before["1"], after["1"])


def test_extract_resume_reencodes_an_npy_overwritten_under_the_same_name(tmp_path, capsys) -> None:
    manifest = _imu_corpus(tmp_path / "imu", n=4)
    args = ["extract", "-e", "imu", "--set", "dim=16", "--set", "depth=1", "--set", "heads=2", "-i", manifest,
            "--workers", "0", "--quiet", "-o", tmp_path / "f"]
    assert run(capsys, *args)[0] == 0
    before = _pooled(tmp_path / "f")
    np.save(tmp_path / "imu" / "w002.npy", np.ones((6, 32), np.float32))
    code, out, err = run(capsys, *args)
    assert code == 0 and "1 new" in out, (out, err)
    after = _pooled(tmp_path / "f")
    changed = [k for k in before if not np.allclose(before[k], after[k])]
    assert len(changed) == 1 and len(after) == 4


# --- 4. hostile recipes ------------------------------------------------------------------------------------
def _alias_bomb() -> str:
    text, prev = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n', "a"
    for name in "bcdefghi":
        text += f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n"
        prev = name
    return text


@pytest.mark.parametrize("text, why", [
    (_alias_bomb(), "alias bomb"),
    ("x: &a [1, *a]\n", "recursive alias"),
    ("x: " + "[" * 3000 + "]" * 3000 + "\n", "nested deeper"),
    ("".join(" " * i + f"k{i}:\n" for i in range(200)) + " " * 200 + "v: 1\n", "nested deeper"),
])
def test_hostile_recipe_is_one_line_in_under_a_second(tmp_path, capsys, text: str, why: str) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    assert len(text) < 30_000
    from anyalign.config import ConfigError, load_yaml

    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=why):
        load_yaml(recipe)
    assert time.perf_counter() - t0 < 1.0  # the reading itself (the CLI adds typer's start-up)
    code, _, err = run(capsys, "train", recipe)
    assert code == 2 and _one_line(err) and str(recipe) in err and why in err, err


def test_oversized_and_non_utf8_recipes_are_one_line(tmp_path, capsys) -> None:
    from anyalign import config

    big = tmp_path / "big.yaml"
    big.write_bytes(b"a: 1\n" + b"#" * (config.MAX_YAML_BYTES + 1))
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: \xff\xfe\n")
    for path, why in ((big, "at most"), (bad, "not UTF-8")):
        code, _, err = run(capsys, "train", path)
        assert code == 2 and _one_line(err) and why in err, err


# --- 5. writers: lock, factory strings, k, staging ----------------------------------------------------------
@pytest.fixture
def emb(tmp_path: Path) -> Path:
    np.save(tmp_path / "x.npy", clustered(60, 16))
    return tmp_path / "x.npy"


@pytest.mark.parametrize("factory", ["HNSW0", "HNSW1", "PQ4x0", "RR0,Flat", "IVF4_HNSW0,Flat", "NSG0", "IVF0,Flat"])
def test_factory_strings_that_crash_faiss_are_one_line(tmp_path, capsys, emb, factory: str) -> None:
    code, _, err = run(capsys, "index", "build", emb, "-o", tmp_path / "idx", "--factory", factory)
    assert code == 2 and _one_line(err) and factory in err, err
    assert not (tmp_path / "idx").exists()


def test_lock_that_cannot_be_created_is_one_line_not_a_hang(tmp_path, capsys, emb) -> None:
    from anyalign.retrieval.index_safety import lock_path

    lock_path(tmp_path / "idx").mkdir()  # a folder where the lock file goes: it can never be created
    t0 = time.perf_counter()
    code, _, err = run(capsys, "index", "build", emb, "-o", tmp_path / "idx", "--factory", "Flat")
    assert time.perf_counter() - t0 < 20 and code == 2 and _one_line(err) and "writer lock" in err, err


def test_huge_k_and_negative_tune_queries(tmp_path, capsys, emb) -> None:
    code, out, err = run(capsys, "index", "build", emb, "-o", tmp_path / "idx", "--factory", "Flat", "-k",
                         "2000000000")
    assert code == 0 and "recall@60" in out, err
    code, _, err = run(capsys, "index", "build", emb, "-o", tmp_path / "idx2", "--tune-queries", "-5")
    assert code == 2 and _one_line(err) and "tune_queries" in err, err


def test_next_writer_removes_staging_of_a_killed_writer(tmp_path, capsys, emb) -> None:
    assert run(capsys, "index", "build", emb, "-o", tmp_path / "idx", "--factory", "Flat")[0] == 0
    staged = tmp_path / ".idx.k1ll3d.tmp"  # what atomic_path leaves when its writer is SIGKILLed
    staged.mkdir()
    (staged / "index.faiss").write_bytes(b"\0" * 4096)
    (tmp_path / ".idx.old-999999").mkdir()
    assert run(capsys, "index", "add", tmp_path / "idx", emb)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "x.npy"]


# --- 7. plugins --------------------------------------------------------------------------------------------
@pytest.fixture
def broken_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from anyalign import plugins

    (tmp_path / "raises_runtime.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_loaded", set())
    monkeypatch.setattr(plugins, "_scanned", True)
    return tmp_path


@pytest.mark.parametrize("name, why", [("raises_runtime", "RuntimeError: boom at import"),
                                       ("exits", "SystemExit"), ("./raises_runtime.py", "not a file path")])
def test_plugin_raising_anything_is_one_line(capsys, broken_plugins, name: str, why: str) -> None:
    code, _, err = run(capsys, "--plugin", name, "encoders")
    assert code == 2 and _one_line(err) and f"plugin {name!r}" in err and why in err, err


def test_broken_plugin_from_the_environment_disables_itself(capsys, broken_plugins, monkeypatch, caplog) -> None:
    monkeypatch.setenv("ANYALIGN_PLUGINS", "raises_runtime")
    code, out, err = run(capsys, "encoders")
    assert code == 0 and "imu" in out, err
    assert "raises_runtime" in caplog.text and "disabled" in caplog.text


# --- 6. partial failures -----------------------------------------------------------------------------------
def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    import io
    import tarfile

    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


IMU = ["--set", "dim=16", "--set", "depth=1", "--set", "heads=2"]


def test_tar_with_bad_members_extracts_the_rest_and_counts_them(tmp_path, capsys, bert) -> None:
    shard = _tar(tmp_path / "s.tar", [("a.txt", b"a red dog"), ("b.txt", b"\xff\xfe not utf-8"),
                                      ("c.txt", b"the blue cat"), ("d.json", b"{not json"), ("d.txt", b"x"),
                                      ("e.txt", b"a green square")])
    code, out, err = run(capsys, "extract", "-e", "text", "--pretrained", bert, "-i", shard, "-o", tmp_path / "f",
                         "--workers", "0", "--quiet")
    assert code == 0 and "3 extracted, 2 failed" in out, (out, err)
    manifest = json.loads((tmp_path / "f" / "manifest.json").read_text())
    assert manifest["count"] == 3 and sorted(f["source"].rsplit(":", 1)[1] for f in manifest["failures"]) == ["b", "d"]
    # a truncated shard: the members before the cut are extracted, the cut is one counted failure
    (tmp_path / "t.tar").write_bytes(shard.read_bytes()[:512 * 5 + 100])
    code, out, err = run(capsys, "extract", "-e", "text", "--pretrained", bert, "-i", tmp_path / "t.tar", "-o",
                         tmp_path / "g", "--workers", "0", "--quiet")
    assert code == 0 and "2 extracted, 2 failed" in out and "cannot read as a tar shard" in err, (out, err)


def test_jsonl_and_csv_bad_rows_are_skipped_counted_and_listed(tmp_path, capsys) -> None:
    root = tmp_path / "imu"
    _imu_corpus(root, n=3)
    (root / "notes.xyz").write_text("not a signal")
    (root / "d.jsonl").write_text("\n".join([
        json.dumps({"imu": "w000.npy"}), "{broken json", json.dumps({"imu": ["w001.npy", "w002.npy"]}),
        json.dumps({"imu": "notes.xyz"}), json.dumps({"imu": "missing.npy"}), "[1, 2]"]) + "\n")
    code, out, err = run(capsys, "extract", "-e", "imu", *IMU, "-i", root / "d.jsonl", "-o", tmp_path / "f",
                         "--workers", "0", "--quiet")
    assert code == 0 and "3 extracted, 4 failed" in out, (out, err)
    failed = {f["source"] for f in json.loads((tmp_path / "f" / "manifest.json").read_text())["failures"]}
    assert any(s.endswith("d.jsonl:2") for s in failed) and any(s.endswith("d.jsonl:6") for s in failed)
    assert any(s.endswith("notes.xyz") for s in failed) and any(s.endswith("missing.npy") for s in failed)

    (root / "d.csv").write_text("path,label\nw000.npy,walk\nw001.npy,run,extra\nw002.npy\n,run\nw001.npy,run\n")
    code, out, err = run(capsys, "extract", "-e", "imu", *IMU, "-i", root / "d.csv", "-o", tmp_path / "g",
                         "--workers", "0", "--quiet")
    assert code == 0 and "2 extracted, 3 failed" in out, (out, err)


# --- 8. disk full ------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 3 MiB tmpfs (root can mount one), else None: the test then fakes ENOSPC in faiss's writer."""
    disk = tmp_path / "disk"
    disk.mkdir()
    ok = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)],
                                              capture_output=True).returncode == 0
    yield disk if ok else None
    if ok:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_full_disk_is_one_line_and_keeps_the_existing_index(tmp_path, capsys, tiny_disk, monkeypatch, bert) -> None:
    from anyalign.retrieval import Retriever

    disk = tiny_disk or tmp_path / "disk"
    np.save(tmp_path / "small.npy", clustered(100, 32))
    np.save(tmp_path / "big.npy", clustered(20_000, 32, seed=1))
    assert run(capsys, "index", "build", tmp_path / "small.npy", "-o", disk / "idx", "--factory", "Flat")[0] == 0
    if tiny_disk is not None:
        with open(disk / "filler", "wb") as f:  # fill what is left
            with pytest.raises(OSError):
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
    else:
        import faiss

        def full(*_a: object) -> None:
            raise RuntimeError("Error in faiss::write_index: write error (No space left on device)")

        monkeypatch.setattr(faiss, "write_index", full)
    for args in (["index", "add", disk / "idx", tmp_path / "big.npy"],
                 ["index", "build", tmp_path / "big.npy", "-o", disk / "idx2", "--factory", "Flat"]):
        code, _, err = run(capsys, *args)
        assert code != 0 and _one_line(err) and str(disk / "idx") in err and ".tmp" not in err, (args, err)
    assert len(Retriever(disk / "idx")) == 100  # the existing index is intact and readable
    assert sorted(p.name for p in disk.iterdir() if p.name != "filler") == ["idx"]  # no partial output left
    if tiny_disk is not None:
        (tmp_path / "l.txt").write_text("a red dog\nthe cat\n")
        for args in (["embed", tmp_path / "l.txt", "--encoder", "text", "--pretrained", bert, "-o", disk / "emb"],
                     ["extract", "-e", "text", "--pretrained", bert, "-i", tmp_path / "l.txt", "-o", disk / "f",
                      "--quiet"]):
            code, _, err = run(capsys, *args)
            assert code == 1 and _one_line(err) and "No space left on device" in err, (args, err)
        assert sorted(p.name for p in disk.iterdir() if p.name != "filler") == ["idx"]


# --- 10. the remaining tracebacks --------------------------------------------------------------------------
@pytest.fixture
def imu_files(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "w.npy", rng.normal(size=(6, 32)).astype(np.float32))
    np.save(tmp_path / "wc.npy", (rng.normal(size=(6, 32)) + 1j).astype(np.complex64))
    return tmp_path


@pytest.mark.parametrize("args, why", [
    (["embed", "{txt}", "--encoder", "text", "--pretrained", "{bert}", "--device", "bogus"], "not a torch device"),
    (["extract", "-e", "text", "--pretrained", "{bert}", "-i", "{txt}", "--device", "bogus"], "not a torch device"),
    (["embed", "{txt}", "--encoder", "text", "--pretrained", "{bert}", "--set", "max_length=-1"], "must be >= 1"),
    (["embed", "{w}", "--encoder", "imu", "--set", "dim=-1"], "'dim' must be >= 1"),
    (["embed", "{w}", "--encoder", "imu", "--set", "dim=16", "--set", "heads=7"], "divisible by heads 7"),
    (["embed", "/dev/null", "--encoder", "text", "--pretrained", "{bert}"], "not a regular file or folder"),
    (["embed", "{wc}", "--encoder", "imu", "--set", "dim=16", "--set", "heads=2"], "nothing embedded"),
])
def test_former_tracebacks_are_one_line_errors(tmp_path, capsys, caplog, bert, imu_files, args, why) -> None:
    (tmp_path / "l.txt").write_text("a red dog\n")
    values = {"txt": tmp_path / "l.txt", "bert": bert, "w": imu_files / "w.npy", "wc": imu_files / "wc.npy"}
    args = [a.format(**values) for a in args] + ["-o", tmp_path / "out"]
    code, _, err = run(capsys, *args)
    assert code == 2 and _one_line(err) and why in err, err
    if "wc.npy" in str(args):
        assert "complex values" in caplog.text  # the warning that names the skipped input


def test_bad_projector_option_and_resume_with_another_architecture(tmp_path, capsys, bert) -> None:
    recipe = _recipe(tmp_path, bert)
    code, _, err = run(capsys, "train", recipe, "adapters.imu.embed_projector.hidden_dim=-3", "-o", tmp_path / "r")
    assert code == 2 and _one_line(err) and "'hidden_dim' must be >= 1" in err, err
    assert run(capsys, "train", recipe, "-o", tmp_path / "run")[0] == 0
    code, _, err = run(capsys, "train", recipe, "adapters.imu.encoder.options.dim=32", "train.max_steps=8", "-o",
                       tmp_path / "run", "--resume")
    assert code == 2 and _one_line(err) and "written for another architecture" in err, err


# --- 9. the service ----------------------------------------------------------------------------------------
def test_host_parsing_is_strict_and_errors_hide_temp_paths(tmp_path) -> None:
    import tempfile

    from fastapi.testclient import TestClient

    from anyalign.retrieval import ArraySource, Retriever, build_index
    from anyalign.retrieval.server import create_app, error_body

    build_index(ArraySource(clustered(40, 16)), tmp_path / "idx", factory="Flat")
    client = TestClient(create_app(Retriever(tmp_path / "idx")))
    for host in ("localhost:80@evil.com", "localhost:evil", "localhost:99999", "local host", "[::1"):
        assert client.get("/api/info", headers={"Host": host}).status_code == 400, host
    for host in ("localhost", "localhost:8000", "127.0.0.1:80", "[::1]:8000"):
        assert client.get("/api/info", headers={"Host": host}).status_code == 200, host
    scratch = f"{tempfile.gettempdir()}/anyalign-query-x1y2/query.png"
    body = error_body(400, f"{scratch}: cannot decode image (truncated)")
    assert tempfile.gettempdir() not in json.dumps(body) and "cannot decode image" in body["error"]


@pytest.mark.slow
def test_half_open_connections_of_one_peer_do_not_starve_others(tmp_path) -> None:
    import socket
    import threading

    import httpx

    from anyalign.retrieval import ArraySource, Retriever, build_index
    from anyalign.retrieval.server import create_app, uvicorn_server

    build_index(ArraySource(clustered(40, 16)), tmp_path / "idx", factory="Flat")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn_server(create_app(Retriever(tmp_path / "idx")), host="127.0.0.1", port=port,
                            header_timeout=30.0, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    socks = []
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        for _ in range(520):  # more than uvicorn's global limit of 512, each stuck in its headers
            c = socket.create_connection(("127.0.0.1", port))
            c.sendall(b"GET /api/info HT")
            socks.append(c)
        time.sleep(0.5)
        codes = [httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=10).status_code for _ in range(5)]
        assert codes == [200] * 5
    finally:
        for c in socks:
            c.close()
        server.should_exit = True
        thread.join(timeout=10)
