"""An outside oracle for our metrics: PyKEEN's rank-based evaluator, fed the same scores, gives the same MR, MRR and
Hits@k for every tie policy, on random scores full of ties and on a real evaluation of a tiny model.

PyKEEN's conventions, which ours must match: filtered candidates are NaN (never counted), the gold answer stays among
the candidates, optimistic rank = 1 + #better, pessimistic = #(better or tied, the gold included), realistic = their
mean. Ours (``evaluation.ranks``) removes the gold and every known answer, then adds none, all or half of the ties.
Forward queries are PyKEEN's tail side, inverse (head-prediction) queries its head side."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("pykeen")
from pykeen.evaluation import RankBasedEvaluator  # noqa: E402

import kgdistill.evaluation.ranking as ranking  # noqa: E402
from kgdistill.evaluation.metrics import rank_metrics  # noqa: E402
from kgdistill.evaluation.ranks import ranks_from_scores  # noqa: E402
from kgdistill.store.context import DataContext  # noqa: E402
from kgdistill.models.builder import build_model  # noqa: E402

POLICIES = ("optimistic", "realistic", "pessimistic")
PYKEEN_NAMES = {"mr": "arithmetic_mean_rank", "mrr": "inverse_harmonic_mean_rank", "hits@1": "hits_at_1",
                "hits@3": "hits_at_3", "hits@10": "hits_at_10"}


def pykeen_metrics(scores: torch.Tensor, gold: torch.Tensor, filter_rows, filter_cols, forward: int) -> dict:
    """PyKEEN's metrics per side and policy; the first ``forward`` rows are tail predictions, the rest head ones."""
    rows = torch.arange(len(gold))
    filtered = scores.clone().double()
    keep = filter_cols != gold[filter_rows]  # PyKEEN keeps the gold among the candidates
    filtered[filter_rows[keep], filter_cols[keep]] = float("nan")
    true = scores.double()[rows, gold][:, None]
    evaluator = RankBasedEvaluator(filtered=True)
    hrt = torch.zeros(len(gold), 3, dtype=torch.long)
    for target, part in (("tail", slice(0, forward)), ("head", slice(forward, None))):
        evaluator.process_scores_(hrt[part], target, filtered[part], true[part])
    result = evaluator.finalize()
    return {(side, policy): {ours: result.get_metric(f"{side}.{policy}.{theirs}")
                             for ours, theirs in PYKEEN_NAMES.items()}
            for side in ("tail", "head", "both") for policy in POLICIES}


def ours_by_side(ranks: np.ndarray, forward: int) -> dict:
    """Our metrics as the evaluator reports them: forward, backward, and both as their mean."""
    out = {"tail": rank_metrics(ranks[:forward]), "head": rank_metrics(ranks[forward:])}
    out["both"] = {k: (out["tail"][k] + out["head"][k]) / 2 for k in out["tail"]}
    return out


def assert_same(ours: dict, theirs: dict) -> None:
    for key, value in ours.items():
        assert value == pytest.approx(theirs[key], rel=1e-6, abs=1e-7), key


def test_random_scores_with_many_ties_rank_as_in_pykeen():
    rng = np.random.default_rng(0)
    queries, entities = 400, 30
    scores = torch.as_tensor(rng.integers(0, 6, size=(queries, entities)), dtype=torch.float32)  # ties everywhere
    gold = torch.as_tensor(rng.integers(0, entities, size=queries))
    known = rng.random((queries, entities)) < 0.2
    known[np.arange(queries), gold.numpy()] = True  # the gold is a known answer too, as in a filtered evaluation
    filter_rows, filter_cols = (torch.as_tensor(a) for a in np.nonzero(known))
    theirs = pykeen_metrics(scores, gold, filter_rows, filter_cols, forward=queries // 2)
    ranks = {policy: ranks_from_scores(scores, gold, filter_rows, filter_cols, policy).numpy() for policy in POLICIES}
    assert ranks["optimistic"].mean() + 1 < ranks["pessimistic"].mean(), "the scores must tie"
    for policy in POLICIES:
        for side, ours in ours_by_side(ranks[policy], queries // 2).items():
            assert_same(ours, theirs[side, policy])


def test_a_real_evaluation_ranks_as_in_pykeen(tiny_config, monkeypatch):
    config = tiny_config(eval__split="valid")
    model, tokenizer = build_model(config)
    captured = []

    def capture(entities, query_vectors, queries, filter_rows, filter_cols, *args, **kwargs):
        captured.append((query_vectors @ entities.T, queries, filter_rows, filter_cols))
        return rank_in_memory(entities, query_vectors, queries, filter_rows, filter_cols, *args, **kwargs)

    rank_in_memory = ranking.rank_in_memory
    monkeypatch.setattr(ranking, "rank_in_memory", capture)
    evaluator = DataContext(config, tokenizer).evaluator(torch.device("cpu"))
    metrics = {}
    for policy in POLICIES:
        evaluator.config.tie_policy = policy
        captured.clear()
        metrics[policy] = evaluator.evaluate(model, progress=False).metrics["no_rerank"]
    scores = torch.cat([c[0] for c in captured])
    queries = np.concatenate([c[1] for c in captured])
    offsets = np.cumsum([0] + [len(c[1]) for c in captured])
    filter_rows = torch.as_tensor(np.concatenate([c[2] + o for c, o in zip(captured, offsets)]))
    filter_cols = torch.as_tensor(np.concatenate([c[3] for c in captured]))
    forward = len(queries) // 2
    assert forward == len(evaluator.kg.splits["valid"]) > 0
    theirs = pykeen_metrics(scores, torch.as_tensor(queries[:, 2]), filter_rows, filter_cols, forward)
    for policy in POLICIES:
        for side, direction in (("tail", "forward"), ("head", "backward"), ("both", "both")):
            assert_same(metrics[policy][direction], theirs[side, policy])
