"""Use a trained model: tail and head prediction, triple scores, unseen entities.

Scores are the evaluator's: queries are tokenised exactly as :class:`~kgdistill.data.batching.ExampleSet` does in
evaluation mode (the head's evaluation text with its training neighbours, paired with the relation text), and the
candidates are the vectors of every entity's evaluation text (``entity_token_store``), kept in an
:class:`~kgdistill.inference.index.EntityIndex`. Head prediction is tail prediction on the inverse relation
(index ``r + num_relations``, text ``'inverse ' + text``), as in evaluation. With ``filter_known`` every answer already
known from the training, validation or test triples is removed from the ranking, as the filtered evaluation does;
the result says which were removed.

Entities are given by id, by name (an ambiguous name is an error listing the candidate ids) or as
``{"name": ..., "description": ...}`` for an entity the model has never seen (its text is built with the same
``name: description`` rule, without neighbours).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import RunConfig
from ..data.batching import KnownTails, entity_token_store, tokenize, tokenizer_key
from ..data.dataset import SPLITS, KnowledgeGraph
from ..data.loading import load_dataset
from ..data.text import with_inverses
from ..errors import CheckpointError, KGDistillError
from ..evaluation.ranking import encode_store
from ..evaluation.ranks import ranks_from_scores
from ..store.context import DataContext
from ..store.saved import model_config, resolve_model_dir
from ..models.biencoder import BiEncoder, load_model_tokenizer
from ..runtime import pick_device, resolve_precision
from .backends import load_backend, read_export_meta
from .index import FAISS_KINDS, EntityIndex, IndexStore, default_index_location
from .vocabulary import (AmbiguousEntityError, Entity, EntityVocabulary, PredictionError, UnknownEntityError,
                         UnknownRelationError)

__all__ = ["AmbiguousEntityError", "Entity", "Prediction", "PredictionError", "Predictor", "ResolvedQuery",
           "ScoredEntity", "UnknownEntityError", "UnknownRelationError"]

log = logging.getLogger("kgdistill")

MAX_K = 100_000


@dataclass
class ScoredEntity:
    """One answer of a prediction: entity id, name and score, with its rank (results) or splits (filtered ones)."""

    id: str
    name: str
    score: float
    rank: int | None = None  # position among the unfiltered results (1 = best)
    splits: list[str] | None = None  # for filtered answers: where the triple is known from

    def to_dict(self) -> dict:
        """The fields that are set, as JSON-ready data."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class ResolvedQuery:
    """A resolved query (see :meth:`Predictor.resolve_query`): resolution errors are raised before any model call,
    so a batch of resolved queries (:meth:`Predictor.predict_resolved`) cannot fail because of one bad request."""

    entity: Entity
    relation: int  # head prediction is already tail prediction on the inverse relation
    direction: str  # 'tail' (head, relation, ?) or 'head' (?, relation, tail)
    k: int = 10
    filter_known: bool = True
    keep: frozenset[int] = frozenset()  # rows never filtered (e.g. the gold answer)


@dataclass
class Prediction:
    """Top-k answers of one query, and the known answers that ``filter_known`` removed from them."""

    direction: str  # 'tail' (head, relation, ?) or 'head' (?, relation, tail)
    entity: dict  # the given entity: {id, name} or {name, text} when unseen
    relation: str  # relation text as the model reads it (forward text; inverse text is 'inverse ' + text)
    relation_id: str
    results: list[ScoredEntity]
    filtered: list[ScoredEntity] = field(default_factory=list)  # known answers ranked among the results (<= k)
    num_filtered: int = 0  # every known answer of the query, removed from the ranking

    def to_dict(self) -> dict:
        """The prediction as JSON-ready data (what ``kgdistill predict --json`` and the HTTP service return)."""
        return {"direction": self.direction, "entity": self.entity, "relation": self.relation,
                "relation_id": self.relation_id, "results": [r.to_dict() for r in self.results],
                "filtered": [r.to_dict() for r in self.filtered], "num_filtered": self.num_filtered}

    def to_df(self):
        """The answers as a pandas DataFrame, best first (needs pandas): the results, then the known answers that
        ``filter_known`` set aside (``filtered`` True, no rank)."""
        import pandas as pd

        rows = [{**asdict(r), "filtered": False} for r in self.results]
        rows += [{**asdict(r), "filtered": True} for r in self.filtered]
        return pd.DataFrame(rows, columns=["rank", "id", "name", "score", "filtered", "splits"])

    def table(self) -> str:
        """The prediction as a readable table, best first, with a line on the filtered known answers."""
        who = self.entity.get("id") or self.entity.get("name")
        name = self.entity.get("name", "")
        arrow = (f"({who}: {name}) --[{self.relation}]--> ?" if self.direction == "tail"
                 else f"? --[{self.relation}]--> ({who}: {name})")
        id_width = max([len("id")] + [len(r.id) for r in self.results])
        lines = [arrow, f"{'rank':>5}  {'score':>8}  {'id':<{id_width}}  name"]
        lines += [f"{r.rank:>5}  {r.score:8.4f}  {r.id:<{id_width}}  {r.name}" for r in self.results]
        if self.num_filtered:
            shown = ", ".join(f"{f.id} ({'/'.join(f.splits or [])}, {f.score:.4f})" for f in self.filtered)
            among = f"; among the top: {shown}" if shown else ""
            lines.append(f"filtered {self.num_filtered} known answer(s){among}")
        return "\n".join(lines)


