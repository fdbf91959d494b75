"""``export_model`` (``kgdistill.jobs.export``): a self-contained Hugging Face folder that scores as the run does, after
a move too, and ONNX graphs (int8 as well) whose scores stay close to the model's."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from kgdistill.errors import KGDistillError
from kgdistill.inference.predictor import Predictor
from kgdistill.jobs.export import export_model


def test_export_hf_gives_identical_scores(run_dir, predictor, tmp_path):
    out = tmp_path / "export"
    result = export_model(run_dir, out, "hf")
    for name in ("model.safetensors", "model.json", "tokenizer", "manifest.json", "config.yaml", "export.json",
                 "index/entities.npy", "index/entities.json", f"data/{predictor.kg.name}/entities.tsv"):
        assert (out / name).exists(), name
    assert result.meta["export_format"] == "hf" and result.meta["index"]["entities"] == predictor.kg.num_entities
    assert result.to_dict() == {**json.loads((out / "export.json").read_text()), "output": str(out)}
    moved = tmp_path / "elsewhere" / "model"  # self-contained: works after a move, without the original dataset path
    moved.parent.mkdir()
    shutil.move(str(out), str(moved))
    exported = Predictor.from_pretrained(moved, device="cpu")
    assert exported.kg.entity_ids == predictor.kg.entity_ids
    assert np.array_equal(np.asarray(exported.index.vectors), np.asarray(predictor.index.vectors))
    for head, relation in (("E0", "hypernym"), ("E5", "r_skip"), ({"name": "dog", "description": "pet"}, "has part")):
        a = predictor.predict_tails(head, relation, k=8).to_dict()
        b = exported.predict_tails(head, relation, k=8).to_dict()
        assert a == b
    assert exported.score("E3", "similar to", "E8") == predictor.score("E3", "similar to", "E8")
    with pytest.raises(KGDistillError, match="not empty and not a previous export"):
        export_model(run_dir, moved.parent, "hf")
    with pytest.raises(KGDistillError, match="must not be the model folder or contain it"):
        export_model(run_dir, run_dir, "hf")


def test_export_onnx_and_int8(run_dir, predictor, tmp_path):
    pytest.importorskip("onnxruntime", reason="ONNX export needs onnx and onnxruntime")
    pytest.importorskip("onnx", reason="ONNX export needs onnx and onnxruntime")
    out = tmp_path / "onnx"
    report = export_model(run_dir, out, "onnx", quantize="int8").meta
    assert max(report["onnx"]["max_abs_diff_vs_pytorch"].values()) < 1e-5
    assert max(report["onnx"]["int8_max_abs_diff_vs_pytorch"].values()) < 0.05
    assert max(report["int8_max_abs_diff_vs_fp32"].values()) < 0.05
    for name in ("onnx/query_encoder.onnx", "onnx/entity_encoder.onnx", "onnx/query_encoder.int8.onnx"):
        assert (out / name).is_file()
    int8 = Predictor.from_pretrained(out, backend="onnx")  # the int8 graphs, as the export asked
    assert int8.fingerprint.startswith("onnx-") and (out / "index" / "entities-onnx-int8.npy").is_file()
    for tail in ("E1", "E7", {"name": "dog", "description": "pet"}):
        assert int8.score("E0", "hypernym", tail) == pytest.approx(predictor.score("E0", "hypernym", tail), abs=0.02)
    torch_int8 = Predictor.from_pretrained(out)  # PyTorch dynamic int8 on load
    assert torch_int8.fingerprint.endswith("+int8")
    assert torch_int8.score("E0", "hypernym", "E1") == pytest.approx(predictor.score("E0", "hypernym", "E1"), abs=0.02)
