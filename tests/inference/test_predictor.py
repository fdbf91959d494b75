"""Using a trained model: Predictor ranks equal the evaluator's, unseen entities, entity index, export, CLI."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import train_tiny
from kgdistill.api import DataContext, load_model, load_run_config
from kgdistill.cli import main
from kgdistill.data.batching import pad_store_rows, tokenize
from kgdistill.data.text import join_name_description
from kgdistill.errors import KGDistillError
from kgdistill.jobs.export import export_model
from kgdistill.inference.index import EntityIndex, model_fingerprint
from kgdistill.inference.predictor import (AmbiguousEntityError, Predictor, PredictionError, UnknownEntityError,
                                           UnknownRelationError)



@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_plm, tiny_kg) -> Path:
    root = tmp_path_factory.mktemp("inference")
    return train_tiny(root / "run", tiny_kg, tiny_plm, data__cache_dir=str(root / "cache"), train__checkpoint_every=3)


@pytest.fixture(scope="module")
def predictor(run_dir) -> Predictor:
    return Predictor.from_pretrained(run_dir, device="cpu")


@pytest.fixture(scope="module")
def evaluated(run_dir):
    """The evaluator's own per-query dump (filtered ranks, top 10) and entity vectors for the test split."""
    model, tokenizer, folder = load_model(run_dir)
    config = load_run_config(folder)
    config.eval.dump_predictions = True
    data = DataContext(config, tokenizer)
    evaluator = data.evaluator(torch.device("cpu"))
    result = evaluator.evaluate(model, "test", progress=False)
    return result, evaluator.encode_entities(model, progress=False), data


# ---------------------------------------------------------------------------------------------------- equivalence
def test_entity_vectors_equal_the_evaluators(predictor, evaluated):
    _, entities, _ = evaluated
    assert torch.equal(predictor.index.rows(np.arange(predictor.kg.num_entities)), entities)


def test_predict_tails_rank_equals_evaluator_rank(predictor, evaluated):
    result, _, _ = evaluated
    dumped = result.predictions
    assert len(dumped) >= 6  # forward and inverse queries of the test split
    untied = 0
    for item in dumped:
        head, relation, gold = item["head"], item["relation"], item["gold"]  # relation: 'inverse x' for inverse ones
        assert predictor.rank(head, relation, gold) == item["rank"]
        pred = predictor.predict_tails(head, relation, k=predictor.num_entities, keep=[gold])
        ours = next(r for r in pred.results if r.id == gold)
        if float(item["rank"]).is_integer():  # no tie at the gold score: the position is the rank
            untied += 1
            assert ours.rank == item["rank"]
        top = predictor.predict_tails(head, relation, k=10, keep=[gold]).results
        assert [r.id for r in top] == [t["id"] for t in item["top"]]
        assert [round(r.score, 5) for r in top] == pytest.approx([t["score"] for t in item["top"]], abs=2e-5)
    assert untied >= 3


def test_predict_heads_is_tail_prediction_on_the_inverse(predictor, evaluated):
    result, _, data = evaluated
    n = len(data.kg.splits["test"])
    for (h, r, t), backward in zip(data.kg.splits["test"][:4], result.predictions[n:n + 4]):
        head_id, tail_id = data.kg.entity_ids[h], data.kg.entity_ids[t]
        relation = data.kg.relation_texts[r]
        pred = predictor.predict_heads(relation, tail_id, k=predictor.num_entities, keep=[head_id])
        assert pred.direction == "head" and pred.relation == relation
        assert predictor.rank(tail_id, "inverse " + relation, head_id) == backward["rank"]
        assert [x.id for x in pred.results[:10]] == [x["id"] for x in backward["top"]]
        same = predictor.predict_tails(tail_id, "inverse " + relation, k=5)
        assert [x.id for x in same.results] == [x.id for x in predictor.predict_heads(relation, tail_id, k=5).results]


def test_score_equals_query_dot_entity(predictor, evaluated):
    _, entities, data = evaluated
    h, r, t = (int(x) for x in data.kg.splits["test"][0])
    examples_text = (data.texts.entity_text(h), data.texts.relation_text(r))
    store = tokenize(data.tokenized.tokenizer, [examples_text[0]], [examples_text[1]], data.config.data.max_tokens)
    with torch.no_grad():
        query = predictor.model.encode_queries(pad_store_rows(store, np.array([0]), data.tokenized)).vectors
    expected = float(query[0] @ entities[t])
    kg = data.kg
    assert predictor.score(kg.entity_ids[h], kg.relation_ids[r], kg.entity_ids[t]) == pytest.approx(expected, abs=1e-6)
    assert predictor.score(kg.entity_names[h], kg.relation_texts[r], kg.entity_names[t]) == pytest.approx(expected,
                                                                                                          abs=1e-6)