def _locked(method):
    """Run a :class:`Predictor` method holding the predictor's lock."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


class Predictor:
    """Link prediction with a trained bi-encoder over a knowledge graph's entities (plus any added ones).

    Names are resolved by its :class:`~kgdistill.inference.vocabulary.EntityVocabulary` (``vocab``), candidates
    searched in its :class:`~kgdistill.inference.index.EntityIndex` (``index``, loaded or built through ``store``),
    and a gold answer's rank is computed by the evaluator's own ranking code.

    Thread-safe: encoding, searching and adding entities hold one lock (an ``RLock``: they call each other), so a
    search never sees index rows the vocabulary lacks yet and the fast tokenizer is never used by two threads at once
    ("Already borrowed"). Resolving names takes no lock (the HTTP service resolves on its event loop)."""

    def __init__(self, model, tokenizer, config: RunConfig, kg: KnowledgeGraph | None = None,
                 device: str | torch.device | None = None, precision: str | None = None,
                 index: EntityIndex | None = None, store: IndexStore | None = None, fingerprint: str | None = None,
                 index_kind: str = "exact", info: dict | None = None, progress: bool = False):
        self._lock = threading.RLock()
        self.device = pick_device("auto") if device is None else torch.device(device)
        self.model = model.eval().to(self.device) if isinstance(model, torch.nn.Module) else model
        self.tokenizer = tokenizer
        self.config = config
        self.precision = resolve_precision(precision or config.train.precision, self.device)  # 'auto' -> bf16|fp32
        self.progress = progress
        self.data = DataContext(config, tokenizer, kg)
        self.kg: KnowledgeGraph = self.data.kg
        self.texts = self.data.texts
        self.tokenized = self.data.tokenized
        self.info = dict(info or {})
        self.vocab = EntityVocabulary(self.kg, self.texts)
        r = self.kg.num_relations
        self.known_all = KnownTails(with_inverses(np.concatenate([self.kg.splits[s] for s in SPLITS]), r),
                                    self.kg.num_entities, r)
        self.known_split = {s: KnownTails(with_inverses(self.kg.splits[s], r), self.kg.num_entities, r)
                            for s in SPLITS}
        self.fingerprint = fingerprint or "unsaved-model"
        if index is None:
            expect = {"model_fingerprint": self.fingerprint, "data_key": self.data_key()}
            index = (store or IndexStore()).load_or_build(
                expect, self.encode_all_entities, self.kg.entity_ids,
                {"dataset": self.kg.name, "num_relations": self.kg.num_relations})
        self.index = index
        if self.index.all_ids()[:self.kg.num_entities] != self.kg.entity_ids:
            raise CheckpointError("entity index: its entity ids do not match the dataset's")
        if index_kind != "exact":
            self.build_faiss(index_kind)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, model_dir: str | Path, dataset: str | None = None, checkpoint: str = "last",
                        device: str | None = None, precision: str | None = None, index_dir: str | Path | None = None,
                        index_dtype: str | None = None, index: str = "exact", save_index: bool = True,
                        backend: str = "torch", progress: bool = False) -> "Predictor":
        """Load a run folder, a model folder or an exported folder; the dataset defaults to the model's own.

        ``index_dir``: where the entity index is kept (default: ``<run>/index`` for a checkpoint of a run folder,
        ``<model>/index`` otherwise); ``index``: exact (default) or a FAISS kind (flat, ivf, hnsw);
        ``backend``: torch, or onnx for an ONNX export (onnxruntime).
        """
        folder = resolve_model_dir(model_dir, checkpoint)
        export_meta = read_export_meta(folder)
        tokenizer = load_model_tokenizer(folder)
        model, fingerprint, cpu_fp32 = load_backend(folder, backend, export_meta, BiEncoder.load(folder))
        if cpu_fp32:
            device, precision = "cpu", "fp32"
        quantize = export_meta.get("quantize")
        config = model_config(folder, dataset, bundled=export_meta.get("dataset"))
        kg = load_dataset(config.data.dataset, config.data.format)
        info = {"model_dir": str(folder), "backend": backend, "quantize": quantize, "dataset": config.data.dataset,
                "dataset_name": kg.name}
        location, stem = default_index_location(folder)
        if backend == "onnx":
            stem += "-onnx" + ("-int8" if quantize == "int8" else "")
        store = IndexStore(index_dir or location, stem, index_dtype, save_index)
        return cls(model, tokenizer, config, kg, device, precision, store=store, fingerprint=fingerprint,
                   index_kind=index, info=info, progress=progress)

    def data_key(self) -> str:
        """What the entity vectors depend on besides the weights: entities, their text, tokenizer, precision."""
        d = self.config.data
        parts = [self.kg.fingerprint, str(self.kg.num_entities), str(d.use_neighbors), str(d.neighbor_min_words),
                 str(d.max_neighbors), str(d.max_tokens), tokenizer_key(self.tokenizer), self.precision,
                 str(getattr(self.model, "pooling", ""))]
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]

    @_locked
    def encode_all_entities(self) -> torch.Tensor:
        """Every entity's evaluation-text vector, exactly as the evaluator encodes them."""
        store = entity_token_store(self.texts, self.tokenized, self.kg.name)
        return encode_store(self.model.encode_entities, store, self.tokenized, self.device,
                            self.config.eval.batch_size, self.precision,
                            "entities" if self.progress else None).cpu()

    @_locked
    def build_faiss(self, kind: str, **kwargs) -> dict:
        """Replace exact search by a FAISS index; reports recall@10 against exact on test/valid queries."""
        if kind not in FAISS_KINDS:
            raise KGDistillError(f"index '{kind}': expected exact or one of {', '.join(FAISS_KINDS)}")
        triples = np.concatenate([self.kg.splits["test"], self.kg.splits["valid"]])[:500]
        sample = None
        if len(triples):
            queries = with_inverses(triples, self.kg.num_relations)
            sample = self._encode_pairs([(self.texts.entity_text(int(h)), self.texts.relation_text(int(r)))
                                         for h, r, _ in queries])
        return self.index.build_faiss(kind, sample, **kwargs)

    # ------------------------------------------------------------------ names
    @property
    def num_entities(self) -> int:
        """Candidates: the graph's entities and the added ones."""
        return len(self.index)

    def resolve_entity(self, entity: Any, what: str = "entity") -> Entity:
        """An id, a name, a dict with an 'id', or a dict {name, description} for an unseen entity."""
        return self.vocab.resolve_entity(entity, what)

    def resolve_relation(self, relation: Any) -> int:
        """A relation id, text, 'inverse ' + text, or index; the index (inverse ones offset by num_relations)."""
        return self.vocab.resolve_relation(relation)

    @_locked
    def search_entities(self, prefix: str, limit: int = 20) -> list[dict]:
        """``{id, name}`` of the entities whose id or name starts with ``prefix`` (case-insensitive)."""
        return self.vocab.search_entities(prefix, limit)

    @_locked
    def add_entities(self, entities: Iterable[dict]) -> list[str]:
        """Add new candidate entities ``{id, name, description}``; they are ranked with the dataset's ones."""
        new = self.vocab.check_new(entities)
        if not new:
            return []
        self.index.add([e["id"] for e in new], self._encode_entity_texts([e["text"] for e in new]))
        self.vocab.add(new)
        return [e["id"] for e in new]

    # ------------------------------------------------------------------ encoding
    @_locked
    def _encode_pairs(self, pairs: list[tuple[str, str]]) -> torch.Tensor:
        """Query vectors of (entity text, relation text) pairs, tokenised as the evaluation's ExampleSet does."""
        store = tokenize(self.tokenizer, [a for a, _ in pairs], [b for _, b in pairs], self.config.data.max_tokens)
        return encode_store(self.model.encode_queries, store, self.tokenized, self.device,
                            self.config.eval.batch_size, self.precision).cpu()

    @_locked
    def _encode_entity_texts(self, texts: list[str]) -> torch.Tensor:
        store = tokenize(self.tokenizer, texts, None, self.config.data.max_tokens)
        return encode_store(self.model.encode_entities, store, self.tokenized, self.device,
                            self.config.eval.batch_size, self.precision).cpu()

    def query_vectors(self, queries: list[tuple[Entity, int]]) -> torch.Tensor:
        """Query vectors of resolved (entity, relation index) pairs."""
        return self._encode_pairs([(e.text, self.texts.relation_text(r)) for e, r in queries])

    # ------------------------------------------------------------------ prediction
    def _known(self, entity: Entity, relation: int) -> np.ndarray:
        """Known answers (any split) of a query on a graph entity; none for an unseen or added one."""
        if entity.row is None or entity.row >= self.kg.num_entities:
            return np.zeros(0, dtype=np.int64)
        return self.known_all.tails_of(entity.row, relation)

    def _splits_of(self, head: int, relation: int, tails: list[int]) -> list[list[str]]:
        """Where each of ``tails`` is known from: each split's answers are looked up once per query, not once per
        tail (that made a query's cost grow with the square of its known answers)."""
        rows = np.asarray(tails, dtype=np.int64)
        found = {s: np.isin(rows, self.known_split[s].tails_of(head, relation)) for s in SPLITS}
        return [[s for s in SPLITS if found[s][i]] for i in range(len(rows))]

    def _known_set(self, query: ResolvedQuery) -> set[int]:
        if not query.filter_known:
            return set()
        return set(self._known(query.entity, query.relation).tolist()) - query.keep

    def _rank(self, query: ResolvedQuery, known_set: set[int], scores: list[float], rows: list[int]) -> Prediction:
        """The top ``k`` of one query's search results (best first), known answers set aside as filtered: at most
        ``k`` of them, the best (a hub can have thousands; ``num_filtered`` counts them all)."""
        entity, relation = query.entity, query.relation
        results, known = [], []
        for score, row in zip(scores, rows):
            if row < 0 or len(results) >= query.k:
                continue
            if row in known_set:
                if len(known) < query.k:
                    known.append((float(score), row))
                continue
            results.append(ScoredEntity(self.vocab.entity_id(row), self.vocab.entity_name(row), float(score),
                                        len(results) + 1))
        splits = self._splits_of(entity.row, relation, [row for _, row in known]) if known else []
        filtered = [ScoredEntity(self.vocab.entity_id(row), self.vocab.entity_name(row), score, splits=where)
                    for (score, row), where in zip(known, splits)]
        r = self.kg.num_relations
        return Prediction(query.direction, entity.describe(), self.texts.relation_text(relation % r),
                          self.kg.relation_ids[relation % r], results, filtered, len(known_set))

    @staticmethod
    def _check_k(k: Any) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise PredictionError(f"k: expected an integer in 1..{MAX_K:,}, got {k!r}")

    def resolve_query(self, entity: Any, relation: Any, direction: str = "tail", k: int = 10,
                      filter_known: bool = True, keep: frozenset[int] = frozenset()) -> ResolvedQuery:
        """Check and resolve one query without the model, so that its errors are its own (the HTTP service
        resolves each request before batching it); ``direction`` 'tail' predicts tails of (entity, relation, ?),
        'head' heads of (?, relation, entity); ``keep``: rows never filtered."""
        if direction not in ("tail", "head"):
            raise PredictionError(f"direction: expected 'tail' or 'head', got {direction!r}")
        self._check_k(k)
        e = self.resolve_entity(entity, "head" if direction == "tail" else "tail")
        rel = self.resolve_relation(relation)
        if direction == "head":  # (?, r, t) is (t, inverse r, ?); an inverse relation turns back to forward
            r = self.kg.num_relations
            rel = (rel + r) % (2 * r)
        return ResolvedQuery(e, rel, direction, k, filter_known, keep)

    @_locked
    def predict_resolved(self, queries: list[ResolvedQuery]) -> list[Prediction]:
        """One query-encoder call and one index search for all ``queries``; each keeps its own k and filter."""
        if not queries:
            return []
        vectors = self.query_vectors([(q.entity, q.relation) for q in queries])
        known = [self._known_set(q) for q in queries]
        wants = [min(self.num_entities, q.k + len(k)) for q, k in zip(queries, known)]
        scores, rows = self.index.search(vectors, max(wants))  # one search for the batch: a scan per query is slow
        return [self._rank(q, k, s[:w], r[:w]) for q, k, w, s, r in
                zip(queries, known, wants, scores.tolist(), rows.tolist())]

    def _predict(self, queries: list[tuple[Any, Any, str]], k: int, filter_known: bool, keep=(),
                 progress: bool = False) -> list[Prediction]:
        self._check_k(k)  # before the queries: a bad k is no query's fault
        keep_rows = frozenset(row for row in (self.resolve_entity(x, "keep").row for x in keep) if row is not None)
        resolved = []
        for i, (entity, relation, direction) in enumerate(queries):
            try:
                resolved.append(self.resolve_query(entity, relation, direction, k, filter_known, keep_rows))
            except PredictionError as exc:
                exc.query_index = i  # which query of a batch (the CLI names the file line)
                raise
        out: list[Prediction] = []
        chunk = max(1, self.config.eval.batch_size)
        bar = tqdm(total=len(resolved), desc="predict", unit="query", disable=not progress, leave=False)
        for start in range(0, len(resolved), chunk):
            part = resolved[start:start + chunk]
            out.extend(self.predict_resolved(part))
            bar.update(len(part))
        bar.close()
        return out

    def predict_tails(self, head: Any, relation: Any, k: int = 10, filter_known: bool = True,
                      keep: Iterable[Any] = ()) -> Prediction:
        """Top-k tails of ``(head, relation, ?)``; ``keep``: entities never filtered (e.g. the gold answer)."""
        return self._predict([(head, relation, "tail")], k, filter_known, keep)[0]

    def predict_heads(self, relation: Any, tail: Any, k: int = 10, filter_known: bool = True,
                      keep: Iterable[Any] = ()) -> Prediction:
        """Top-k heads of ``(?, relation, tail)``: tail prediction for ``(tail, inverse relation, ?)``."""
        return self._predict([(tail, relation, "head")], k, filter_known, keep)[0]

    def predict_many(self, queries: list[dict], k: int = 10, filter_known: bool = True,
                     progress: bool = False) -> list[Prediction]:
        """Batch prediction: each query is {head, relation} (tails) or {relation, tail} (heads)."""
        items = []
        for i, q in enumerate(queries):
            if not isinstance(q, dict) or "relation" not in q or (("head" in q) == ("tail" in q)):
                exc = PredictionError(f"query {i + 1}: expected {{head, relation}} or {{relation, tail}}")
                exc.query_index = i
                raise exc
            items.append((q["head"], q["relation"], "tail") if "head" in q else (q["tail"], q["relation"], "head"))
        return self._predict(items, k, filter_known, progress=progress)

    @_locked
    @torch.no_grad()
    def score(self, head: Any, relation: Any, tail: Any) -> float:
        """Cosine score of a triple, as the evaluator ranks it; head and tail may be unseen entities."""
        h = self.resolve_entity(head, "head")
        rel = self.resolve_relation(relation)
        t = self.resolve_entity(tail, "tail")
        q = self.query_vectors([(h, rel)])
        e = self.index.rows([t.row]) if t.row is not None else self._encode_entity_texts([t.text])
        return float((q @ e.T)[0, 0])

    @_locked
    @torch.no_grad()
    def rank(self, head: Any, relation: Any, tail: Any, filter_known: bool = True, tie_policy: str = "realistic"
             ) -> float:
        """Filtered rank of ``tail`` among all entities, by the evaluator's own ranking code (no re-ranking)."""
        h = self.resolve_entity(head, "head")
        rel = self.resolve_relation(relation)
        t = self.resolve_entity(tail, "tail")
        if t.row is None:
            raise PredictionError("tail: rank needs a known or added entity")
        scores = self.index.scores(self.query_vectors([(h, rel)]))
        known = torch.as_tensor(self._known(h, rel) if filter_known else np.zeros(0), dtype=torch.long)
        ranks = ranks_from_scores(scores, torch.tensor([t.row]), torch.zeros_like(known), known, tie_policy)
        return float(ranks[0])

    def describe(self) -> dict:
        """What is loaded: dataset, entity counts, model fingerprint, index kind, precision, device, provenance."""
        return {"dataset": self.kg.name, "entities": self.kg.num_entities, "added_entities": len(self.vocab.added),
                "relations": self.kg.num_relations, "model_fingerprint": self.fingerprint,
                "index": {"kind": self.index.faiss_kind or "exact", "dtype": self.index.dtype,
                          **({"faiss": self.index.faiss_report} if self.index.faiss_report else {})},
                "precision": self.precision, "device": str(self.device), **self.info}

