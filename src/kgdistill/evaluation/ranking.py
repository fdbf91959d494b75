"""Filtered link-prediction ranking over all entities, both directions, with optional graph re-ranking
(docs/METHOD.md, "Evaluation"): the :class:`Evaluator` and its :class:`EvaluationResult`."""
from __future__ import annotations

import io
import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..runfolder import RunFolder
from ..config import EvalConfig
from ..data.batching import ExampleSet, KnownTails, TokenStore, Tokenized, entity_token_store, pad_store_rows
from ..data.dataset import SPLITS, KnowledgeGraph
from ..data.text import TextBuilder, with_inverses
from ..results import Result
from ..runtime import autocast, resolve_precision
from .metrics import rank_metrics
from .ranks import NeighborhoodReranker, known_answer_pairs, rank_in_memory
from .streaming import EntityShards, rank_streaming, write_entity_shards

METRIC_KEYS = ("mr", "mrr", "hits@1", "hits@3", "hits@10")
# What makes two evaluations comparable: the same split and triples, candidates, filter, tie policy, re-ranking and
# encoding precision (bf16 and fp32 vectors rank a few queries differently).
EVALUATION_KEYS = ("split", "num_triples", "num_entities", "filter", "tie_policy", "rerank_config",
                   "dataset_fingerprint", "precision")
# Absent from metrics.json files written before the precision was recorded: compared only where both record it.
LATER_KEYS = ("precision",)


def evaluation_mismatch(reference: dict, other: dict, keys: tuple[str, ...] = EVALUATION_KEYS) -> str | None:
    """The first of ``keys`` (default :data:`EVALUATION_KEYS`) on which two evaluations (``metrics.json`` contents)
    differ, else None."""
    return next((key for key in keys if other.get(key) != reference.get(key)
                 and not (key in LATER_KEYS and None in (other.get(key), reference.get(key)))), None)


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


@dataclass
class EvaluationResult(Result):
    """Filtered-ranking metrics of one split (``metrics``: per variant and direction), timings, every query's rank
    per variant (forward queries, then backward: what ``kgdistill compare`` pairs up) and, with
    ``eval.dump_predictions``, every query's top 10."""

    metrics: dict
    seconds: dict = field(default_factory=dict)
    predictions: list | None = None
    ranks: dict[str, np.ndarray] | None = None

    def to_dict(self) -> dict:
        """What ``metrics.json`` holds: the metrics and the timings."""
        return {**self.metrics, "seconds": self.seconds}

    def to_df(self, by_relation: bool = False):
        """The metrics as a pandas DataFrame (needs pandas): a row per variant and direction; ``by_relation``: a row
        per relation text (inverse ones apart, no re-ranking), from the predictions dumped with
        ``eval.dump_predictions``."""
        import pandas as pd

        if not by_relation:
            return pd.DataFrame([{"split": self.metrics["split"], "variant": variant, "direction": direction,
                                  **self.metrics[variant][direction]}
                                 for variant in ("no_rerank", "rerank") if variant in self.metrics
                                 for direction in ("forward", "backward", "both")])
        if self.predictions is None:
            from ..errors import KGDistillError

            raise KGDistillError("per-relation metrics need the predictions: evaluate with eval.dump_predictions=true")
        ranks: dict[str, list[float]] = {}
        for p in self.predictions:
            ranks.setdefault(p["relation"], []).append(p["rank"])
        return pd.DataFrame([{"split": self.metrics["split"], "relation": relation, "queries": len(r),
                              **rank_metrics(np.asarray(r))} for relation, r in ranks.items()])

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

    def save(self, folder: str | Path) -> Path:
        """``metrics.json``, ``ranks.npz`` (per-query ranks) and ``predictions.jsonl`` when the predictions were
        dumped."""
        folder = Path(folder)
        if self.ranks is not None:
            buffer = io.BytesIO()
            np.savez(buffer, **{name: np.asarray(r, dtype=np.float64) for name, r in self.ranks.items()})
            RunFolder(folder).write_bytes(RunFolder.RANKS, buffer.getvalue())
        RunFolder(folder).write_json(RunFolder.METRICS, self.to_dict())
        if self.predictions is not None:
            RunFolder(folder).write_text(RunFolder.PREDICTIONS, "".join(json.dumps(p) + "\n" for p in self.predictions))
        return folder


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
        """Token ids of every entity's evaluation text (built once)."""
        if self._entity_store is None:
            self._entity_store = entity_token_store(self.texts, self.tokenized, self.kg.name)
        return self._entity_store

    @torch.no_grad()
    def encode_entities(self, model, progress: bool = True) -> torch.Tensor:
        """Every entity's vector, in entity order, as the evaluation ranks them."""
        return encode_store(model.encode_entities, self.entity_store(), self.tokenized, self.device,
                            self.config.batch_size, self.precision, "entities" if progress else None)

    @contextmanager
    def entity_shards(self, model, entity_vectors: torch.Tensor | None = None,
                      progress: bool = True) -> Iterator[EntityShards]:
        """Entity vectors as fp16 shards on disk, encoded one shard's row range at a time so that only one shard is
        ever held in memory; in ``eval.shards_dir`` (kept) or a temporary folder (removed on exit)."""
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
        split = split or self.config.split
        model.eval()
        packing, model.packing = getattr(model, "packing", False), False  # padded, as a saved model is evaluated
        try:
            return self._evaluate(model, split, progress, entity_vectors)
        finally:
            model.packing = packing

    def _evaluate(self, model, split: str, progress: bool, entity_vectors: torch.Tensor | None) -> EvaluationResult:
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
                   "tie_policy": self.config.tie_policy, "filter": "train+valid+test",
                   "dataset_fingerprint": self.kg.fingerprint,
                   "precision": resolve_precision(self.precision, self.device)}
        for name in variants:
            r = ranks[name]
            metrics[name] = {"forward": rank_metrics(r[:n]), "backward": rank_metrics(r[n:])}
            metrics[name]["both"] = {k: (metrics[name]["forward"][k] + metrics[name]["backward"][k]) / 2
                                     for k in METRIC_KEYS}
        if self.reranker is not None:
            metrics["rerank_config"] = {"weight": self.reranker.weight, "hops": self.reranker.hops}
        seconds = {"encode_entities": t1 - t0, "encode_queries": t2 - t1, "rank": t3 - t2, "total": t3 - t0}
        return EvaluationResult(metrics, seconds, predictions, ranks)

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
