"""A small, reproducible knowledge graph cut from a large one: where a teacher can finish learning on two CPU cores.

Entities are collected by a seeded breadth-first walk over the training graph (each entity adds at most
``max_expand`` of its neighbours, in a seeded order, so one hub cannot fill the sample with its leaves); the
subgraph keeps every triple of every split whose two entities were both collected, and the entities' text as it is.
Its validation and test splits are small (WN18RR's 3 % each), so ``heldout`` moves seeded training triples into them
until each holds that many: only triples whose entity pair is linked by no other training triple (no reverse or
parallel edge left behind to give the answer away, as WN18RR removed its inverse relations) and whose entities keep
another training triple. The same source, size, seed and ``heldout`` always give the same files
(``tests/data/test_subgraph.py``).
"""
from __future__ import annotations

from collections import deque

import numpy as np

from ..errors import DataError
from .dataset import SPLITS, KnowledgeGraph


def sample_entities(kg: KnowledgeGraph, size: int, seed: int, max_expand: int = 8) -> np.ndarray:
    """``size`` entity numbers, sorted, reached by a seeded BFS over the training triples (restarted from a new
    random entity whenever the walk runs dry)."""
    if not 1 < size <= kg.num_entities:
        raise DataError(f"subgraph size {size}: must be in [2, {kg.num_entities}] (the entities of {kg.name})")
    if max_expand < 1:
        raise DataError(f"subgraph max_expand {max_expand}: must be >= 1")
    rng = np.random.default_rng(seed)
    train = kg.splits["train"]
    heads = np.concatenate([train[:, 0], train[:, 2]])
    tails = np.concatenate([train[:, 2], train[:, 0]])
    order = np.argsort(heads, kind="stable")
    heads, tails = heads[order], tails[order]
    starts = np.searchsorted(heads, np.arange(kg.num_entities + 1))
    chosen = np.zeros(kg.num_entities, dtype=bool)
    queue: deque[int] = deque()
    candidates = rng.permutation(kg.num_entities)
    next_start, count = 0, 0
    while count < size:
        if not queue:  # a new component: the next unchosen entity of a seeded permutation
            while chosen[candidates[next_start]]:
                next_start += 1
            entity = int(candidates[next_start])
            chosen[entity] = True
            count += 1
            queue.append(entity)
            continue
        entity = queue.popleft()
        neighbours = np.unique(tails[starts[entity]:starts[entity + 1]])
        neighbours = neighbours[~chosen[neighbours]]
        for neighbour in rng.permutation(neighbours)[:max_expand]:
            if count == size:
                break
            chosen[neighbour] = True
            count += 1
            queue.append(int(neighbour))
    return np.flatnonzero(chosen)


def move_heldout(splits: dict[str, np.ndarray], heldout: int, seed: int) -> dict[str, np.ndarray]:
    """Top up valid and test to ``heldout`` triples each from training triples that give nothing away (see above)."""
    train = splits["train"]
    pairs = np.sort(train[:, [0, 2]], axis=1)
    _, pair_id, pair_count = np.unique(pairs, axis=0, return_inverse=True, return_counts=True)
    degree = np.bincount(train[:, [0, 2]].ravel(), minlength=int(train[:, [0, 2]].max()) + 1)
    moved = {"valid": [], "test": []}
    wanted = {split: max(0, heldout - len(splits[split])) for split in moved}
    rng = np.random.default_rng([seed, 1])
    for row in rng.permutation(len(train)):
        split = "valid" if len(moved["valid"]) < wanted["valid"] else "test"
        if len(moved[split]) >= wanted[split]:
            break
        head, _, tail = train[row]
        if pair_count[pair_id[row]] != 1 or degree[head] < 2 or degree[tail] < 2 or head == tail:
            continue
        degree[head] -= 1
        degree[tail] -= 1
        moved[split].append(row)
    taken = np.zeros(len(train), dtype=bool)
    for split, rows in moved.items():
        taken[rows] = True
    out = {"train": train[~taken]}
    for split, rows in moved.items():
        out[split] = np.concatenate([splits[split], train[np.sort(np.asarray(rows, dtype=np.int64))]])
    return out


def induced_subgraph(kg: KnowledgeGraph, size: int, seed: int = 0, max_expand: int = 8,
                     heldout: int = 0) -> KnowledgeGraph:
    """The subgraph of ``size`` sampled entities (:func:`sample_entities`) with every split's triples between them,
    valid and test topped up to ``heldout`` triples each (:func:`move_heldout`); relations that no kept triple uses
    are dropped. Entities and relations keep their ids, text and order."""
    keep = sample_entities(kg, size, seed, max_expand)
    new_entity = np.full(kg.num_entities, -1, dtype=np.int64)
    new_entity[keep] = np.arange(len(keep))
    splits = {}
    for split in SPLITS:
        triples = kg.splits[split]
        inside = (new_entity[triples[:, 0]] >= 0) & (new_entity[triples[:, 2]] >= 0)
        splits[split] = triples[inside]
    if heldout:
        splits = move_heldout(splits, heldout, seed)
    used = np.unique(np.concatenate([splits[s][:, 1] for s in SPLITS]))
    new_relation = np.full(kg.num_relations, -1, dtype=np.int64)
    new_relation[used] = np.arange(len(used))
    for split in SPLITS:
        t = splits[split]
        splits[split] = np.stack([new_entity[t[:, 0]], new_relation[t[:, 1]], new_entity[t[:, 2]]], axis=1)
    if len(splits["train"]) == 0:
        raise DataError(f"subgraph of {size} entities of {kg.name} (seed {seed}) has no training triples")
    name = f"{kg.name}-sub{size}-seed{seed}" + (f"-heldout{heldout}" if heldout else "")
    return KnowledgeGraph(name, [kg.entity_ids[i] for i in keep], [kg.entity_names[i] for i in keep],
                          [kg.entity_descriptions[i] for i in keep], [kg.relation_ids[i] for i in used],
                          [kg.relation_texts[i] for i in used], splits, f"{kg.fingerprint}-sub{size}-{seed}-{max_expand}-{heldout}", name)
