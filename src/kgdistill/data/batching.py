"""Tokenise once, cache, and collate with dynamic padding; known-triple lookups for false-negative masks."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from .text import TextBuilder


class TokenStore:
    """Token id sequences (special tokens included) kept flat in two arrays, saved as .npz (never pickled)."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat, self.offsets = flat, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get(self, i: int) -> np.ndarray:
        """The token ids of sequence ``i``."""
        return self.flat[self.offsets[i]:self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        """Every sequence's length, in tokens."""
        return np.diff(self.offsets)

    @classmethod
    def from_lists(cls, seqs: list[list[int]]) -> "TokenStore":
        """A store from lists of token ids."""
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat = np.fromiter((t for s in seqs for t in s), dtype=np.int32, count=int(offsets[-1]))
        return cls(flat, offsets)


def tokenize(tokenizer, first: list[str], second: list[str] | None, max_tokens: int,
             batch: int = 4096) -> TokenStore:
    """Tokenise (pairs of) texts with the tokenizer's own special tokens and longest-first truncation."""
    seqs: list[list[int]] = []
    for start in range(0, len(first), batch):
        a = first[start:start + batch]
        b = None if second is None else second[start:start + batch]
        seqs.extend(tokenizer(a, b, truncation=True, max_length=max_tokens, add_special_tokens=True)["input_ids"])
    return TokenStore.from_lists(seqs)


def tokenizer_key(tokenizer) -> str:
    """Content hash of a tokenizer, so that token caches are shared by every model with the same vocabulary."""
    vocab = sorted(tokenizer.get_vocab().items())
    text = json.dumps([type(tokenizer).__name__, getattr(tokenizer, "do_lower_case", None), vocab])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cache_dir(cache_dir: str | None) -> Path:
    return Path(cache_dir or os.environ.get("KGDISTILL_CACHE", Path.home() / ".cache" / "kgdistill"))


class Tokenized:
    """Token ids for entity texts (by text variant) and (head text, relation) query pairs, cached on disk."""

    def __init__(self, tokenizer, tokenizer_key: str, max_tokens: int, cache_dir: str | None = None):
        self.tokenizer = tokenizer
        self.key = tokenizer_key
        self.max_tokens = max_tokens
        self.cache_dir = _cache_dir(cache_dir)
        self.uses_token_types = "token_type_ids" in getattr(tokenizer, "model_input_names", [])

    def _cached(self, name: str, parts: list[str], build) -> TokenStore:
        digest = hashlib.sha256("\x1f".join([self.key, str(self.max_tokens), *parts]).encode()).hexdigest()[:24]
        path = self.cache_dir / f"tokens-{name}-{digest}.npz"
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as data:
                    return TokenStore(data["flat"], data["offsets"])
            except (OSError, ValueError, KeyError):
                path.unlink(missing_ok=True)  # a corrupted cache entry is rebuilt, never trusted
        store = build()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, flat=store.flat, offsets=store.offsets)
            os.replace(tmp, path)
        except OSError:
            pass  # caching is an optimisation only
        return store

    def single(self, name: str, texts: list[str]) -> TokenStore:
        """Token ids of ``texts`` alone (entity texts), cached under ``name``."""
        return self._cached(name, texts, lambda: tokenize(self.tokenizer, texts, None, self.max_tokens))

    def pairs(self, name: str, first: list[str], second: list[str]) -> TokenStore:
        """Token ids of ``(first, second)`` text pairs (head text, relation), cached under ``name``."""
        return self._cached(name, [*first, "\x1e", *second],
                            lambda: tokenize(self.tokenizer, first, second, self.max_tokens))


