"""The Predictor (``kgdistill.inference.predictor``): ranks, scores and entity vectors equal the evaluator's,
entities resolve by id or name (an ambiguous name lists its candidates), unseen entities are encoded from their
text, added ones become candidates, and filtered known answers are reported."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from kgdistill.data.batching import pad_store_rows, tokenize
from kgdistill.data.text import join_name_description
from kgdistill.inference.index import EntityIndex
from kgdistill.inference.predictor import (AmbiguousEntityError, Predictor, PredictionError, UnknownEntityError,
                                           UnknownRelationError)


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
