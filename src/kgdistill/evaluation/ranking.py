"""Filtered link-prediction ranking over all entities, both directions, with optional graph re-ranking (method.md 1.8)."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import EvalConfig
from ..data.batching import ExampleSet, KnownTails, TokenStore, Tokenized, entity_token_store, pad_store_rows
from ..data.dataset import SPLITS, KnowledgeGraph
from ..data.text import TextBuilder, with_inverses
from ..io import atomic_write_json
from .metrics import rank_metrics

METRIC_KEYS = ("mr", "mrr", "hits@1", "hits@3", "hits@10")


def autocast(device: torch.device, precision: str):
    """bf16 autocast where asked for (or 'auto' and supported), a no-op otherwise."""
    use_bf16 = precision == "bf16" or (precision == "auto" and (device.type == "cpu" or torch.cuda.is_bf16_supported()))
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)


@torch.no_grad()
def encode_store(encode, store: TokenStore, tokenized: Tokenized, device: torch.device, batch_size: int,
                 precision: str = "auto", desc: str | None = None) -> torch.Tensor:
    """Encode every sequence of a token store, shortest first so that batches carry little padding."""
    order = np.argsort(store.lengths(), kind="stable")
    out = None
    bar = tqdm(total=len(order), desc=desc, unit="seq", disable=desc is None, leave=False)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        with autocast(device, precision):
            vectors = encode(pad_store_rows(store, rows, tokenized).to(device)).vectors
        if out is None:
            out = torch.empty(len(order), vectors.shape[1], dtype=torch.float32, device=device)
        out[torch.as_tensor(rows, device=device)] = vectors.float()
        bar.update(len(rows))
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

    def bonus(self, heads: np.ndarray) -> torch.Tensor:
        """(len(heads), n) boolean 'within n hops' matrix (the head itself included)."""
        import scipy.sparse as sp

        n = self.adjacency.shape[0]
        count = len(heads)
        reach = sp.csr_matrix((np.ones(count, dtype=np.float32), (np.arange(count), np.asarray(heads))),
                              shape=(count, n))
        for _ in range(self.hops):
            reach = reach + reach @ self.adjacency
            reach.data[:] = 1.0  # membership only; keeps values from growing
        sizes = np.diff(reach.indptr)
        coo = reach.tocoo()
        keep = sizes[coo.row] <= self.max_nodes  # SimKGC treats an over-large neighbourhood as empty
        dense = torch.zeros(count, n, dtype=torch.bool)
        dense[torch.as_tensor(coo.row[keep], dtype=torch.long), torch.as_tensor(coo.col[keep], dtype=torch.long)] = True
        return dense


def ranks_from_scores(scores: torch.Tensor, gold: torch.Tensor, filter_rows: torch.Tensor, filter_cols: torch.Tensor,
                      tie_policy: str) -> torch.Tensor:
    """Filtered ranks: other known answers are removed (-inf), then rank = 1 + #better (+ ties per policy)."""
    scores = scores.clone()
    gold_scores = scores[torch.arange(len(gold)), gold].clone()
    scores[filter_rows, filter_cols] = float("-inf")
    scores[torch.arange(len(gold)), gold] = gold_scores
    better = (scores > gold_scores[:, None]).sum(1)
    ties = (scores == gold_scores[:, None]).sum(1) - 1
    if tie_policy == "optimistic":
        return (better + 1).double()
    if tie_policy == "pessimistic":
        return (better + ties + 1).double()
    return better.double() + 1 + ties.double() / 2


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
    """Encodes every entity once, then ranks queries in chunks so memory stays bounded by ``query_chunk x |E|``."""

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

    @torch.no_grad()
    def evaluate(self, model, split: str | None = None, progress: bool = True,
                 entity_vectors: torch.Tensor | None = None) -> EvaluationResult:
        split = split or self.config.split
        model.eval()
        triples = self.kg.splits[split]
        if self.config.max_queries is not None:
            triples = triples[: self.config.max_queries]
        t0 = time.perf_counter()
        entities = self.encode_entities(model, progress) if entity_vectors is None else entity_vectors.to(self.device)
        t1 = time.perf_counter()
        queries = with_inverses(triples, self.kg.num_relations)
        examples = ExampleSet(queries, self.texts, self.tokenized, f"{self.kg.name}-{split}-eval", training=False)
        query_vectors = encode_store(model.encode_queries, examples.hr_tokens, self.tokenized, self.device,
                                     self.config.batch_size, self.precision,
                                     "queries" if progress else None)[torch.as_tensor(examples.hr_index)]
        t2 = time.perf_counter()
        variants = {"no_rerank": None}
        if self.reranker is not None:
            variants["rerank"] = self.reranker
        ranks = {name: np.zeros(len(queries)) for name in variants}
        predictions = [] if self.config.dump_predictions else None
        chunk = self.config.query_chunk
        for start in tqdm(range(0, len(queries), chunk), desc="ranking", disable=not progress, leave=False):
            q = queries[start:start + chunk]
            base = query_vectors[start:start + chunk] @ entities.T
            rows, cols = [], []
            for i, (h, r, _) in enumerate(q):
                tails = self.known_all.tails_of(int(h), int(r))
                rows.append(np.full(len(tails), i))
                cols.append(tails)
            filter_rows = torch.as_tensor(np.concatenate(rows), device=base.device)
            filter_cols = torch.as_tensor(np.concatenate(cols), device=base.device)
            gold = torch.as_tensor(q[:, 2], device=base.device)
            for name, reranker in variants.items():
                scores = base
                if reranker is not None:
                    scores = base + reranker.weight * reranker.bonus(q[:, 0]).to(base.device, base.dtype)
                ranks[name][start:start + len(q)] = ranks_from_scores(
                    scores, gold, filter_rows, filter_cols, self.config.tie_policy).cpu().numpy()
                if predictions is not None and name == "no_rerank":
                    predictions.extend(self._dump(q, scores, filter_rows, filter_cols, ranks[name][start:start + len(q)]))
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

    def _dump(self, q, scores, filter_rows, filter_cols, ranks, k: int = 10) -> list[dict]:
        masked = scores.clone()
        masked[filter_rows, filter_cols] = float("-inf")
        masked[torch.arange(len(q)), torch.as_tensor(q[:, 2])] = scores[torch.arange(len(q)), torch.as_tensor(q[:, 2])]
        top = masked.topk(k, dim=1)
        ids = self.kg.entity_ids
        out = []
        for i, (h, r, t) in enumerate(q):
            out.append({"head": ids[h], "relation": self.texts.relation_text(int(r)), "gold": ids[t],
                        "rank": float(ranks[i]),
                        "top": [{"id": ids[j], "score": round(float(s), 5)}
                                for j, s in zip(top.indices[i].tolist(), top.values[i].tolist())]})
        return out


def write_metrics(result: EvaluationResult, folder: str | Path, name: str = "metrics.json") -> Path:
    folder = Path(folder)
    path = folder / name
    atomic_write_json(path, {**result.metrics, "seconds": result.seconds})
    if result.predictions is not None:
        from ..io import atomic_write_text

        atomic_write_text(folder / "predictions.jsonl", "".join(json.dumps(p) + "\n" for p in result.predictions))
    return path