@dataclass
class EncoderBatch:
    """Padded inputs for one encoder."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None = None

    def to(self, device) -> "EncoderBatch":
        """The batch on ``device``."""
        return EncoderBatch(self.input_ids.to(device), self.attention_mask.to(device),
                            None if self.token_type_ids is None else self.token_type_ids.to(device))

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def slice(self, start: int, stop: int) -> "EncoderBatch":
        """Rows ``start:stop`` of the batch."""
        tt = None if self.token_type_ids is None else self.token_type_ids[start:stop]
        return EncoderBatch(self.input_ids[start:stop], self.attention_mask[start:stop], tt)


def pad(seqs: list[np.ndarray], pad_id: int, token_types: bool, sep_id: int | None = None) -> EncoderBatch:
    """Right-pad to the longest sequence of the batch; token type 1 after the first [SEP] (BERT pairs)."""
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    types = None
    if token_types:
        types = np.zeros_like(ids)
        if sep_id is not None:
            is_sep = ids == sep_id
            first_sep = np.where(is_sep.any(1), is_sep.argmax(1), width)
            types = ((np.arange(width)[None, :] > first_sep[:, None]) & (mask == 1)).astype(np.int64)
    return EncoderBatch(torch.from_numpy(ids), torch.from_numpy(mask),
                        None if types is None else torch.from_numpy(types))


class KnownTails:
    """Set of known ``(query, tail)`` pairs, where a query is ``(head, relation or inverse relation)``.

    Stored as a sorted int64 array of ``query_key * num_entities + tail`` so that a whole B x C candidate grid is
    looked up at once with ``searchsorted``.
    """

    def __init__(self, queries: np.ndarray, num_entities: int, num_relations: int):
        self.num_entities = num_entities
        self.num_relations = num_relations  # forward relations; inverse ones are offset by this
        keys = self.query_key(queries[:, 0], queries[:, 1]) * num_entities + queries[:, 2]
        self.keys = np.unique(keys)

    def query_key(self, heads: np.ndarray, relations: np.ndarray) -> np.ndarray:
        """One integer per query ``(head, relation)``, inverse relations included."""
        return np.asarray(heads, dtype=np.int64) * (2 * self.num_relations) + np.asarray(relations, dtype=np.int64)

    def contains(self, heads: np.ndarray, relations: np.ndarray, tails: np.ndarray) -> np.ndarray:
        """Broadcasting membership test of ``tails`` as answers to queries ``(heads, relations)``."""
        keys = self.query_key(heads, relations) * self.num_entities + np.asarray(tails, dtype=np.int64)
        pos = np.searchsorted(self.keys, keys)
        pos = np.minimum(pos, len(self.keys) - 1)
        return self.keys[pos] == keys

    def tails_of(self, head: int, relation: int) -> np.ndarray:
        """The known answers of one query, sorted."""
        base = int(self.query_key(np.array(head), np.array(relation))) * self.num_entities
        lo, hi = np.searchsorted(self.keys, [base, base + self.num_entities])
        return self.keys[lo:hi] - base


@dataclass
class TrainBatch:
    """A batch of queries ``(h, r) -> t`` with the inputs of both encoders and what the masks need."""

    hr: EncoderBatch
    tail: EncoderBatch
    head: EncoderBatch | None
    heads: np.ndarray
    relations: np.ndarray
    tails: np.ndarray

    def to(self, device) -> "TrainBatch":
        """The batch's token tensors on ``device`` (entity ids stay NumPy arrays)."""
        return TrainBatch(self.hr.to(device), self.tail.to(device), None if self.head is None else self.head.to(device),
                          self.heads, self.relations, self.tails)

    def __len__(self) -> int:
        return len(self.heads)


