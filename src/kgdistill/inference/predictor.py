"""Use a trained model: tail and head prediction, triple scores, unseen entities (GitHub issue 4).

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

import copy
import hashlib
import json
import logging
import warnings
from bisect import bisect_left
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..api import DataContext, load_run_config, resolve_model_dir, tokenizer_key
from ..config import RunConfig
from ..data.batching import KnownTails, entity_token_store, tokenize
from ..data.dataset import SPLITS, KnowledgeGraph, load_dataset
from ..data.text import INVERSE_PREFIX, join_name_description, with_inverses
from ..errors import CheckpointError, KGDistillError
from ..evaluation.ranking import encode_store
from ..runtime import resolve_precision
from ..models.biencoder import BiEncoder, load_model_tokenizer
from .index import (DTYPES, FAISS_KINDS, EntityIndex, build_index, default_index_location,
                    model_fingerprint)

log = logging.getLogger("kgdistill")

EXPORT_META = "export.json"
MAX_TEXT_CHARS = 10_000  # name + description of an unseen entity
MAX_K = 100_000


class PredictionError(KGDistillError):
    """A prediction request is invalid (bad entity, relation or argument)."""


class UnknownEntityError(PredictionError):
    """No entity has this id or name."""


class AmbiguousEntityError(PredictionError):
    """Several entities share this name; ``candidates`` lists their ids."""

    def __init__(self, message: str, candidates: list[str]):
        super().__init__(message)
        self.candidates = candidates


class UnknownRelationError(PredictionError):
    """No relation has this id or text."""


def _norm(text: str) -> str:
    return " ".join(str(text).split()).lower()


@dataclass
class Entity:
    """A resolved entity: ``row`` in the index (None for an unseen one), its id, name and query-side text."""

    row: int | None
    id: str | None
    name: str
    text: str


@dataclass
class ScoredEntity:
    id: str
    name: str
    score: float
    rank: int | None = None  # position among the unfiltered results (1 = best)
    splits: list[str] | None = None  # for filtered answers: where the triple is known from

    def to_dict(self) -> dict:
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
    filtered: list[ScoredEntity] = field(default_factory=list)  # known answers that ranked among the results
    num_filtered: int = 0  # every known answer of the query, removed from the ranking

    def to_dict(self) -> dict:
        return {"direction": self.direction, "entity": self.entity, "relation": self.relation,
                "relation_id": self.relation_id, "results": [r.to_dict() for r in self.results],
                "filtered": [r.to_dict() for r in self.filtered], "num_filtered": self.num_filtered}

    def table(self) -> str:
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


def _read_export_meta(folder: Path) -> dict:
    path = folder / EXPORT_META
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: not valid JSON") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return meta


def quantize_int8(model: BiEncoder) -> BiEncoder:
    """Dynamic int8 quantisation of every Linear layer (PyTorch CPU path)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model.cpu().eval(), {torch.nn.Linear}, dtype=torch.qint8)


