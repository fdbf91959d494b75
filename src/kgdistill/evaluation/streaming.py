"""Evaluation for millions of entities: fp16 entity shards on disk, queries streamed against them (docs/METHOD.md,
"Evaluation").

Entity vectors are written shard by shard (``shard-00000.npy``, ..., at most ``shard_size`` fp16 rows each), then a
manifest (``entities.json``: dim, count, and rows, bytes and sha256 of every shard) is written last and atomically, so
an interrupted write never passes for a finished store. Ranking memory-maps one shard at a time, scores it in fp32 and
adds up the per-shard counts that define a filtered rank, so memory follows ``query_chunk x shard_size`` and not the
number of entities.
"""
from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import KGDistillError
from ..io import atomic_write_bytes, atomic_write_json, sha256_file
from .ranks import NeighborhoodReranker, add_bonus_, count_above, ranks_from_counts

MANIFEST = "entities.json"
FORMAT = "kgdistill-entity-shards/1"


class EntityStoreError(KGDistillError):
    """An entity shard folder is unfinished, truncated, corrupted or disagrees with its manifest."""


def _shard_buffer(rows: int, dim: int) -> tuple[bytearray, np.ndarray]:
    """A whole ``.npy`` file in one buffer and a writable fp16 view of its rows: filled in place, written in one go."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
                                                  "fortran_order": False, "shape": (rows, dim)})
    head = header.getvalue()
    buffer = bytearray(len(head) + rows * dim * 2)
    buffer[:len(head)] = head
    return buffer, np.frombuffer(buffer, dtype=np.float16, offset=len(head)).reshape(rows, dim)


def _as_fp16(chunk: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(chunk, torch.Tensor):
        return chunk.detach().to("cpu", torch.float16).numpy()
    return np.asarray(chunk, dtype=np.float16)


def write_entity_shards(folder: str | Path, chunks: Iterable[np.ndarray | torch.Tensor], count: int,
                        shard_size: int) -> EntityShards:
    """Write ``count`` vectors, arriving chunk by chunk in entity order, as fp16 shards of ``shard_size`` rows.

    Only the shard being filled is held in memory, whatever the chunk sizes. Earlier shards in ``folder`` are removed
    first, and the manifest goes last: until it lands, the folder is not a store.
    """
    if count < 1 or shard_size < 1:
        raise ValueError(f"entity shards: count ({count}) and shard_size ({shard_size}) must be positive")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)
    for stale in folder.glob("shard-*.npy"):
        stale.unlink()
    sizes = [min(shard_size, count - start) for start in range(0, count, shard_size)]
    shards: list[dict] = []
    dim, buffer, view, filled, seen = None, None, None, 0, 0
    for chunk in chunks:
        chunk = _as_fp16(chunk)
        if chunk.ndim != 2 or chunk.shape[1] != (dim or chunk.shape[1]):
            raise ValueError(f"entity shards: expected chunks of shape (rows, {dim}), got {chunk.shape}")
        dim, seen = chunk.shape[1], seen + len(chunk)
        if seen > count:
            raise ValueError(f"entity shards: more than the {count} vectors announced")
        pos = 0
        while pos < len(chunk):
            if view is None:
                buffer, view = _shard_buffer(sizes[len(shards)], dim)
                filled = 0
            take = min(len(chunk) - pos, len(view) - filled)
            view[filled:filled + take] = chunk[pos:pos + take]
            filled, pos = filled + take, pos + take
            if filled == len(view):
                name = f"shard-{len(shards):05d}.npy"
                atomic_write_bytes(folder / name, buffer)
                shards.append({"file": name, "rows": len(view), "bytes": len(buffer),
                               "sha256": hashlib.sha256(buffer).hexdigest()})
                buffer = view = None
    if seen != count:
        raise ValueError(f"entity shards: {seen} vectors written, {count} announced")
    atomic_write_json(folder / MANIFEST, {"format": FORMAT, "dtype": "float16", "dim": dim, "count": count,
                                          "shards": shards})
    return EntityShards(folder)


class EntityShards:
    """A finished shard folder, checked against its manifest on opening; shards are memory-mapped one at a time.

    Opening checks every shard's presence, size and ``.npy`` header (cheap); ``verify_checksums`` also re-reads
    each shard against its sha256 (a full read of the store).
    """

    def __init__(self, folder: str | Path, verify_checksums: bool = False):
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.is_file():
            raise EntityStoreError(f"{path}: missing; not a finished entity shard folder (interrupted write?)")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            if manifest["format"] != FORMAT:
                raise ValueError
            self.dim, self.count = int(manifest["dim"]), int(manifest["count"])
            self.shards = [(str(s["file"]), int(s["rows"]), int(s["bytes"]), str(s["sha256"]))
                           for s in manifest["shards"]]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise EntityStoreError(f"{path}: manifest is corrupted or not a {FORMAT} manifest") from None
        self.offsets = np.concatenate([[0], np.cumsum([rows for _, rows, _, _ in self.shards])]).astype(np.int64)
        if self.offsets[-1] != self.count:
            raise EntityStoreError(f"{path}: shard rows add up to {self.offsets[-1]}, not the count {self.count}")
        for i, (name, _, size, digest) in enumerate(self.shards):
            file = self.folder / name
            if not file.is_file():
                raise EntityStoreError(f"{file}: missing (listed in {MANIFEST})")
            actual = file.stat().st_size
            if actual != size:
                raise EntityStoreError(f"{file}: {actual} bytes, expected {size} (truncated or replaced)")
            if verify_checksums and sha256_file(file) != digest:
                raise EntityStoreError(f"{file}: checksum mismatch (corrupted)")
            self._open(i)

    def __len__(self) -> int:
        return self.count

    def _open(self, i: int) -> np.ndarray:
        name, rows, _, _ = self.shards[i]
        file = self.folder / name
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise EntityStoreError(f"{file}: not a readable .npy shard ({str(exc).splitlines()[0]})") from None
        if array.dtype != np.float16 or array.shape != (rows, self.dim):
            raise EntityStoreError(f"{file}: holds {array.dtype} {array.shape}, expected float16 ({rows}, {self.dim})")
        return array

    def blocks(self, device: torch.device) -> Iterator[tuple[int, torch.Tensor]]:
        """(first entity, fp32 rows) shard by shard; each mapping is dropped as soon as its rows are converted, so
        resident memory holds one shard, never the whole store."""
        for i in range(len(self.shards)):
            yield int(self.offsets[i]), torch.from_numpy(np.asarray(self._open(i), dtype=np.float32)).to(device)

    def rows(self, ids: np.ndarray) -> torch.Tensor:
        """fp32 vectors of arbitrary entities (the gold answers of a query chunk), read shard by shard."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.count):
            raise IndexError(f"entity ids must be in [0, {self.count})")
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        shard_of = np.searchsorted(self.offsets, ids, side="right") - 1
        for i in np.unique(shard_of):
            pick = shard_of == i
            out[pick] = self._open(int(i))[ids[pick] - self.offsets[i]]
        return torch.from_numpy(out)