class ExampleSet:
    """Queries of one split with their tokenised inputs, neighbour leakage handled per example (training mode)."""

    def __init__(self, queries: np.ndarray, texts: TextBuilder, tokenized: Tokenized, name: str, training: bool):
        self.queries = queries
        self.tokenized = tokenized
        tok = tokenized.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.sep_id = tok.sep_token_id
        heads, tails = queries[:, 0], queries[:, 2]
        if training:
            head_variants = [texts.variant(int(h), int(t)) for h, t in zip(heads, tails)]
            tail_variants = [texts.variant(int(t), int(h)) for h, t in zip(heads, tails)]
        else:
            head_variants = [(int(h), -1) for h in heads]
            tail_variants = [(int(t), -1) for t in tails]
        variants = sorted(set(head_variants) | set(tail_variants))
        index = {v: i for i, v in enumerate(variants)}
        self.entity_tokens = tokenized.single(f"{name}-entities",
                                              [texts.entity_text(e, x) for e, x in variants])
        self.head_index = np.array([index[v] for v in head_variants], dtype=np.int64)
        self.tail_index = np.array([index[v] for v in tail_variants], dtype=np.int64)
        pairs = sorted(set(zip(self.head_index.tolist(), queries[:, 1].tolist())))
        pair_index = {p: i for i, p in enumerate(pairs)}
        self.hr_tokens = tokenized.pairs(
            f"{name}-queries",
            [texts.entity_text(*variants[h]) for h, _ in pairs],
            [texts.relation_text(r) for _, r in pairs])
        self.hr_index = np.array([pair_index[(h, r)] for h, r in zip(self.head_index.tolist(),
                                                                      queries[:, 1].tolist())], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.queries)

    def encoder_lengths(self, with_heads: bool) -> list[np.ndarray]:
        """Per-example token counts of each input a training step encodes (query, tail, and head alone if used)."""
        entity = self.entity_tokens.lengths()
        parts = [self.hr_tokens.lengths()[self.hr_index], entity[self.tail_index]]
        return parts + [entity[self.head_index]] if with_heads else parts

    def padding_waste(self, batches: np.ndarray, with_heads: bool) -> float:
        """Fraction of pad tokens in the inputs :func:`pad` builds for ``batches`` (one row of rows per step)."""
        used = slots = 0
        for lengths in self.encoder_lengths(with_heads):
            per_batch = lengths[batches]
            used += int(per_batch.sum())
            slots += int(per_batch.max(1).sum()) * batches.shape[1]
        return 1 - used / slots

    def _pad(self, store: TokenStore, rows: np.ndarray) -> EncoderBatch:
        return pad([store.get(int(i)) for i in rows], self.pad_id, self.tokenized.uses_token_types, self.sep_id)

    def batch(self, rows: np.ndarray, with_heads: bool = True) -> TrainBatch:
        """The padded training batch of ``rows``; the head-alone text only with ``with_heads`` (self-negatives)."""
        q = self.queries[rows]
        return TrainBatch(
            hr=self._pad(self.hr_tokens, self.hr_index[rows]),
            tail=self._pad(self.entity_tokens, self.tail_index[rows]),
            head=self._pad(self.entity_tokens, self.head_index[rows]) if with_heads else None,
            heads=q[:, 0], relations=q[:, 1], tails=q[:, 2])


