"""One weight fingerprint (`anyalign.fingerprint.source_fingerprint`): content identity of every file, used by the
text-anchor table, the converted-GGUF cache and `EncoderSpec.fingerprint`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from _retrieval_helpers import tiny_bert

from anyalign.align.text_cache import anchor_fingerprint, table_for_anchor
from anyalign.encoders.spec import EncoderSpec
from anyalign.fingerprint import source_fingerprint
from anyalign.llm.bundle import gguf_fingerprint


def _replace_weights(folder: Path, seed: int) -> None:
    """Write other random weights of the same architecture over the model file, keeping the folder's mtime."""
    from transformers import BertModel

    st = folder.stat()
    torch.manual_seed(seed)
    other = folder.parent / f"other-{seed}"
    BertModel(BertModel.from_pretrained(folder).config).save_pretrained(other)
    os.replace(other / "model.safetensors", folder / "model.safetensors")
    shutil.rmtree(other)
    os.utime(folder, ns=(st.st_atime_ns, st.st_mtime_ns))  # the folder looks untouched


def test_a_file_replaced_inside_a_folder_changes_the_fingerprint(tmp_path: Path) -> None:
    folder = tiny_bert(tmp_path / "text")
    before = source_fingerprint(folder)
    assert source_fingerprint(folder) == before  # stable
    _replace_weights(folder, seed=1)
    assert source_fingerprint(folder) != before
    assert source_fingerprint("org/name") == source_fingerprint("org/name") != source_fingerprint("org/other")
    assert source_fingerprint(None) is None


def test_text_table_of_a_model_replaced_at_the_same_path_holds_new_embeddings(tmp_path: Path) -> None:
    folder = tiny_bert(tmp_path / "text")
    spec = EncoderSpec("text", str(folder))
    captions = ["a red dog", "a blue cat"]

    def table_vectors() -> tuple[str, torch.Tensor]:
        encoder = spec.build(frozen=True)
        table = table_for_anchor(spec, encoder, root=tmp_path / "tables")
        return anchor_fingerprint(spec), torch.as_tensor(table.get(captions))

    name1, first = table_vectors()
    _replace_weights(folder, seed=2)
    name2, second = table_vectors()
    assert name1 != name2, "the table is named by the weights' content identity"
    fresh = spec.build(frozen=True)(captions).pooled
    assert torch.allclose(second.float(), fresh.float(), atol=1e-5), "the table must hold the new model's vectors"
    assert not torch.allclose(first.float(), second.float(), atol=1e-3)


def test_gguf_cache_key_follows_the_file_content(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"x" * 10)
    a = gguf_fingerprint(f)
    st = f.stat()
    f.write_bytes(b"y" * 11)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime, other size
    assert gguf_fingerprint(f) != a
