"""Entity, relation and neighbour text as SimKGC builds it (docs/METHOD.md, "SimKGC teacher")."""
from __future__ import annotations

import numpy as np

from .dataset import KnowledgeGraph

INVERSE_PREFIX = "inverse "


def join_name_description(name: str, description: str) -> str:
    """``"name: description"``, dropping a description prefix that repeats the name (however many times it is
    repeated); the name alone if nothing is left."""
    if description.startswith(name):
        description = description[len(name):].strip()
        while name and description.startswith(name):
            description = description[len(name):].strip()
    return f"{name}: {description}" if description else name


class TextBuilder:
    """Builds the text of an entity, optionally with the names of its training-graph neighbours.

    Neighbours come from the undirected *training* graph only, sorted by entity id, the first ``max_neighbors`` kept.
    During training the other endpoint of the current triple is excluded (``exclude``) so the gold answer never
    leaks into the input; at evaluation nothing is excluded.
    """

    def __init__(self, kg: KnowledgeGraph, use_neighbors: bool = True, min_words: int = 20, max_neighbors: int = 10):
        self.kg = kg
        self.use_neighbors = use_neighbors and max_neighbors > 0
        self.min_words = min_words
        neighbors: list[set[int]] = [set() for _ in range(kg.num_entities)]
        for h, _, t in kg.splits["train"]:
            neighbors[h].add(int(t))
            neighbors[t].add(int(h))
        ids = kg.entity_ids
        self.neighbors = [sorted(n, key=ids.__getitem__)[:max_neighbors] for n in neighbors]
        self.short = np.array([len(d.split()) < min_words for d in kg.entity_descriptions], dtype=bool)

    def variant(self, entity: int, exclude: int = -1) -> tuple[int, int]:
        """Canonical key of the text of ``entity`` with ``exclude`` removed from its neighbours."""
        if self.use_neighbors and self.short[entity] and exclude in self.neighbors[entity]:
            return entity, exclude
        return entity, -1

    def entity_text(self, entity: int, exclude: int = -1) -> str:
        """An entity's text: ``name: description``, plus its training neighbours' names when the description is short;
        ``exclude`` (a training example's own answer) is never among them."""
        name = self.kg.entity_names[entity]
        description = self.kg.entity_descriptions[entity]
        if self.use_neighbors and self.short[entity]:
            names = [self.kg.entity_names[n] for n in self.neighbors[entity] if n != exclude]
            description = f"{description} {' '.join(names)}".strip()
        return join_name_description(name, description)

    def relation_text(self, relation: int) -> str:
        """Relation ids ``>= num_relations`` are inverse relations (head prediction as tail prediction)."""
        r = self.kg.num_relations
        return self.kg.relation_texts[relation] if relation < r else INVERSE_PREFIX + self.kg.relation_texts[relation - r]


def with_inverses(triples: np.ndarray, num_relations: int) -> np.ndarray:
    """Forward queries ``(h, r, t)`` followed by inverse queries ``(t, r + R, h)``."""
    inverse = np.stack([triples[:, 2], triples[:, 1] + num_relations, triples[:, 0]], axis=1)
    return np.concatenate([triples, inverse], axis=0)