class BatchOrder:
    """Which training rows each step takes: a pure function of (seed, step), so a resumed run draws the same batches.

    Each epoch is a seeded permutation cut into full batches (the remainder is left out). With ``lengths`` (query and
    tail token counts, one row per example) batches are length-bucketed to cut padding while staying random enough
    for in-batch negatives: the permutation is split into pools of ``pool`` batches; a pool is sorted by query length,
    cut into about sqrt(pool) groups of whole batches, and each group sorted by tail length, so a batch holds queries
    and tails of similar length (the head-alone text is the query's entity: it follows). The epoch's batches are then
    shuffled, so each step draws a random pool's slice and lengths come in random order.
    """

    def __init__(self, size: int, batch_size: int, seed: int, lengths: np.ndarray | None = None, pool: int = 32):
        self.size, self.batch_size, self.seed, self.lengths, self.pool = size, batch_size, seed, lengths, pool
        self.steps_per_epoch = size // batch_size
        self._epoch: tuple[int, np.ndarray] | None = None

    @classmethod
    def for_training(cls, examples: ExampleSet, config: TrainConfig, seed: int) -> "BatchOrder":
        """The order ``config`` asks for (``train.length_bucketing``, ``train.bucket_pool``)."""
        lengths = np.stack(examples.encoder_lengths(with_heads=False), 1) if config.length_bucketing else None
        return cls(len(examples), config.batch_size, seed, lengths, config.bucket_pool)

    def _bucket(self, rows: np.ndarray) -> np.ndarray:
        by_query = rows[np.argsort(self.lengths[rows, 0], kind="stable")]
        batches = len(rows) // self.batch_size
        cuts = self.batch_size * np.round(np.linspace(0, batches, max(1, round(batches ** 0.5)) + 1)).astype(int)
        return np.concatenate([group[np.argsort(self.lengths[group, 1], kind="stable")]
                               for group in np.split(by_query, cuts[1:-1])])

    def epoch(self, epoch: int) -> np.ndarray:
        """The epoch's rows as a (steps_per_epoch, batch_size) array, one row of it a step."""
        if self._epoch is None or self._epoch[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            perm = rng.permutation(self.size)[:self.steps_per_epoch * self.batch_size]
            if self.lengths is not None:
                span = self.pool * self.batch_size
                perm = np.concatenate([self._bucket(rows) for rows in np.split(perm, range(span, len(perm), span))])
            batches = perm.reshape(self.steps_per_epoch, self.batch_size)
            if self.lengths is not None:
                batches = batches[rng.permutation(self.steps_per_epoch)]
            self._epoch = (epoch, batches)
        return self._epoch[1]

    def rows(self, step: int) -> np.ndarray:
        """The example rows of global step ``step``."""
        epoch, index = divmod(step, self.steps_per_epoch)
        return self.epoch(epoch)[index]


class TransferQueries:
    """Label-free queries for distillation's transfer set: ``count`` random (entity, relation or inverse relation)
    pairs over the whole graph, in the text evaluation encodes them in. The draw is a pure function of (seed, step,
    rank), so a resumed run draws the same queries and each torchrun rank its own (rank 0 the single process's); no
    triple (so no answer) is looked at."""

    def __init__(self, texts: TextBuilder, tokenized: Tokenized, count: int, seed: int, rank: int = 0):
        self.texts, self.tokenized, self.count, self.seed, self.rank = texts, tokenized, count, seed, rank

    def draw(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The heads and relations (inverse ones offset by the number of relations) of step ``step``."""
        kg = self.texts.kg
        stream = [self.seed, step, 0x7A5F] + ([self.rank] if self.rank else [])  # apart from the batch order's
        rng = np.random.default_rng(stream)
        return rng.integers(kg.num_entities, size=self.count), rng.integers(2 * kg.num_relations, size=self.count)

    def batch(self, step: int) -> EncoderBatch:
        """The padded query-encoder input of step ``step``."""
        heads, relations = self.draw(step)
        store = tokenize(self.tokenized.tokenizer, [self.texts.entity_text(int(h)) for h in heads],
                         [self.texts.relation_text(int(r)) for r in relations], self.tokenized.max_tokens)
        return pad_store_rows(store, np.arange(len(store)), self.tokenized)


def entity_token_store(texts: TextBuilder, tokenized: Tokenized, name: str) -> TokenStore:
    """Every entity's evaluation text (all neighbours, nothing excluded)."""
    return tokenized.single(f"{name}-all-entities",
                            [texts.entity_text(e) for e in range(texts.kg.num_entities)])


def pad_store_rows(store: TokenStore, rows: np.ndarray, tokenized: Tokenized) -> EncoderBatch:
    """Rows of a token store padded into one encoder batch with the tokenizer's pad and separator ids."""
    tok = tokenized.tokenizer
    return pad([store.get(int(i)) for i in rows], tok.pad_token_id if tok.pad_token_id is not None else 0,
               tokenized.uses_token_types, tok.sep_token_id)
