"""Filtered link-prediction ranking over all entities, both directions, with optional graph re-ranking (method.md 1.8)."""
from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import EvalConfig
from ..data.batching import ExampleSet, KnownTails, TokenStore, Tokenized, entity_token_store, pad_store_rows
from ..data.dataset import SPLITS, KnowledgeGraph
from ..data.text import TextBuilder, with_inverses
from ..io import atomic_write_json
from ..runtime import autocast
from .metrics import rank_metrics

if TYPE_CHECKING:
    from .streaming import EntityShards

METRIC_KEYS = ("mr", "mrr", "hits@1", "hits@3", "hits@10")


@torch.no_grad()
def encode_store(encode, store: TokenStore, tokenized: Tokenized, device: torch.device, batch_size: int,
                 precision: str = "auto", desc: str | None = None, rows: np.ndarray | None = None) -> torch.Tensor:
    """Encode ``rows`` of a token store (default: all), shortest first so that batches carry little padding.

    The output follows the order of ``rows``; encoding a contiguous range at a time lets the streaming evaluator
    write entity vectors straight into shards.
    """
    rows = np.arange(len(store)) if rows is None else np.asarray(rows)
    order = np.argsort(store.lengths()[rows], kind="stable")
    out = None
    bar = tqdm(total=len(order), desc=desc, unit="seq", disable=desc is None, leave=False)
    for start in range(0, len(order), batch_size):
        positions = order[start:start + batch_size]
        with autocast(device, precision):
            vectors = encode(pad_store_rows(store, rows[positions], tokenized).to(device)).vectors
        if out is None:
            out = torch.empty(len(order), vectors.shape[1], dtype=torch.float32, device=device)
        out[torch.as_tensor(positions, device=device)] = vectors.float()
        bar.update(len(positions))
    bar.close()
    return out


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


@dataclass
class EvaluationResult:
    metrics: dict
    seconds: dict = field(default_factory=dict)
    predictions: list | None = None

    def table(self) -> str:
        lines = [f"{'':18}{'MR':>9}{'MRR':>8}{'H@1':>8}{'H@3':>8}{'H@10':>8}"]
        for rerank in ("no_rerank", "rerank"):
            if rerank not in self.metrics:
                continue
            for direction in ("forward", "backward", "both"):
                m = self.metrics[rerank][direction]
                lines.append(f"{rerank + ' ' + direction:18}{m['mr']:9.1f}{m['mrr'] * 100:8.2f}{m['hits@1'] * 100:8.2f}"
                             f"{m['hits@3'] * 100:8.2f}{m['hits@10'] * 100:8.2f}")
        return "\n".join(lines)


