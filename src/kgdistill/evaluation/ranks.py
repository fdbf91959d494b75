"""Filtered ranks from scores, shared by in-memory, streaming and single-query ranking: counts above and tied with
the gold answer, tie policies, known answers filtered out, and SimKGC's graph re-ranking bonus
(docs/METHOD.md, "Evaluation")."""
from __future__ import annotations

import numpy as np
import torch

from ..data.batching import KnownTails
from ..data.dataset import KnowledgeGraph

class NeighborhoodReranker:
    """Adds ``weight`` to every entity within ``hops`` of the query head in the undirected training graph.

    Neighbourhoods are grown with sparse x sparse products (SciPy CSR), so the cost follows the nodes reached,
    not the entity count.
    """

    def __init__(self, kg: KnowledgeGraph, hops: int, weight: float, max_nodes: int = 100_000):
        import scipy.sparse as sp

        self.hops, self.weight, self.max_nodes = hops, weight, max_nodes
        train = kg.splits["train"]
        n = kg.num_entities
        rows = np.concatenate([train[:, 0], train[:, 2]])
        cols = np.concatenate([train[:, 2], train[:, 0]])
        self.adjacency = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n, n))
        self.adjacency.data[:] = 1.0

    def reach(self, heads: np.ndarray):
        """Sparse (len(heads), n) 'within n hops' membership (the head itself included); SciPy CSR."""
        import scipy.sparse as sp

        n = self.adjacency.shape[0]
        count = len(heads)
        reach = sp.csr_matrix((np.ones(count, dtype=np.float32), (np.arange(count), np.asarray(heads))),
                              shape=(count, n))
        for _ in range(self.hops):
            reach = reach + reach @ self.adjacency
            reach.data[:] = 1.0  # membership only; keeps values from growing
        too_large = np.diff(reach.indptr) > self.max_nodes  # SimKGC treats an over-large neighbourhood as empty
        return (sp.diags((~too_large).astype(np.float32)) @ reach).tocsr()

    @staticmethod
    def columns(reach, start: int, stop: int) -> torch.Tensor:
        """Dense boolean block of entity columns [start, stop) of :meth:`reach`, so streaming never densifies |E|."""
        block = reach[:, start:stop].tocoo()
        keep = block.data > 0
        dense = torch.zeros(reach.shape[0], stop - start, dtype=torch.bool)
        dense[torch.as_tensor(block.row[keep], dtype=torch.long),
              torch.as_tensor(block.col[keep], dtype=torch.long)] = True
        return dense

    def bonus(self, heads: np.ndarray) -> torch.Tensor:
        """(len(heads), n) boolean 'within n hops' matrix (the head itself included)."""
        return self.columns(self.reach(heads), 0, self.adjacency.shape[0])


def add_bonus_(scores: torch.Tensor, near: torch.Tensor, weight: float) -> torch.Tensor:
    """Graph re-ranking in place: ``+ weight`` where ``near``; one operation for every path, so rounding agrees."""
    return scores.add_(near.to(scores.device), alpha=weight)


def count_above(scores: torch.Tensor, gold_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, entries strictly above and equal to the gold score; the caller has set the gold's own entry and the
    filtered ones to -inf, so the counts add up over column blocks (shards).

    A few rows at a time: summing a whole (rows, n) comparison materialises it as integers, 4-8 times the size of
    the score block itself.
    """
    better = torch.empty(len(scores), dtype=torch.long, device=scores.device)
    ties = torch.empty_like(better)
    step = max(1, (1 << 22) // max(1, scores.shape[1]))
    for start in range(0, len(scores), step):
        block, gold = scores[start:start + step], gold_scores[start:start + step, None]
        better[start:start + step] = (block > gold).sum(1, dtype=torch.int32)
        ties[start:start + step] = (block == gold).sum(1, dtype=torch.int32)
    return better, ties


def ranks_from_counts(better: torch.Tensor, ties: torch.Tensor, tie_policy: str) -> torch.Tensor:
    """rank = 1 + #better, plus none (optimistic), all (pessimistic) or half (realistic) of the ties."""
    if tie_policy == "optimistic":
        return (better + 1).double()
    if tie_policy == "pessimistic":
        return (better + ties + 1).double()
    return better.double() + 1 + ties.double() / 2


def ranks_from_scores(scores: torch.Tensor, gold: torch.Tensor, filter_rows: torch.Tensor, filter_cols: torch.Tensor,
                      tie_policy: str) -> torch.Tensor:
    """Filtered ranks: other known answers are removed (-inf), then rank = 1 + #better (+ ties per policy)."""
    rows = torch.arange(len(gold), device=scores.device)
    gold_scores = scores[rows, gold]
    masked = scores.clone()
    masked[filter_rows, filter_cols] = float("-inf")
    masked[rows, gold] = float("-inf")  # the gold is neither better than nor tied with itself
    return ranks_from_counts(*count_above(masked, gold_scores), tie_policy)


def filtered_topk(scores: torch.Tensor, gold: torch.Tensor, filter_rows: torch.Tensor, filter_cols: torch.Tensor,
                  k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k candidates with the other known answers removed and the gold kept (prediction dumps)."""
    rows = torch.arange(len(gold), device=scores.device)
    masked = scores.clone()
    masked[filter_rows, filter_cols] = float("-inf")
    masked[rows, gold] = scores[rows, gold]
    top = masked.topk(min(k, scores.shape[1]), dim=1)
    return top.values, top.indices


def known_answer_pairs(known: KnownTails, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row in chunk, entity) of every known answer of every query of a chunk: what filtering removes."""
    tails = [known.tails_of(int(h), int(r)) for h, r, _ in queries]
    rows = np.repeat(np.arange(len(queries)), [len(t) for t in tails])
    return rows, np.concatenate(tails) if tails else np.zeros(0, dtype=np.int64)


def rank_in_memory(entities: torch.Tensor, query_vectors: torch.Tensor, queries: np.ndarray, filter_rows: np.ndarray,
                   filter_cols: np.ndarray, tie_policy: str, reranker: NeighborhoodReranker | None = None,
                   top_k: int = 0) -> tuple[dict[str, np.ndarray], tuple[torch.Tensor, torch.Tensor] | None]:
    """Ranks of one query chunk against all entities at once (without and with re-ranking), and the filtered top-k."""
    base = query_vectors @ entities.T
    rows = torch.as_tensor(filter_rows, device=base.device)
    cols = torch.as_tensor(filter_cols, device=base.device)
    gold = torch.as_tensor(queries[:, 2], device=base.device)
    ranks = {"no_rerank": ranks_from_scores(base, gold, rows, cols, tie_policy).cpu().numpy()}
    if reranker is not None:
        scores = add_bonus_(base.clone(), reranker.bonus(queries[:, 0]), reranker.weight)
        ranks["rerank"] = ranks_from_scores(scores, gold, rows, cols, tie_policy).cpu().numpy()
    return ranks, (filtered_topk(base, gold, rows, cols, top_k) if top_k else None)
