"""The names a predictor answers to: entities by id, by name (an ambiguous name is an error listing the candidate
ids) or as ``{"name": ..., "description": ...}`` for an entity the model has never seen, entities added later, and
relations by id, text, ``'inverse ' + text`` or index. No model call happens here, so every error is raised before
one."""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import Any, Iterable

from ..data.dataset import KnowledgeGraph
from ..data.text import INVERSE_PREFIX, TextBuilder, join_name_description
from ..errors import KGDistillError

MAX_TEXT_CHARS = 10_000  # name + description of an unseen entity


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

    def describe(self) -> dict:
        """How a prediction names it: ``{id, name}``, or ``{name, text}`` for an unseen entity."""
        return {"id": self.id, "name": self.name} if self.row is not None else {"name": self.name, "text": self.text}


class EntityVocabulary:
    """Rows of the entity index (the graph's entities, then added ones) by id and name, and relations by id and
    text."""

    def __init__(self, kg: KnowledgeGraph, texts: TextBuilder):
        self.kg, self.texts = kg, texts
        r = kg.num_relations
        self.added: list[dict] = []  # entities added with add (rows kg.num_entities + j)
        self._id_rows = dict(kg.entity_index)
        self._name_rows: dict[str, list[int]] = {}
        for row, name in enumerate(kg.entity_names):
            self._name_rows.setdefault(_norm(name), []).append(row)
        self._relation_texts: dict[str, list[int]] = {}
        for i, text in enumerate(kg.relation_texts):
            self._relation_texts.setdefault(_norm(text), []).append(i)
            self._relation_texts.setdefault(_norm(INVERSE_PREFIX + text), []).append(i + r)
        self._relation_ids = {rid.lower(): i for i, rid in enumerate(kg.relation_ids)}
        self._sorted_names: list[tuple[str, int]] | None = None

    # ------------------------------------------------------------------ rows
    def __len__(self) -> int:
        return self.kg.num_entities + len(self.added)

    def entity_id(self, row: int) -> str:
        """The id of an index row."""
        return self.kg.entity_ids[row] if row < self.kg.num_entities else self.added[row - self.kg.num_entities]["id"]

    def entity_name(self, row: int) -> str:
        """The name of an index row."""
        return (self.kg.entity_names[row] if row < self.kg.num_entities
                else self.added[row - self.kg.num_entities]["name"])

    def row_text(self, row: int) -> str:
        """The text an index row was encoded from (the evaluation text for the graph's entities)."""
        if row < self.kg.num_entities:
            return self.texts.entity_text(row)
        return self.added[row - self.kg.num_entities]["text"]

    # ------------------------------------------------------------------ entities
    @staticmethod
    def unseen_text(spec: dict, what: str = "entity") -> tuple[str, str]:
        """Name and text of an entity given as ``{name, description}``, checked as the dataset loader checks them."""
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
            name, text = self.unseen_text(entity, what)
            return Entity(None, None, name, text)
        if isinstance(entity, bool) or not isinstance(entity, (str, int)):
            raise PredictionError(f"{what}: expected an id, a name or {{'name': ..., 'description': ...}}, "
                                  f"got {type(entity).__name__}")
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
        return Entity(row, self.entity_id(row), self.entity_name(row), self.row_text(row))

    def check_new(self, entities: Iterable[dict]) -> list[dict]:
        """Entities to add, ``{id, name, description}`` each, checked (ids new and unique) and given their text."""
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
            name, text = self.unseen_text(spec, what)
            ids.add(eid)
            new.append({"id": eid, "name": name, "description": spec.get("description") or "", "text": text})
        return new

    def add(self, new: list[dict]) -> None:
        """Register entities checked by :meth:`check_new` as the next rows."""
        base = len(self)
        for j, e in enumerate(new):
            self.added.append(e)
            self._id_rows[e["id"]] = base + j
            self._name_rows.setdefault(_norm(e["name"]), []).append(base + j)
        self._sorted_names = None

    # ------------------------------------------------------------------ relations
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
        """A relation index as an id; inverse relations as ``'inverse ' + id``."""
        r = self.kg.num_relations
        return self.kg.relation_ids[relation] if relation < r else INVERSE_PREFIX + self.kg.relation_ids[relation - r]

    # ------------------------------------------------------------------ search
    def search_rows(self, prefix: str, limit: int = 20) -> list[int]:
        """Rows whose id or name starts with ``prefix`` (case-insensitive), exact matches first."""
        names = self._sorted_names  # read once: add() may reset it meanwhile
        if names is None:
            rows = range(len(self))
            names = self._sorted_names = sorted([(_norm(self.entity_name(r)), r) for r in rows]
                                                + [(self.entity_id(r).lower(), r) for r in rows])
        key = _norm(prefix)
        if not key:
            return []
        out: list[int] = []
        seen = set()
        start = bisect_left(names, (key, -1))
        for text, row in names[start:]:
            if not text.startswith(key) or len(out) >= limit:
                break
            if row not in seen:
                seen.add(row)
                out.append(row)
        return out

    def search_entities(self, prefix: str, limit: int = 20) -> list[dict]:
        """``{id, name}`` of the entities whose id or name starts with ``prefix``."""
        return [{"id": self.entity_id(r), "name": self.entity_name(r)} for r in self.search_rows(prefix, limit)]