class Predictor:
    """Link prediction with a trained bi-encoder over a knowledge graph's entities (plus any added ones)."""

    def __init__(self, model, tokenizer, config: RunConfig, kg: KnowledgeGraph | None = None,
                 device: str | torch.device | None = None, precision: str | None = None,
                 index: EntityIndex | None = None, index_dir: str | Path | None = None, index_stem: str = "entities",
                 index_dtype: str | None = None, fingerprint: str | None = None, save_index: bool = True,
                 index_kind: str = "exact", info: dict | None = None, progress: bool = False):
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
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
        kg_ = self.kg
        r = kg_.num_relations
        self.known_all = KnownTails(with_inverses(np.concatenate([kg_.splits[s] for s in SPLITS]), r),
                                    kg_.num_entities, r)
        self.known_split = {s: KnownTails(with_inverses(kg_.splits[s], r), kg_.num_entities, r) for s in SPLITS}
        self.fingerprint = fingerprint or "unsaved-model"
        self.added: list[dict] = []  # entities added with add_entities (rows num_entities + j)
        self._id_rows = dict(kg_.entity_index)
        self._name_rows: dict[str, list[int]] = {}
        for row, name in enumerate(kg_.entity_names):
            self._name_rows.setdefault(_norm(name), []).append(row)
        self._relation_texts: dict[str, list[int]] = {}
        for i, text in enumerate(kg_.relation_texts):
            self._relation_texts.setdefault(_norm(text), []).append(i)
            self._relation_texts.setdefault(_norm(INVERSE_PREFIX + text), []).append(i + r)
        self._relation_ids = {rid.lower(): i for i, rid in enumerate(kg_.relation_ids)}
        self._sorted_names: list[tuple[str, int]] | None = None
        self.index = index if index is not None else self._load_or_build_index(
            index_dir, index_stem, index_dtype, save_index)
        if self.index.all_ids()[:kg_.num_entities] != kg_.entity_ids:
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
        export_meta = _read_export_meta(folder)
        tokenizer = load_model_tokenizer(folder)
        model = BiEncoder.load(folder)
        info = {"model_dir": str(folder), "backend": backend}
        quantize = export_meta.get("quantize")
        if backend == "torch":
            fingerprint = model_fingerprint(folder)
            if quantize == "int8":
                model = quantize_int8(model)
                device, precision = "cpu", "fp32"  # dynamic int8 kernels run on the CPU in fp32
                fingerprint += "+int8"
        elif backend == "onnx":
            from .export import OnnxBiEncoder

            model = OnnxBiEncoder.load(folder, export_meta, quantized=quantize == "int8", model=model)
            fingerprint = model.fingerprint
            device, precision = "cpu", "fp32"
        else:
            raise KGDistillError(f"backend '{backend}': expected torch or onnx")
        info["quantize"] = quantize
        saved = load_run_config(folder)
        config = copy.deepcopy(saved or RunConfig())
        if dataset is not None:
            config.data.dataset = str(dataset)
        elif export_meta.get("dataset") and (folder / export_meta["dataset"]).is_dir():
            config.data.dataset = str(folder / export_meta["dataset"])
        elif saved is None:
            config.data.dataset = model_info(model).get("dataset", config.data.dataset)
        info["dataset"] = config.data.dataset
        kg = load_dataset(config.data.dataset)
        info["dataset_name"] = kg.name
        location, stem = default_index_location(folder)
        if backend == "onnx":
            stem += "-onnx" + ("-int8" if quantize == "int8" else "")
        return cls(model, tokenizer, config, kg, device, precision, index_dir=index_dir or location,
                   index_stem=stem, index_dtype=index_dtype, fingerprint=fingerprint, save_index=save_index,
                   index_kind=index, info=info, progress=progress)

    def data_key(self) -> str:
        """What the entity vectors depend on besides the weights: entities, their text, tokenizer, precision."""
        d = self.config.data
        parts = [self.kg.fingerprint, str(self.kg.num_entities), str(d.use_neighbors), str(d.neighbor_min_words),
                 str(d.max_neighbors), str(d.max_tokens), tokenizer_key(self.tokenizer), self.precision,
                 str(getattr(self.model, "pooling", ""))]
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]

    def _load_or_build_index(self, index_dir, stem: str, dtype: str | None, save: bool) -> EntityIndex:
        if dtype is not None and dtype not in DTYPES:
            raise KGDistillError(f"index dtype '{dtype}': expected one of {', '.join(DTYPES)}")
        expect = {"model_fingerprint": self.fingerprint, "data_key": self.data_key()}
        if dtype is not None:
            expect["dtype"] = dtype
        if index_dir is not None:
            found = EntityIndex.open(index_dir, stem, expect)
            if found is not None:
                return found
        vectors = self.encode_all_entities()
        index = build_index(vectors, self.kg.entity_ids, dtype or "fp32",
                            {**expect, "dataset": self.kg.name, "num_relations": self.kg.num_relations})
        if index_dir is not None and save:
            try:
                index.save(index_dir, stem)
                return EntityIndex.open(index_dir, stem, expect) or index
            except OSError as exc:
                log.warning("entity index not saved to %s (%s); kept in memory", index_dir, exc.strerror or exc)
        return index

    def encode_all_entities(self) -> torch.Tensor:
        """Every entity's evaluation-text vector, exactly as the evaluator encodes them."""
        store = entity_token_store(self.texts, self.tokenized, self.kg.name)
        return encode_store(self.model.encode_entities, store, self.tokenized, self.device,
                            self.config.eval.batch_size, self.precision,
                            "entities" if self.progress else None).cpu()

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

    # ------------------------------------------------------------------ resolution
    @property
    def num_entities(self) -> int:
        return len(self.index)

    def entity_id(self, row: int) -> str:
        return self.kg.entity_ids[row] if row < self.kg.num_entities else self.added[row - self.kg.num_entities]["id"]

    def entity_name(self, row: int) -> str:
        return (self.kg.entity_names[row] if row < self.kg.num_entities
                else self.added[row - self.kg.num_entities]["name"])

    def _row_text(self, row: int) -> str:
        if row < self.kg.num_entities:
            return self.texts.entity_text(row)
        return self.added[row - self.kg.num_entities]["text"]

    @staticmethod
    def _unseen_text(spec: dict, what: str = "entity") -> tuple[str, str]:
        name, description = spec.get("name"), spec.get("description", "")
        if description is None:
            description = ""
        if not isinstance(name, str) or not name.strip():
            raise PredictionError(f"{what}: a new entity needs a non-empty 'name'")
        if not isinstance(description, str):
            raise PredictionError(f"{what}: 'description' must be a string")
        name, description = name.strip(), description.strip()  # as the dataset loader does
        try:
            (name + description).encode("utf-8")
        except UnicodeEncodeError:
            raise PredictionError(f"{what}: name and description must be valid Unicode text") from None
        if len(name) + len(description) > MAX_TEXT_CHARS:
            raise PredictionError(f"{what}: name and description exceed {MAX_TEXT_CHARS:,} characters")
        return name, join_name_description(name, description)

    def resolve_entity(self, entity: Any, what: str = "entity") -> Entity:
        """An id, a name, a dict with an 'id', or a dict {name, description} for an unseen entity."""
        if isinstance(entity, dict):
            if "id" in entity and entity["id"] is not None:
                extra = set(entity) - {"id", "name", "description"}
                if extra:
                    raise PredictionError(f"{what}: unexpected keys {sorted(extra)}")
                if isinstance(entity["id"], bool) or not isinstance(entity["id"], (str, int)):
                    raise PredictionError(f"{what}: 'id' must be a string")
                return self.resolve_entity(str(entity["id"]), what)
            extra = set(entity) - {"name", "description"}
            if extra:
                raise PredictionError(f"{what}: unexpected keys {sorted(extra)} (a new entity is "
                                      "{'name': ..., 'description': ...})")
            name, text = self._unseen_text(entity, what)
            return Entity(None, None, name, text)
        if isinstance(entity, bool) or not isinstance(entity, (str, int)):
            return self._bad(what, entity)
        key = str(entity).strip()
        if not key:
            raise UnknownEntityError(f"{what}: empty entity id or name")
        if len(key) > MAX_TEXT_CHARS:
            raise UnknownEntityError(f"{what}: no entity has this {len(key):,}-character id or name")
        row = self._id_rows.get(key)
        if row is None:
            rows = self._name_rows.get(_norm(key), [])
            if len(rows) > 1:
                ids = [self.entity_id(r) for r in rows]
                shown = ", ".join(ids[:20]) + (f", ... ({len(ids)} in all)" if len(ids) > 20 else "")
                raise AmbiguousEntityError(f"{what}: the name {key!r} is ambiguous; use one of the ids {shown}", ids)
            if not rows:
                hint = [f"{self.entity_id(r)} ({self.entity_name(r)})" for r in self.search_rows(key, 5)]
                raise UnknownEntityError(f"{what}: unknown entity {key[:200]!r} (neither an id nor a name)"
                                         + (f"; did you mean: {', '.join(hint)}" if hint else ""))
            row = rows[0]
        return Entity(row, self.entity_id(row), self.entity_name(row), self._row_text(row))

    @staticmethod
    def _bad(what: str, entity: Any):
        raise PredictionError(f"{what}: expected an id, a name or {{'name': ..., 'description': ...}}, "
                              f"got {type(entity).__name__}")

    def resolve_relation(self, relation: Any) -> int:
        """A relation id, text, 'inverse ' + text, or index; the index (inverse ones offset by num_relations)."""
        if isinstance(relation, bool) or not isinstance(relation, (str, int)):
            raise PredictionError(f"relation: expected an id or a text, got {type(relation).__name__}")
        if isinstance(relation, int):  # an index, as in the dataset's triples (inverse ones from num_relations)
            if not 0 <= relation < 2 * self.kg.num_relations:
                last = 2 * self.kg.num_relations - 1
                raise UnknownRelationError(f"relation: index {relation} out of range 0..{last}")
            return relation
        key = relation.strip()
        if key in self.kg.relation_index:
            return self.kg.relation_index[key]
        rows = self._relation_texts.get(_norm(key))
        if rows is None and key.lower() in self._relation_ids:
            rows = [self._relation_ids[key.lower()]]
        if not rows:
            known = ", ".join(repr(t) for t in self.kg.relation_texts[:20])
            more = f", ... ({self.kg.num_relations} in all)" if self.kg.num_relations > 20 else ""
            raise UnknownRelationError(f"relation: unknown relation {key[:200]!r}; known: {known}{more}")
        if len(set(rows)) > 1:
            ids = [self.relation_label(r) for r in rows]
            raise UnknownRelationError(f"relation: the text {key!r} is ambiguous; use one of the ids {', '.join(ids)}")
        return rows[0]

    def relation_label(self, relation: int) -> str:
        r = self.kg.num_relations
        return self.kg.relation_ids[relation] if relation < r else INVERSE_PREFIX + self.kg.relation_ids[relation - r]

    # ------------------------------------------------------------------ entity search
    def search_rows(self, prefix: str, limit: int = 20) -> list[int]:
        """Rows whose id or name starts with ``prefix`` (case-insensitive), exact matches first."""
        if self._sorted_names is None:
            pairs = [(_norm(self.entity_name(r)), r) for r in range(self.num_entities)]
            pairs += [(self.entity_id(r).lower(), r) for r in range(self.num_entities)]
            self._sorted_names = sorted(pairs)
        key = _norm(prefix)
        if not key:
            return []
        out: list[int] = []
        seen = set()
        start = bisect_left(self._sorted_names, (key, -1))
        for text, row in self._sorted_names[start:]:
            if not text.startswith(key) or len(out) >= limit:
                break
            if row not in seen:
                seen.add(row)
                out.append(row)
        return out

    def search_entities(self, prefix: str, limit: int = 20) -> list[dict]:
        return [{"id": self.entity_id(r), "name": self.entity_name(r)} for r in self.search_rows(prefix, limit)]

    # ------------------------------------------------------------------ adding entities
    def add_entities(self, entities: Iterable[dict]) -> list[str]:
        """Add new candidate entities ``{id, name, description}``; they are ranked with the dataset's ones."""
        new, ids = [], set()
        for i, spec in enumerate(entities):
            what = f"add_entities[{i}]"
            if not isinstance(spec, dict):
                raise PredictionError(f"{what}: expected a dict with id, name, description")
            extra = set(spec) - {"id", "name", "description"}
            if extra:
                raise PredictionError(f"{what}: unexpected keys {sorted(extra)}")
            eid = spec.get("id")
            if not isinstance(eid, str) or not eid.strip():
                raise PredictionError(f"{what}: needs a non-empty string 'id'")
            eid = eid.strip()
            if eid in self._id_rows or eid in ids:
                raise PredictionError(f"{what}: entity id {eid!r} already exists")
            name, text = self._unseen_text(spec, what)
            ids.add(eid)
            new.append({"id": eid, "name": name, "description": spec.get("description") or "", "text": text})
        if not new:
            return []
        vectors = self._encode_entity_texts([e["text"] for e in new])
        base = self.num_entities
        self.index.add([e["id"] for e in new], vectors)
        for j, e in enumerate(new):
            self.added.append(e)
            self._id_rows[e["id"]] = base + j
            self._name_rows.setdefault(_norm(e["name"]), []).append(base + j)
        self._sorted_names = None
        return [e["id"] for e in new]

    # ------------------------------------------------------------------ encoding
    def _encode_pairs(self, pairs: list[tuple[str, str]]) -> torch.Tensor:
        """Query vectors of (entity text, relation text) pairs, tokenised as the evaluation's ExampleSet does."""
        store = tokenize(self.tokenizer, [a for a, _ in pairs], [b for _, b in pairs], self.config.data.max_tokens)
        return encode_store(self.model.encode_queries, store, self.tokenized, self.device,
                            self.config.eval.batch_size, self.precision).cpu()

    def _encode_entity_texts(self, texts: list[str]) -> torch.Tensor:
        store = tokenize(self.tokenizer, texts, None, self.config.data.max_tokens)
        return encode_store(self.model.encode_entities, store, self.tokenized, self.device,
                            self.config.eval.batch_size, self.precision).cpu()

    def query_vectors(self, queries: list[tuple[Entity, int]]) -> torch.Tensor:
        return self._encode_pairs([(e.text, self.texts.relation_text(r)) for e, r in queries])

    # ------------------------------------------------------------------ prediction
    def _known(self, entity: Entity, relation: int) -> np.ndarray:
        if entity.row is None or entity.row >= self.kg.num_entities:
            return np.zeros(0, dtype=np.int64)
        return self.known_all.tails_of(entity.row, relation)

    def _splits_of(self, head: int, relation: int, tail: int) -> list[str]:
        return [s for s in SPLITS if tail in set(self.known_split[s].tails_of(head, relation).tolist())]

    def _known_set(self, query: ResolvedQuery) -> set[int]:
        if not query.filter_known:
            return set()
        return set(self._known(query.entity, query.relation).tolist()) - query.keep

    def _rank(self, query: ResolvedQuery, known_set: set[int], scores: list[float], rows: list[int]) -> Prediction:
        """The top ``k`` of one query's search results (best first), known answers set aside as filtered."""
        entity, relation = query.entity, query.relation
        results, filtered = [], []
        for score, row in zip(scores, rows):
            if row < 0 or len(results) >= query.k:
                continue
            if row in known_set:
                filtered.append(ScoredEntity(self.entity_id(row), self.entity_name(row), float(score),
                                             splits=self._splits_of(entity.row, relation, row)))
                continue
            results.append(ScoredEntity(self.entity_id(row), self.entity_name(row), float(score), len(results) + 1))
        r = self.kg.num_relations
        described = ({"id": entity.id, "name": entity.name} if entity.row is not None
                     else {"name": entity.name, "text": entity.text})
        return Prediction(query.direction, described, self.texts.relation_text(relation % r),
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

    @torch.no_grad()
    def score(self, head: Any, relation: Any, tail: Any) -> float:
        """Cosine score of a triple, as the evaluator ranks it; head and tail may be unseen entities."""
        h = self.resolve_entity(head, "head")
        rel = self.resolve_relation(relation)
        t = self.resolve_entity(tail, "tail")
        q = self.query_vectors([(h, rel)])
        e = self.index.rows([t.row]) if t.row is not None else self._encode_entity_texts([t.text])
        return float((q @ e.T)[0, 0])

    @torch.no_grad()
    def rank(self, head: Any, relation: Any, tail: Any, filter_known: bool = True, tie_policy: str = "realistic"
             ) -> float:
        """Filtered rank of ``tail`` among all entities, computed as the evaluator does (no re-ranking)."""
        h = self.resolve_entity(head, "head")
        rel = self.resolve_relation(relation)
        t = self.resolve_entity(tail, "tail")
        if t.row is None:
            raise PredictionError("tail: rank needs a known or added entity")
        scores = self.index.scores(self.query_vectors([(h, rel)]))[0]
        gold = scores[t.row].item()
        if filter_known:
            known = self._known(h, rel)
            scores[torch.as_tensor(known, dtype=torch.long)] = float("-inf")
        scores[t.row] = gold
        better = int((scores > gold).sum())
        ties = int((scores == gold).sum()) - 1
        if tie_policy == "optimistic":
            return float(better + 1)
        if tie_policy == "pessimistic":
            return float(better + ties + 1)
        return better + 1 + ties / 2

    def describe(self) -> dict:
        return {"dataset": self.kg.name, "entities": self.kg.num_entities, "added_entities": len(self.added),
                "relations": self.kg.num_relations, "model_fingerprint": self.fingerprint,
                "index": {"kind": self.index.faiss_kind or "exact", "dtype": self.index.dtype,
                          **({"faiss": self.index.faiss_report} if self.index.faiss_report else {})},
                "precision": self.precision, "device": str(self.device), **self.info}


def model_info(model) -> dict:
    return dict(getattr(model, "info", None) or {})