# ---------------------------------------------------------------------------------------------------- resolution
def test_entities_by_id_name_and_errors(predictor):
    kg = predictor.kg
    by_id = predictor.predict_tails(kg.entity_ids[0], kg.relation_ids[0], k=3)
    by_name = predictor.predict_tails(kg.entity_names[0].upper(), kg.relation_texts[0], k=3)
    assert [r.id for r in by_id.results] == [r.id for r in by_name.results]
    assert [r.rank for r in by_id.results] == [1, 2, 3]
    assert by_id.entity == {"id": kg.entity_ids[0], "name": kg.entity_names[0]}
    with pytest.raises(UnknownEntityError, match="unknown entity 'no such thing'"):
        predictor.predict_tails("no such thing", kg.relation_ids[0])
    with pytest.raises(UnknownRelationError, match="unknown relation 'flies over'"):
        predictor.predict_tails(kg.entity_ids[0], "flies over")
    with pytest.raises(PredictionError, match="k: expected an integer"):
        predictor.predict_tails(kg.entity_ids[0], kg.relation_ids[0], k=0)
    with pytest.raises(PredictionError, match="non-empty 'name'"):
        predictor.predict_tails({"name": "  "}, kg.relation_ids[0])
    with pytest.raises(PredictionError, match="unexpected keys"):
        predictor.predict_tails({"name": "x", "colour": "red"}, kg.relation_ids[0])


def test_ambiguous_name_lists_candidate_ids(run_dir, predictor):
    fresh = Predictor(predictor.model, predictor.tokenizer, predictor.config, predictor.kg, "cpu",
                      index=EntityIndex(np.array(predictor.index.vectors), predictor.index.ids))
    name = fresh.kg.entity_names[1]
    fresh.add_entities([{"id": "NEW-1", "name": name, "description": "another one"}])
    with pytest.raises(AmbiguousEntityError, match="ambiguous") as info:
        fresh.predict_tails(name, fresh.kg.relation_ids[0])
    assert info.value.candidates == [fresh.kg.entity_ids[1], "NEW-1"]
    assert fresh.predict_tails("NEW-1", fresh.kg.relation_ids[0], k=2).entity["id"] == "NEW-1"
    with pytest.raises(PredictionError, match="already exists"):
        fresh.add_entities([{"id": "NEW-1", "name": "x"}])


# ---------------------------------------------------------------------------------------------------- unseen entities
def test_unseen_entity_is_encoded_from_its_text(predictor):
    kg = predictor.kg
    spec = {"name": "red fox", "description": "a small wild animal"}
    pred = predictor.predict_tails(spec, "hypernym", k=5)
    assert len(pred.results) == 5 and pred.num_filtered == 0 and pred.filtered == []
    assert pred.entity == {"name": "red fox", "text": "red fox: a small wild animal"}
    text = join_name_description(spec["name"], spec["description"])
    store = tokenize(predictor.tokenizer, [text], None, predictor.config.data.max_tokens)
    with torch.no_grad():
        vector = predictor.model.encode_entities(pad_store_rows(store, np.array([0]), predictor.tokenized)).vectors
    query = predictor.query_vectors([(predictor.resolve_entity(kg.entity_ids[2]), 0)])
    assert predictor.score(kg.entity_ids[2], 0, spec) == pytest.approx(float(query[0] @ vector[0]), abs=1e-6)
    heads = predictor.predict_heads("hypernym", spec, k=3)
    assert heads.direction == "head" and len(heads.results) == 3


def test_added_entities_become_candidates(predictor):
    fresh = Predictor(predictor.model, predictor.tokenizer, predictor.config, predictor.kg, "cpu",
                      index=EntityIndex(np.array(predictor.index.vectors), predictor.index.ids))
    kg = fresh.kg
    new = {"id": "X1", "name": "wolf e2", "description": kg.entity_descriptions[2]}
    assert fresh.add_entities([new]) == ["X1"]
    pred = fresh.predict_tails(kg.entity_ids[0], kg.relation_ids[0], k=fresh.num_entities, filter_known=False)
    assert "X1" in [r.id for r in pred.results] and len(pred.results) == kg.num_entities + 1
    unseen = {"name": new["name"], "description": new["description"]}
    assert fresh.score(kg.entity_ids[0], kg.relation_ids[0], "X1") == pytest.approx(
        fresh.score(kg.entity_ids[0], kg.relation_ids[0], unseen), abs=1e-6)
    assert fresh.search_entities("x1") == [{"id": "X1", "name": "wolf e2"}]


