"""``kgdistill export --format sentence-transformers``: the query and entity encoders as sentence-transformers folders that
``SentenceTransformer`` loads and that give our own vectors, the query as a (head text, relation text) pair."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import train_tiny

st = pytest.importorskip("sentence_transformers")

from kgdistill.cli import main  # noqa: E402
from kgdistill.jobs.st_export import our_vectors, sample_texts  # noqa: E402
from kgdistill.store.context import DataContext  # noqa: E402
from kgdistill.store.saved import load_model, model_config  # noqa: E402


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_sentence_transformers_reproduces_both_encoders(tiny_plm, tiny_kg, cache_dir, tmp_path, pooling):
    run = train_tiny(tmp_path / "run", tiny_kg, tiny_plm, model__pooling=pooling)
    out = tmp_path / "st"
    assert main(["export", "--format", "sentence-transformers", "--model", str(run), "--output", str(out)]) == 0
    for which in ("query", "entity"):
        modules = json.loads((out / which / "modules.json").read_text())
        assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Normalize"]
        assert json.loads((out / which / "1_Pooling" / "config.json").read_text())[
            f"pooling_mode_{'mean_tokens' if pooling == 'mean' else 'cls_token'}"]
    meta = json.loads((out / "st_export.json").read_text())
    assert all(meta["verification"][w]["within_1e-5"] for w in ("query", "entity"))
    assert "[CLS] head [SEP] relation [SEP]" in (out / "README.md").read_text()

    # independently of the export's own check: load the folders and compare with BiEncoder.encode_* on real inputs
    model, tokenizer, folder = load_model(run)
    data = DataContext(model_config(folder), tokenizer)
    inputs = sample_texts(data)
    assert len(inputs["query"]) > 10 and any(q[1].startswith("inverse ") for q in inputs["query"])
    for which in ("query", "entity"):
        loaded = st.SentenceTransformer(str(out / which), device="cpu")
        given = [list(x) for x in inputs[which]] if which == "query" else inputs[which]
        got = loaded.encode(given, batch_size=7, convert_to_numpy=True)  # mixed lengths within a batch: padding
        ours = our_vectors(model.eval(), data, which, inputs[which])
        np.testing.assert_allclose(got, ours, atol=1e-5, rtol=0)
    # the pair is what matters: head and relation joined into one string is another input
    query = st.SentenceTransformer(str(out / "query"), device="cpu")
    head, relation = inputs["query"][0]
    paired, joined = query.encode([[head, relation], f"{head} {relation}"], convert_to_numpy=True)
    assert np.abs(paired - joined).max() > 1e-4  # far above the 1e-5 agreement


def test_export_st_refuses_a_folder_that_is_not_its_own(tiny_plm, tiny_kg, cache_dir, tmp_path, capsys):
    run = train_tiny(tmp_path / "run", tiny_kg, tiny_plm)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert main(["export", "--format", "sentence-transformers", "--model", str(run), "--output", str(taken)]) == 2
    assert "neither an empty folder nor a previous sentence-transformers export" in capsys.readouterr().err
    assert main(["export", "--format", "sentence-transformers", "--model", str(tmp_path / "nothing"), "--output", str(tmp_path / "o")]) == 2
