"""Golden tests for the ranking protocol: hand-computed ranks, filtering on all splits, ties, re-ranking."""
import numpy as np
import pytest
import torch

from kgdistill.data.dataset import KnowledgeGraph
from kgdistill.evaluation.metrics import rank_metrics
from kgdistill.evaluation.ranks import NeighborhoodReranker, ranks_from_scores


def test_rank_metrics_hand_computed():
    m = rank_metrics(np.array([1, 2, 4, 20]))
    assert m["mr"] == pytest.approx(27 / 4)
    assert m["mrr"] == pytest.approx((1 + 0.5 + 0.25 + 0.05) / 4)
    assert m["hits@1"] == 0.25 and m["hits@3"] == 0.5 and m["hits@10"] == 0.75


def test_filtering_removes_other_answers_but_never_gold():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5]])
    gold = torch.tensor([3])
    # entities 0 and 1 are known answers (e.g. one in train, one in valid): filtered away
    rows, cols = torch.tensor([0, 0, 0]), torch.tensor([0, 1, 3])  # gold listed too: must not be filtered
    assert ranks_from_scores(scores, gold, rows, cols, "realistic").item() == 2.0  # only entity 2 beats it
    assert ranks_from_scores(scores, gold, rows[:0], cols[:0], "realistic").item() == 4.0


def test_tie_policies():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.1]])
    gold = torch.tensor([0])
    empty = torch.tensor([], dtype=torch.long)
    assert ranks_from_scores(scores, gold, empty, empty, "optimistic").item() == 2.0
    assert ranks_from_scores(scores, gold, empty, empty, "pessimistic").item() == 4.0
    assert ranks_from_scores(scores, gold, empty, empty, "realistic").item() == 3.0


def _kg(train):
    ids = [f"e{i}" for i in range(6)]
    return KnowledgeGraph("toy", ids, ids, [""] * 6, ["r"], ["r"],
                          {"train": np.array(train), "valid": np.zeros((0, 3), int), "test": np.zeros((0, 3), int)},
                          "x", "toy")


def test_reranker_hops_include_head_and_stop_at_n():
    kg = _kg([[0, 0, 1], [1, 0, 2], [2, 0, 3], [4, 0, 5]])  # chain 0-1-2-3, separate 4-5
    near = NeighborhoodReranker(kg, hops=2, weight=0.05).bonus(np.array([0]))[0]
    assert near.tolist() == [True, True, True, False, False, False]
    far = NeighborhoodReranker(kg, hops=5, weight=0.05, max_nodes=3).bonus(np.array([0]))[0]
    assert not far.any()  # more than max_nodes reachable: treated as empty (SimKGC)


def test_evaluator_filters_validation_triples(tiny_config):
    """PyKEEN #397: forgetting valid triples in the filter inflates ranks. Known answers in any split are removed."""
    from kgdistill.api import DataContext
    from kgdistill.models.plm import load_tokenizer, resolve_plm

    config = tiny_config()
    data = DataContext(config, load_tokenizer(resolve_plm(config.model.plm)))
    evaluator = data.evaluator(torch.device("cpu"))
    for split in ("train", "valid", "test"):
        for h, r, t in data.kg.splits[split][:5]:
            assert t in evaluator.known_all.tails_of(int(h), int(r))
            assert h in evaluator.known_all.tails_of(int(t), int(r) + data.kg.num_relations)  # inverse