def merge_topk(best: tuple[torch.Tensor, torch.Tensor] | None, values: torch.Tensor, indices: torch.Tensor,
               k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Running top-k: the k largest of what was kept so far and a new block's candidates (global indices)."""
    if best is not None:
        values, indices = torch.cat([best[0], values], 1), torch.cat([best[1], indices], 1)
    top = values.topk(min(k, values.shape[1]), dim=1)
    return top.values, indices.gather(1, top.indices)


@torch.no_grad()
def rank_streaming(store: EntityShards, query_vectors: torch.Tensor, queries: np.ndarray, filter_rows: np.ndarray,
                   filter_cols: np.ndarray, tie_policy: str, reranker: NeighborhoodReranker | None = None,
                   top_k: int = 0) -> tuple[dict[str, np.ndarray], tuple[torch.Tensor, torch.Tensor] | None]:
    """:func:`~kgdistill.evaluation.ranks.rank_in_memory` one shard at a time.

    The counts behind a filtered rank (entries above and equal to the gold's score, filtered answers and the gold
    itself left out) add up over shards, and so does a running top-k; memory follows ``len(queries) x shard rows``.
    """
    device = query_vectors.device
    query_vectors = query_vectors.float()
    count = len(queries)
    gold = np.asarray(queries[:, 2], dtype=np.int64)
    # The same kind of product as a score block (this query chunk against a block of rows), so the gold's score matches
    # its entry in its own shard bit for bit in practice; that entry is left out of the counts either way.
    gold_scores = (query_vectors @ store.rows(gold).to(device).T).diagonal()
    thresholds = {"no_rerank": gold_scores}
    reach = None
    if reranker is not None:
        reach = reranker.reach(queries[:, 0])
        near_gold = torch.as_tensor(np.asarray(reach[np.arange(count), gold]).ravel() > 0)
        thresholds["rerank"] = add_bonus_(gold_scores.clone(), near_gold, reranker.weight)
    better = {name: torch.zeros(count, dtype=torch.long, device=device) for name in thresholds}
    ties = {name: torch.zeros(count, dtype=torch.long, device=device) for name in thresholds}
    top = None
    for start, block in store.blocks(device):
        stop = start + len(block)
        scores = query_vectors @ block.T
        del block
        inside = (filter_cols >= start) & (filter_cols < stop)
        f_rows = torch.as_tensor(filter_rows[inside], device=device)
        f_cols = torch.as_tensor(filter_cols[inside] - start, device=device)
        g_rows = np.flatnonzero((gold >= start) & (gold < stop))
        g_cols = torch.as_tensor(gold[g_rows] - start, device=device)
        g_rows = torch.as_tensor(g_rows, device=device)
        own = scores[g_rows, g_cols]
        scores[f_rows, f_cols] = float("-inf")
        if top_k:
            scores[g_rows, g_cols] = own  # the gold stays a candidate of the top-k ...
            values, indices = scores.topk(min(top_k, stop - start), dim=1)
            top = merge_topk(top, values, indices + start, top_k)
        scores[g_rows, g_cols] = float("-inf")  # ... but is neither better than nor tied with itself
        for name, threshold in thresholds.items():
            if name == "rerank":  # last: the bonus goes onto the block in place
                add_bonus_(scores, reranker.columns(reach, start, stop), reranker.weight)
            above, equal = count_above(scores, threshold)
            better[name] += above
            ties[name] += equal
        del scores  # before the next shard is read: one score block at a time
    ranks = {name: ranks_from_counts(better[name], ties[name], tie_policy).cpu().numpy() for name in thresholds}
    return ranks, top
