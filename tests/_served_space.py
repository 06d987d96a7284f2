"""A small mixed index for the server tests: six captioned PNGs (tiny timm image adapter) and eight IMU windows as
.npy files (tiny IMU adapter, its encoder saved in the adapter), both heads random-init to 32 dims, with a tiny
BERT as the text side; and a uvicorn server on loopback in a thread."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _retrieval_helpers import image_corpus, tiny_bert, tiny_image_adapter

from anyalign.adapter import build_adapter
from anyalign.encoders.spec import EncoderSpec
from anyalign.retrieval import as_embedder, build_index, embed_to_folder

ACTIVITIES = ["walking", "running", "standing", "badminton"]


def imu_corpus(folder: Path, n: int = 8) -> Path:
    """`n` IMU windows `[6, 100]` (sines whose frequency depends on the activity), with label and caption."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.linspace(0, 2, 100, dtype=np.float32)
    rows = []
    for i in range(n):
        act = ACTIVITIES[i % len(ACTIVITIES)]
        f = 0.5 + 0.5 * ACTIVITIES.index(act)  # Hz over 2 s
        x = np.stack([np.sin(2 * np.pi * f * t + c) for c in range(6)]) + 0.1 * rng.standard_normal((6, 100))
        np.save(folder / f"window{i}.npy", x.astype(np.float32))
        rows.append({"path": f"window{i}.npy", "label": act, "caption": f"a person {act}"})
    (folder / "windows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "windows.jsonl"


def tiny_imu_adapter(folder: Path, bert: Path, embed_dim: int = 32) -> Path:
    """A saved IMU adapter (1-layer IMU transformer, its weights in the adapter) whose space names `bert` as text."""
    torch.manual_seed(0)
    spec = EncoderSpec("imu", None, {"dim": 32, "depth": 1, "heads": 2})
    adapter = build_adapter("imu", spec, feature="pooled", embed_dim=embed_dim, embed_projector={"name": "linear"},
                            train_encoder=True, space={"text": EncoderSpec("text", str(bert))})
    adapter.save_pretrained(folder)
    return folder


def mixed_index(root: Path) -> dict[str, Any]:
    """Images + IMU windows in one index (`root/idx`), text queries through the tiny BERT."""
    bert = tiny_bert(root / "bert")
    images = image_corpus(root / "media")
    imu = imu_corpus(root / "imu")
    img_adapter = tiny_image_adapter(root / "img")
    imu_adapter = tiny_imu_adapter(root / "imu-adapter", bert)
    embed_to_folder([images], root / "emb-image", as_embedder({"adapter": str(img_adapter)}))
    embed_to_folder([imu], root / "emb-imu", as_embedder({"adapter": str(imu_adapter)}))
    build_index([root / "emb-image", root / "emb-imu"], root / "idx",
                embedders={"text": {"encoder": "text", "pretrained": str(bert)}})
    return {"root": root, "index": root / "idx", "bert": bert, "imu": imu.parent, "imu_adapter": imu_adapter,
            "image_adapter": img_adapter, "media": images.parent}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(app: Any) -> Iterator[int]:
    """Serve `app` on 127.0.0.1 in a thread; yields the port."""
    from anyalign.retrieval.server import uvicorn_server

    port = free_port()
    server = uvicorn_server(app, host="127.0.0.1", port=port, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(400):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started, "the test server did not start"
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)