def test_filter_known_reports_what_it_removed(predictor):
    kg = predictor.kg
    h, r, t = (int(x) for x in kg.splits["train"][0])
    known = set(predictor.known_all.tails_of(h, r).tolist())
    unfiltered = predictor.predict_tails(kg.entity_ids[h], kg.relation_ids[r], k=kg.num_entities, filter_known=False)
    assert unfiltered.num_filtered == 0 and len(unfiltered.results) == kg.num_entities
    k = 5
    filtered = predictor.predict_tails(kg.entity_ids[h], kg.relation_ids[r], k=k)
    known_ids = {kg.entity_ids[e] for e in known}
    assert filtered.num_filtered == len(known)
    assert not known_ids & {x.id for x in filtered.results}
    expected = [x.id for x in unfiltered.results if x.id not in known_ids][:k]
    assert [x.id for x in filtered.results] == expected
    cutoff = filtered.results[-1].score
    assert {f.id for f in filtered.filtered} == {x.id for x in unfiltered.results if x.id in known_ids and
                                                 x.score >= cutoff}
    train_tail = kg.entity_ids[t]
    for f in filtered.filtered:
        assert f.splits and set(f.splits) <= {"train", "valid", "test"}
        if f.id == train_tail:
            assert "train" in f.splits


# ---------------------------------------------------------------------------------------------------- index
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


# ---------------------------------------------------------------------------------------------------- export
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


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_predict_single_json_and_table(run_dir, predictor, capsys):
    assert main(["predict", "--model", str(run_dir), "--head", "E0", "--relation", "hypernym", "-k", "3",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == predictor.predict_tails("E0", "hypernym", k=3).to_dict()
    assert main(["predict", "--model", str(run_dir), "--relation", "hypernym", "--tail", "E1", "-k", "2"]) == 0
    table = capsys.readouterr().out
    assert "? --[hypernym]--> (E1:" in table and "rank" in table
    assert main(["predict", "--model", str(run_dir), "--head", '{"name": "dog", "description": "pet"}',
                 "--relation", "hypernym", "--tail", "E1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == pytest.approx(
        predictor.score({"name": "dog", "description": "pet"}, "hypernym", "E1"), abs=1e-6)


def test_cli_predict_batch_and_errors(run_dir, tmp_path, capsys):
    tsv = tmp_path / "q.tsv"
    tsv.write_text("E0\thypernym\n# comment\n?\thas part\tE3\n", encoding="utf-8")
    assert main(["predict", "--model", str(run_dir), "--queries", str(tsv), "-k", "2", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["direction"] for x in lines] == ["tail", "head"] and all(len(x["results"]) == 2 for x in lines)
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text('{"head": "E0", "relation": "hypernym"}\n\n{"head": "nobody", "relation": "hypernym"}\n')
    assert main(["predict", "--model", str(run_dir), "--queries", str(jsonl)]) == 2
    assert f"{jsonl}:3: head: unknown entity 'nobody'" in capsys.readouterr().err
    bad = tmp_path / "bad.tsv"
    bad.write_text("E0\n")
    assert main(["predict", "--model", str(run_dir), "--queries", str(bad)]) == 2
    assert f"{bad}:1: expected head<TAB>relation" in capsys.readouterr().err
    assert main(["predict", "--model", str(run_dir), "--head", "E0"]) == 2
    assert "give --relation" in capsys.readouterr().err
    assert main(["predict", "--model", str(run_dir), "--head", "{oops", "--relation", "hypernym"]) == 2
    assert "--head: not valid JSON" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path), "--head", "E0", "--relation", "hypernym"]) == 2
    assert "no model here" in capsys.readouterr().err


def test_cli_export(run_dir, tmp_path, capsys):
    assert main(["export", "--model", str(run_dir), "--format", "hf", "--output", str(tmp_path / "e")]) == 0
    assert "exported (hf)" in capsys.readouterr().out
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    assert main(["export", "--model", str(run_dir), "--output", str(tmp_path / "busy")]) == 2
    assert "not empty" in capsys.readouterr().err