class Evaluator:
    """Encodes every entity once, then ranks queries in chunks so memory stays bounded by ``query_chunk x |E|``
    (``query_chunk x eval.shard_size`` when streaming from shards on disk)."""

    def __init__(self, kg: KnowledgeGraph, texts: TextBuilder, tokenized: Tokenized, config: EvalConfig,
                 device: torch.device, precision: str = "auto"):
        self.kg, self.texts, self.tokenized, self.config = kg, texts, tokenized, config
        self.device, self.precision = device, precision
        everything = np.concatenate([kg.splits[s] for s in SPLITS])
        self.known_all = KnownTails(with_inverses(everything, kg.num_relations), kg.num_entities, kg.num_relations)
        hops = config.rerank_hops if config.rerank_hops is not None else (5 if kg.name == "wn18rr" else 2)
        self.reranker = (NeighborhoodReranker(kg, hops, config.rerank_weight, config.rerank_max_nodes)
                         if config.rerank_weight > 0 and hops > 0 else None)
        self._entity_store = None

    def entity_store(self) -> TokenStore:
        if self._entity_store is None:
            self._entity_store = entity_token_store(self.texts, self.tokenized, self.kg.name)
        return self._entity_store

    @torch.no_grad()
    def encode_entities(self, model, progress: bool = True) -> torch.Tensor:
        return encode_store(model.encode_entities, self.entity_store(), self.tokenized, self.device,
                            self.config.batch_size, self.precision, "entities" if progress else None)

    @contextmanager
    def entity_shards(self, model, entity_vectors: torch.Tensor | None = None,
                      progress: bool = True) -> Iterator["EntityShards"]:
        """Entity vectors as fp16 shards on disk, encoded one shard's row range at a time so that only one shard is
        ever held in memory; in ``eval.shards_dir`` (kept) or a temporary folder (removed on exit)."""
        from .streaming import write_entity_shards

        count, size = self.kg.num_entities, self.config.shard_size
        if entity_vectors is not None:
            chunks = entity_vectors.split(size)
        else:
            chunks = (encode_store(model.encode_entities, self.entity_store(), self.tokenized, self.device,
                                   self.config.batch_size, self.precision,
                                   f"entities {start // size + 1}/{-(-count // size)}" if progress else None,
                                   rows=np.arange(start, min(start + size, count)))
                      for start in range(0, count, size))
        with ExitStack() as stack:
            folder = self.config.shards_dir or stack.enter_context(
                tempfile.TemporaryDirectory(prefix="kgdistill-entity-shards-"))
            yield write_entity_shards(folder, chunks, count, size)

    @torch.no_grad()
    def evaluate(self, model, split: str | None = None, progress: bool = True,
                 entity_vectors: torch.Tensor | None = None) -> EvaluationResult:
        """Filtered ranks of ``split``; with ``eval.streaming`` entities go to fp16 shards and are streamed."""
        from .streaming import rank_streaming

        split = split or self.config.split
        model.eval()
        triples = self.kg.splits[split]
        if self.config.max_queries is not None:
            triples = triples[: self.config.max_queries]
        with ExitStack() as stack:
            t0 = time.perf_counter()
            if self.config.streaming:
                entities = stack.enter_context(self.entity_shards(model, entity_vectors, progress))
                rank = rank_streaming
            else:
                entities = (self.encode_entities(model, progress) if entity_vectors is None
                            else entity_vectors.to(self.device))
                rank = rank_in_memory
            t1 = time.perf_counter()
            queries = with_inverses(triples, self.kg.num_relations)
            examples = ExampleSet(queries, self.texts, self.tokenized, f"{self.kg.name}-{split}-eval", training=False)
            query_vectors = encode_store(model.encode_queries, examples.hr_tokens, self.tokenized, self.device,
                                         self.config.batch_size, self.precision,
                                         "queries" if progress else None)[torch.as_tensor(examples.hr_index)]
            t2 = time.perf_counter()
            variants = ["no_rerank"] + (["rerank"] if self.reranker is not None else [])
            ranks = {name: np.zeros(len(queries)) for name in variants}
            predictions = [] if self.config.dump_predictions else None
            chunk = self.config.query_chunk
            for start in tqdm(range(0, len(queries), chunk), desc="ranking", disable=not progress, leave=False):
                q = queries[start:start + chunk]
                filter_rows, filter_cols = known_answer_pairs(self.known_all, q)
                chunk_ranks, top = rank(entities, query_vectors[start:start + chunk], q, filter_rows, filter_cols,
                                        self.config.tie_policy, self.reranker, 10 if predictions is not None else 0)
                for name in variants:
                    ranks[name][start:start + len(q)] = chunk_ranks[name]
                if predictions is not None:
                    predictions.extend(self._dump(q, *top, chunk_ranks["no_rerank"]))
            t3 = time.perf_counter()
        n = len(triples)
        metrics = {"split": split, "num_triples": int(n), "num_entities": self.kg.num_entities,
                   "tie_policy": self.config.tie_policy}
        for name in variants:
            r = ranks[name]
            metrics[name] = {"forward": rank_metrics(r[:n]), "backward": rank_metrics(r[n:])}
            metrics[name]["both"] = {k: (metrics[name]["forward"][k] + metrics[name]["backward"][k]) / 2
                                     for k in METRIC_KEYS}
        if self.reranker is not None:
            metrics["rerank_config"] = {"weight": self.reranker.weight, "hops": self.reranker.hops}
        seconds = {"encode_entities": t1 - t0, "encode_queries": t2 - t1, "rank": t3 - t2, "total": t3 - t0}
        return EvaluationResult(metrics, seconds, predictions)

    def _dump(self, q: np.ndarray, top_values: torch.Tensor, top_indices: torch.Tensor,
              ranks: np.ndarray) -> list[dict]:
        ids = self.kg.entity_ids
        out = []
        for i, (h, r, t) in enumerate(q):
            out.append({"head": ids[h], "relation": self.texts.relation_text(int(r)), "gold": ids[t],
                        "rank": float(ranks[i]),
                        "top": [{"id": ids[j], "score": round(float(s), 5)}
                                for j, s in zip(top_indices[i].tolist(), top_values[i].tolist())]})
        return out


def write_metrics(result: EvaluationResult, folder: str | Path, name: str = "metrics.json") -> Path:
    folder = Path(folder)
    path = folder / name
    atomic_write_json(path, {**result.metrics, "seconds": result.seconds})
    if result.predictions is not None:
        from ..io import atomic_write_text

        atomic_write_text(folder / "predictions.jsonl", "".join(json.dumps(p) + "\n" for p in result.predictions))
    return path
