"""Integrity on load: the entity index and every exported file carry sha256 checksums written after them and checked
when a Predictor loads them (a flipped byte is refused, never served), and ``export.json`` paths stay inside the
export."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import one_line, train_tiny
from kgdistill.cli import main
from kgdistill.errors import CheckpointError
from kgdistill.jobs.export import REWRITTEN, export_model
from kgdistill.inference.index import EntityIndex
from kgdistill.inference.predictor import Predictor
from kgdistill.io import MANIFEST, write_manifest


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_plm, tiny_kg) -> Path:
    root = tmp_path_factory.mktemp("integrity")
    return train_tiny(root / "run", tiny_kg, tiny_plm, evaluate=True, data__cache_dir=str(root / "cache"),
                      train__max_steps=2)


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("integrity-export") / "export"
    export_model(run_dir, out, "onnx")
    return out


def flip(path: Path, at: float = 0.5) -> None:
    """Change one byte (a letter or digit into another, so text files stay parseable)."""
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    while not chr(data[i]).isalnum():
        i += 1
    data[i] = ord("7") if chr(data[i]) != "7" else ord("3")
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------------------- index
def test_a_flipped_byte_in_the_index_is_refused_and_the_index_rebuilt(run_dir, tmp_path, caplog):
    folder = tmp_path / "index"
    good = np.array(Predictor.from_pretrained(run_dir, device="cpu", index_dir=folder).index.vectors)  # a copy
    npy, meta_path = folder / "checkpoint-last.npy", folder / "checkpoint-last.json"
    meta = json.loads(meta_path.read_text())
    assert len(meta["npy_sha256"]) == 64 and meta["npy_bytes"] == npy.stat().st_size
    data = bytearray(npy.read_bytes())
    data[-3] ^= 0x40  # inside a vector: the file keeps its size and header, only the checksum can tell
    npy.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as raised:
        EntityIndex.verify(npy, meta)
    assert str(npy) in one_line(raised.value) and "checksum mismatch" in str(raised.value)
    with caplog.at_level(logging.WARNING, logger="kgdistill"):
        assert EntityIndex.open(folder, "checkpoint-last") is None
    assert str(meta_path) in caplog.text and "checksum mismatch" in caplog.text
    again = Predictor.from_pretrained(run_dir, device="cpu", index_dir=folder)  # rebuilt: the flip is never served
    assert np.array_equal(np.asarray(again.index.vectors), good)
    EntityIndex.verify(npy, json.loads(meta_path.read_text()))


# ---------------------------------------------------------------------------------------------------- export
def test_the_export_manifest_covers_every_file_but_the_rewritten_ones(exported):
    listed = set(json.loads((exported / MANIFEST).read_text())["files"])
    on_disk = {p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file()} - {MANIFEST}
    assert listed == {name for name in on_disk if not name.startswith(REWRITTEN)}
    for name in ("export.json", "config.yaml", "onnx/query_encoder.onnx", "onnx/entity_encoder.onnx",
                 "model.safetensors", "README.md"):
        assert name in listed, name
    assert any(name.startswith("data/") for name in listed)
    assert (exported / "metrics.json").is_file() and "metrics.json" not in listed


@pytest.mark.parametrize("name", ["onnx/query_encoder.onnx", "onnx/entity_encoder.onnx", "config.yaml", "export.json",
                                  "data/ENTITIES", "model.json", "README.md"])
def test_a_flipped_byte_in_an_exported_file_is_refused(name, exported, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(exported, copy)
    if name == "data/ENTITIES":
        name = next(p for p in copy.glob("data/*/entities.tsv")).relative_to(copy).as_posix()
    flip(copy / name)
    for backend in ("torch", "onnx"):
        with pytest.raises(CheckpointError) as raised:
            Predictor.from_pretrained(copy, device="cpu", backend=backend)
        assert name in one_line(raised.value)


def test_files_that_later_jobs_rewrite_do_not_break_the_export(exported, tmp_path, capsys):
    copy = tmp_path / "export"
    shutil.copytree(exported, copy)
    assert main(["evaluate", "--model", str(copy)]) == 0  # rewrites metrics.json in the export folder
    half = Predictor.from_pretrained(copy, device="cpu", index_dtype="fp16")  # rebuilds index/entities.*
    assert half.index.dtype == "fp16"
    assert Predictor.from_pretrained(copy, device="cpu").index.dtype == "fp16"


@pytest.mark.parametrize("key, value", [("dataset", "../elsewhere"), ("dataset", "/etc"),
                                        ("onnx.files.query", "../../query.onnx"),
                                        ("onnx.int8_files.entity", "/tmp/entity.onnx")])
def test_paths_in_export_json_must_stay_inside_the_export(key, value, exported, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(exported, copy)
    meta = json.loads((copy / "export.json").read_text())
    *parents, last = key.split(".")
    node = meta
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    (copy / "export.json").write_text(json.dumps(meta))
    write_manifest(copy, exclude=REWRITTEN)  # consistent: only the path check can refuse it
    with pytest.raises(CheckpointError) as raised:
        Predictor.from_pretrained(copy, device="cpu")
    assert "export.json" in one_line(raised.value) and value in str(raised.value)
