"""The entity index (``kgdistill.inference.index``): saved memory-mapped beside the run and reused, rebuilt when stale
or damaged, chunked exact search equal to a full top-k, FAISS indexes with their recall."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kgdistill.inference.index import EntityIndex, model_fingerprint
from kgdistill.inference.predictor import Predictor


def test_index_is_saved_memory_mapped_and_reloaded(run_dir, predictor):
    npy, meta_path = run_dir / "index" / "checkpoint-last.npy", run_dir / "index" / "checkpoint-last.json"
    meta = json.loads(meta_path.read_text())
    assert meta["ids"] == predictor.kg.entity_ids and meta["dtype"] == "fp32"
    manifest = json.loads((run_dir / "checkpoint-last" / "manifest.json").read_text())
    assert meta["model_fingerprint"] == manifest["files"]["model.safetensors"]["sha256"]
    assert meta["model_fingerprint"] == model_fingerprint(run_dir / "checkpoint-last")
    assert isinstance(predictor.index.vectors, np.memmap)
    mtime = npy.stat().st_mtime_ns
    again = Predictor.from_pretrained(run_dir, device="cpu")
    assert npy.stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert np.array_equal(np.asarray(again.index.vectors), np.asarray(predictor.index.vectors))
    a = predictor.predict_tails("E0", "hypernym", k=5).to_dict()
    assert again.predict_tails("E0", "hypernym", k=5).to_dict() == a


def test_stale_index_is_rebuilt(run_dir, predictor, tmp_path):
    folder = tmp_path / "idx"
    Predictor.from_pretrained(run_dir, device="cpu", index_dir=folder)
    meta_path = folder / "checkpoint-last.json"
    meta = json.loads(meta_path.read_text())
    meta["model_fingerprint"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    assert EntityIndex.open(folder, "checkpoint-last", {"model_fingerprint": predictor.fingerprint}) is None
    rebuilt = Predictor.from_pretrained(run_dir, device="cpu", index_dir=folder)
    assert json.loads(meta_path.read_text())["model_fingerprint"] == predictor.fingerprint
    assert np.array_equal(np.asarray(rebuilt.index.vectors), np.asarray(predictor.index.vectors))
    (folder / "checkpoint-last.npy").write_bytes(b"truncated")  # a damaged file is rebuilt, never trusted
    repaired = Predictor.from_pretrained(run_dir, device="cpu", index_dir=folder)
    assert repaired.index.num_base == predictor.kg.num_entities
    half = Predictor.from_pretrained(run_dir, device="cpu", index_dir=folder, index_dtype="fp16")
    assert half.index.vectors.dtype == np.float16
    assert half.score("E0", "hypernym", "E1") == pytest.approx(predictor.score("E0", "hypernym", "E1"), abs=2e-3)


def test_chunked_exact_search_equals_full_topk(predictor):
    index = EntityIndex(np.array(predictor.index.vectors), predictor.index.ids, chunk_size=5)
    queries = torch.nn.functional.normalize(torch.randn(4, index.dim), dim=-1)
    scores, rows = index.search_exact(queries, 7)
    full = queries @ torch.from_numpy(np.array(predictor.index.vectors)).T
    expected_scores, _ = full.topk(7, dim=1)
    assert torch.allclose(scores, expected_scores, atol=1e-6)
    assert torch.allclose(full.gather(1, rows), scores, atol=1e-6)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_faiss_indexes_report_recall(predictor, kind):
    pytest.importorskip("faiss", reason="faiss-cpu is optional (pip install faiss-cpu)")
    index = EntityIndex(np.array(predictor.index.vectors), predictor.index.ids)
    report = index.build_faiss(kind, nlist=4, nprobe=4)
    assert report["kind"] == kind and 0 <= report["recall@10"] <= 1
    if kind in ("flat", "ivf"):  # ivf probes all 4 lists here: exhaustive
        assert report["recall@10"] == 1.0
    queries = predictor.query_vectors([(predictor.resolve_entity("E0"), 0)])
    exact = index.search_exact(queries, 5)[1]
    assert set(index.search(queries, 5)[1][0].tolist()) == set(exact[0].tolist()) or kind == "hnsw"
