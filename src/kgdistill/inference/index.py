"""Entity index: every entity's vector saved as ``.npy`` beside the model, memory-mapped, searched exactly or by FAISS.

Layout (two files with one stem, e.g. ``run/index/checkpoint-last.{npy,json}``):

- ``<stem>.npy``: ``(num_entities, dim)`` float16 or float32 unit vectors, opened with ``np.load(mmap_mode='r')``;
- ``<stem>.json``: entity ids (row order), dtype, dim, the size and sha256 of ``<stem>.npy`` (written after it), the
  model fingerprint (sha256 of ``model.safetensors`` as listed in the model folder's manifest) and a key of the data
  and text settings the vectors were encoded with.

An index whose fingerprint or data key differs from the model and data in use is stale, and one whose ``.npy`` fails
its size or checksum is damaged: either is rebuilt, never used.
Search is exact by default: torch matmul over chunks of rows with a running top-k, so memory stays bounded by
``queries x chunk``. FAISS (``pip install faiss-cpu``) adds flat, IVF and HNSW indexes; building one reports its
recall@10 against the exact search.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..runfolder import RunFolder
from ..errors import CheckpointError, KGDistillError
from ..io import MANIFEST, atomic_write_bytes, atomic_write_json, sha256_file

log = logging.getLogger("kgdistill")

INDEX_FORMAT = "kgdistill-entity-index"
INDEX_VERSION = 2  # 2: the .npy checksum
DTYPES = {"fp32": np.float32, "fp16": np.float16}
FAISS_KINDS = ("flat", "ivf", "hnsw")
CHECKPOINT_NAMES = (RunFolder.LAST, RunFolder.BEST)


class IndexUnavailableError(KGDistillError):
    """An optional index backend (FAISS) is not installed or cannot serve the request."""


def model_fingerprint(model_dir: str | Path, weights: str = "model.safetensors") -> str:
    """sha256 of the weights as recorded in the model folder's manifest (hashed from the file if not listed)."""
    model_dir = Path(model_dir)
    try:
        files = json.loads((model_dir / MANIFEST).read_text(encoding="utf-8"))["files"]
        return str(files[weights]["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        path = model_dir / weights
        if not path.is_file():
            raise CheckpointError(f"{path}: missing; cannot fingerprint the model for its entity index") from None
        return sha256_file(path)


def default_index_location(model_dir: str | Path) -> tuple[Path, str]:
    """(folder, stem): ``<run>/index/<checkpoint>`` for a run's checkpoint, else ``<model>/index/entities``."""
    model_dir = Path(model_dir)
    if model_dir.name in CHECKPOINT_NAMES:
        return model_dir.parent / "index", model_dir.name
    return model_dir / "index", "entities"


def _faiss():
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # not the 'trying AVX512...' lines
    try:
        import faiss  # noqa: PLC0415
    except ImportError:
        raise IndexUnavailableError("the FAISS index needs the package faiss-cpu (pip install faiss-cpu); "
                                    "the default exact index needs nothing") from None
    return faiss


def recall_at(exact: np.ndarray, approx: np.ndarray, k: int = 10) -> float:
    """Mean fraction of the exact top-k rows that the approximate top-k also returns."""
    hits = [len(set(e[:k].tolist()) & set(a[:k].tolist())) / max(1, min(k, len(e))) for e, a in zip(exact, approx)]
    return float(np.mean(hits)) if hits else 1.0


class EntityIndex:
    """Entity vectors (memory-mapped base rows plus in-memory rows added later) with top-k inner-product search."""

    def __init__(self, vectors: np.ndarray, ids: list[str], meta: dict | None = None, chunk_size: int = 32768):
        if vectors.ndim != 2 or len(vectors) != len(ids):
            raise CheckpointError(f"entity index: {vectors.shape} vectors for {len(ids)} ids")
        self.vectors = vectors
        self.ids = list(ids)
        self.meta = dict(meta or {})
        self.chunk_size = chunk_size
        self.extra = np.zeros((0, vectors.shape[1]), dtype=np.float32)  # rows added after loading (not saved)
        self.extra_ids: list[str] = []
        self.faiss_index = None
        self.faiss_kind: str | None = None
        self.faiss_report: dict | None = None

    # ------------------------------------------------------------------ shape
    @property
    def dim(self) -> int:
        """Vector size."""
        return int(self.vectors.shape[1])

    @property
    def num_base(self) -> int:
        """Rows saved on disk (added rows excluded)."""
        return int(self.vectors.shape[0])

    def __len__(self) -> int:
        return self.num_base + len(self.extra)

    @property
    def dtype(self) -> str:
        """``fp16`` or ``fp32``: how the base rows are stored."""
        return "fp16" if self.vectors.dtype == np.float16 else "fp32"

    def all_ids(self) -> list[str]:
        """Entity ids of every row, base rows first."""
        return self.ids + self.extra_ids

    # ------------------------------------------------------------------ rows
    def _block(self, start: int, stop: int) -> torch.Tensor:
        """float32 rows ``start:stop`` of the combined (base + added) matrix."""
        parts = []
        if start < self.num_base:
            parts.append(np.array(self.vectors[start:min(stop, self.num_base)], dtype=np.float32))
        if stop > self.num_base:
            parts.append(self.extra[max(0, start - self.num_base):stop - self.num_base])
        return torch.from_numpy(parts[0] if len(parts) == 1 else np.concatenate(parts))

    def rows(self, rows: list[int] | np.ndarray) -> torch.Tensor:
        """float32 vectors of the given rows."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        base = rows < self.num_base
        if base.any():
            out[base] = np.asarray(self.vectors[rows[base]], dtype=np.float32)
        if (~base).any():
            out[~base] = self.extra[rows[~base] - self.num_base]
        return torch.from_numpy(out)

    def add(self, ids: list[str], vectors: torch.Tensor | np.ndarray) -> None:
        """Append rows in memory (also to a built FAISS index); the saved files are left as they are."""
        vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(vectors) != len(ids):
            raise KGDistillError(f"entity index: cannot add {vectors.shape} vectors for {len(ids)} ids")
        self.extra = np.concatenate([self.extra, vectors])
        self.extra_ids.extend(ids)
        if self.faiss_index is not None:
            self.faiss_index.add(vectors)

    # ------------------------------------------------------------------ search
    @torch.no_grad()
    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        """(B, len) float32 scores of the queries against every row, computed chunk by chunk."""
        queries = queries.float().cpu()
        out = torch.empty(len(queries), len(self), dtype=torch.float32)
        for start in range(0, len(self), self.chunk_size):
            stop = min(start + self.chunk_size, len(self))
            out[:, start:stop] = queries @ self._block(start, stop).T
        return out

    @torch.no_grad()
    def search_exact(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact top-k by inner product: (scores, rows), each (B, min(k, len)), best first."""
        queries = queries.float().cpu()
        k = max(0, min(int(k), len(self)))
        best_s = torch.empty(len(queries), 0)
        best_i = torch.empty(len(queries), 0, dtype=torch.long)
        for start in range(0, len(self), self.chunk_size):
            stop = min(start + self.chunk_size, len(self))
            scores = queries @ self._block(start, stop).T
            s, i = scores.topk(min(k, stop - start), dim=1)
            best_s, order = torch.cat([best_s, s], 1).topk(min(k, best_s.shape[1] + s.shape[1]), dim=1)
            best_i = torch.cat([best_i, i + start], 1).gather(1, order)
        return best_s, best_i

    def search(self, queries: torch.Tensor, k: int, exact: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k rows; FAISS when one is built (rows it could not fill are -1 with score -inf), else exact."""
        if self.faiss_index is None or exact:
            return self.search_exact(queries, k)
        k = max(0, min(int(k), len(self)))
        scores, rows = self.faiss_index.search(np.ascontiguousarray(queries.float().cpu().numpy()), k)
        scores = torch.from_numpy(scores.astype(np.float32))
        rows = torch.from_numpy(rows.astype(np.int64))
        scores[rows < 0] = float("-inf")
        return scores, rows

    # ------------------------------------------------------------------ FAISS
    def build_faiss(self, kind: str = "hnsw", sample_queries: torch.Tensor | None = None, nlist: int | None = None,
                    nprobe: int | None = None, hnsw_m: int = 32, ef_search: int = 128, k: int = 10) -> dict:
        """Build a FAISS inner-product index over all rows and measure its recall@k against exact search."""
        if kind not in FAISS_KINDS:
            raise KGDistillError(f"index kind '{kind}': expected exact or one of {', '.join(FAISS_KINDS)}")
        faiss = _faiss()
        data = np.ascontiguousarray(self._block(0, len(self)).numpy())
        n, d = data.shape
        params: dict = {}
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "ivf":
            nlist = max(1, min(nlist or int(4 * math.sqrt(n)), n))
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(data)
            index.nprobe = max(1, min(nprobe or max(1, nlist // 8), nlist))
            self._faiss_keep = quantizer  # the coarse quantizer must outlive the index
            params = {"nlist": nlist, "nprobe": index.nprobe}
        else:
            index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = max(40, 2 * hnsw_m)
            index.hnsw.efSearch = ef_search
            params = {"m": hnsw_m, "ef_search": ef_search}
        index.add(data)
        if sample_queries is None or len(sample_queries) == 0:
            rng = np.random.default_rng(0)
            sample_queries = torch.from_numpy(data[rng.choice(n, min(n, 256), replace=False)])
        sample_queries = sample_queries.float().cpu()[:1000]
        _, exact_rows = self.search_exact(sample_queries, k)
        _, approx_rows = index.search(np.ascontiguousarray(sample_queries.numpy()), min(k, n))
        recall = recall_at(exact_rows.numpy(), approx_rows, k)
        self.faiss_index, self.faiss_kind = index, kind
        self.faiss_report = {"kind": kind, **params, "rows": n, f"recall@{k}": recall,
                             "sample_queries": len(sample_queries)}
        log.info("FAISS %s index over %d entities: recall@%d vs exact %.4f (%d sample queries)",
                 kind, n, k, recall, len(sample_queries))
        return self.faiss_report

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path, stem: str) -> tuple[Path, Path]:
        """Write ``<stem>.npy`` then ``<stem>.json`` atomically (base rows only; added rows are not saved)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        npy, meta_path = folder / f"{stem}.npy", folder / f"{stem}.json"
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(self.vectors), allow_pickle=False)
        data = buffer.getvalue()
        atomic_write_bytes(npy, data)
        meta = {**self.meta, "format": INDEX_FORMAT, "version": INDEX_VERSION, "dtype": self.dtype,
                "dim": self.dim, "count": self.num_base, "npy_bytes": len(data),
                "npy_sha256": hashlib.sha256(data).hexdigest(), "ids": self.ids}
        atomic_write_json(meta_path, meta)
        self.meta = meta
        return npy, meta_path

    @staticmethod
    def verify(npy: Path, meta: dict) -> None:
        """Raise :class:`CheckpointError` naming ``npy`` unless its size and sha256 are the ones its JSON records."""
        size = npy.stat().st_size
        if size != meta["npy_bytes"]:
            raise CheckpointError(f"{npy}: {size} bytes, expected {meta['npy_bytes']} (truncated or replaced)")
        if sha256_file(npy) != meta["npy_sha256"]:
            raise CheckpointError(f"{npy}: checksum mismatch (corrupted)")

    @classmethod
    def open(cls, folder: str | Path, stem: str, expect: dict | None = None) -> "EntityIndex | None":
        """Memory-map a saved index; None (logged) when it is missing, unreadable, damaged (:meth:`verify`) or stale
        (``expect`` keys differ)."""
        folder = Path(folder)
        npy, meta_path = folder / f"{stem}.npy", folder / f"{stem}.json"
        if not (npy.is_file() and meta_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("format") != INDEX_FORMAT or meta.get("version") != INDEX_VERSION:
                raise ValueError("unknown format")
            for key, value in (expect or {}).items():
                if meta.get(key) != value:
                    log.info("entity index %s is stale (%s differs); rebuilding", meta_path, key)
                    return None
            cls.verify(npy, meta)
            vectors = np.load(npy, mmap_mode="r", allow_pickle=False)
            if vectors.shape != (meta["count"], meta["dim"]) or vectors.dtype != DTYPES[meta["dtype"]]:
                raise ValueError(f"shape {vectors.shape} {vectors.dtype} differs from the one recorded")
            return cls(vectors, meta["ids"], meta)
        except (CheckpointError, OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            log.warning("entity index %s cannot be used (%s); rebuilding", meta_path, exc)
            return None


def build_index(vectors: torch.Tensor | np.ndarray, ids: list[str], dtype: str = "fp32",
                meta: dict | None = None) -> EntityIndex:
    """An in-memory index from freshly encoded vectors, stored as ``dtype`` (fp32 or fp16)."""
    if dtype not in DTYPES:
        raise KGDistillError(f"index dtype '{dtype}': expected one of {', '.join(DTYPES)}")
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().float().cpu().numpy()
    return EntityIndex(np.ascontiguousarray(vectors.astype(DTYPES[dtype])), ids, meta)


@dataclass
class IndexStore:
    """Where a predictor keeps its entity index: ``folder``/``stem`` (None: in memory only), the ``dtype`` of a newly
    built one (None: fp32; a saved index of any dtype is then reused) and whether a new one is ``save``d there."""

    folder: str | Path | None = None
    stem: str = "entities"
    dtype: str | None = None
    save: bool = True

    def load_or_build(self, expect: dict, encode: Callable[[], torch.Tensor], ids: list[str],
                      meta: dict | None = None) -> EntityIndex:
        """The saved index when its ``expect`` keys (model fingerprint, data key) match, else one built from
        ``encode()`` (and saved when it can be; a folder that cannot be written keeps it in memory)."""
        if self.dtype is not None and self.dtype not in DTYPES:
            raise KGDistillError(f"index dtype '{self.dtype}': expected one of {', '.join(DTYPES)}")
        expect = {**expect, **({"dtype": self.dtype} if self.dtype is not None else {})}
        if self.folder is not None:
            found = EntityIndex.open(self.folder, self.stem, expect)
            if found is not None:
                return found
        index = build_index(encode(), ids, self.dtype or "fp32", {**expect, **(meta or {})})
        if self.folder is not None and self.save:
            try:
                index.save(self.folder, self.stem)
                return EntityIndex.open(self.folder, self.stem, expect) or index
            except OSError as exc:
                log.warning("entity index not saved to %s (%s); kept in memory", self.folder, exc.strerror or exc)
        return index

