"""Two models evaluated alike, compared query by query: the metric differences with a paired bootstrap interval.

A difference between two MRRs on the same split is partly the luck of which triples the split holds. Resampling the
split's triples (both directions of a triple together) with replacement, and recomputing both models' metrics on
each resample, gives an interval for the difference that this luck alone would allow. It says nothing about the
spread between training seeds, which is the other half of "is this a win": give both.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import KGDistillError
from ..results import Result
from ..runfolder import RunFolder
from ..io import read_json_object
from .ranking import evaluation_mismatch

COMPARED = ("mrr", "hits@1", "hits@3", "hits@10")


def _per_triple(ranks: np.ndarray, num_triples: int) -> np.ndarray:
    """Per triple, each compared metric averaged over its two directions: rows average to the 'both' metrics."""
    forward, backward = ranks[:num_triples], ranks[num_triples:]
    columns = []
    for key in COMPARED:
        if key == "mrr":
            columns.append((1.0 / forward + 1.0 / backward) / 2)
        else:
            k = int(key.split("@")[1])
            columns.append(((forward <= k).astype(float) + (backward <= k)) / 2)
    return np.stack(columns, axis=1)


def read_evaluation(folder: str | Path, variant: str) -> tuple[dict, np.ndarray]:
    """An evaluation folder's ``metrics.json`` and per-query ranks of ``variant``; a one-line error naming the file
    when either is missing, unreadable or disagrees with the other."""
    folder = Path(folder)
    metrics = read_json_object(folder / RunFolder.METRICS)
    if not metrics:
        raise KGDistillError(f"{folder}: no {RunFolder.METRICS} here (evaluate it: kgdistill evaluate --model "
                             f"{folder} --split SPLIT --output {folder})")
    path = folder / RunFolder.RANKS
    if not path.is_file():
        raise KGDistillError(f"{path}: missing (an evaluation made before kgdistill saved per-query ranks; evaluate "
                             f"it again: kgdistill evaluate --model MODEL --split {metrics.get('split')} "
                             f"--output {folder})")
    try:
        with np.load(path, allow_pickle=False) as data:
            if variant not in data.files:
                raise KGDistillError(f"{path}: no '{variant}' ranks (has: {', '.join(data.files)})")
            ranks = np.asarray(data[variant], dtype=np.float64)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        raise KGDistillError(f"{path}: not a readable ranks file (evaluate the model again)") from None
    triples = metrics.get("num_triples")
    if not isinstance(triples, int) or triples < 1:
        raise KGDistillError(f"{folder / RunFolder.METRICS}: num_triples is {triples!r}, not a positive count")
    expected = 2 * triples
    if ranks.ndim != 1 or len(ranks) != expected or not np.all(ranks >= 1):
        raise KGDistillError(f"{path}: {ranks.size} ranks, but {RunFolder.METRICS} counts {expected // 2} triples "
                             f"(two queries each, every rank >= 1); evaluate the model again")
    return metrics, ranks


@dataclass
class Comparison(Result):
    """``a`` against ``b``: each compared metric's value for both, ``a - b``, and its bootstrap interval."""

    a: str
    b: str
    variant: str
    split: str
    num_triples: int
    resamples: int
    confidence: float
    seed: int
    metrics: dict  # metric -> {"a", "b", "difference", "low", "high", "share_a_ahead"}

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "variant": self.variant, "split": self.split,
                "num_triples": self.num_triples, "resamples": self.resamples, "confidence": self.confidence,
                "seed": self.seed, "metrics": self.metrics}

    def verdict(self) -> str:
        """One line on MRR: who is ahead, and whether the interval leaves out zero."""
        m = self.metrics["mrr"]
        interval = f"{self.confidence:.0%} interval {m['low'] * 100:+.2f} to {m['high'] * 100:+.2f}"
        if m["low"] > 0 or m["high"] < 0:
            leader = "a" if m["low"] > 0 else "b"
            return (f"MRR a - b = {m['difference'] * 100:+.2f} ({interval}): {leader} is ahead beyond the split's "
                    f"sampling")
        return (f"MRR a - b = {m['difference'] * 100:+.2f} ({interval}): within what the split's sampling allows; "
                f"not a difference this split can show")

    def table(self) -> str:
        lines = [f"a: {self.a}", f"b: {self.b}",
                 f"{self.split}, {self.num_triples} triples x 2 directions, {self.variant}; paired bootstrap over "
                 f"triples, {self.resamples} resamples, seed {self.seed}",
                 f"{'':9}{'a':>8}{'b':>8}{'a - b':>8}{'low':>8}{'high':>8}{'a ahead':>9}"]
        for key, m in self.metrics.items():
            lines.append(f"{key:9}{m['a'] * 100:8.2f}{m['b'] * 100:8.2f}{m['difference'] * 100:+8.2f}"
                         f"{m['low'] * 100:+8.2f}{m['high'] * 100:+8.2f}{m['share_a_ahead']:9.1%}")
        lines.append(self.verdict())
        return "\n".join(lines)

    def save(self, folder: str | Path) -> Path:
        """``comparison.json`` in ``folder``."""
        RunFolder(folder).write_json("comparison.json", self.to_dict())
        return Path(folder)


def compare(a: str | Path, b: str | Path, variant: str = "no_rerank", resamples: int = 10_000,
            confidence: float = 0.95, seed: int = 0) -> Comparison:
    """Compare two evaluation folders (run folders, or ``kgdistill evaluate --output`` folders) of the same split,
    candidates, filter, tie policy and re-ranking; refused otherwise. ``variant``: ``no_rerank`` or ``rerank``."""
    if resamples < 1:
        raise KGDistillError(f"resamples must be a positive integer, got {resamples}")
    if not 0 < confidence < 1:
        raise KGDistillError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    metrics_a, ranks_a = read_evaluation(a, variant)
    metrics_b, ranks_b = read_evaluation(b, variant)
    key = evaluation_mismatch(metrics_a, metrics_b)
    if key is not None:
        raise KGDistillError(f"{b}: evaluated with {key} {metrics_b.get(key)!r} but {a} with "
                             f"{metrics_a.get(key)!r}; only evaluations made alike compare query by query")
    n = int(metrics_a["num_triples"])
    values_a, values_b = _per_triple(ranks_a, n), _per_triple(ranks_b, n)
    differences = values_a - values_b
    rng = np.random.default_rng(seed)
    samples = []
    chunk = max(1, 1_000_000 // n)  # resamples per block: bounded memory on large splits
    for start in range(0, resamples, chunk):
        drawn = rng.integers(0, n, size=(min(chunk, resamples - start), n))  # triples drawn with replacement
        samples.append(np.stack([differences[:, i][drawn].mean(axis=1) for i in range(len(COMPARED))], axis=1))
    samples = np.concatenate(samples)
    tail = (1 - confidence) / 2
    low, high = np.quantile(samples, [tail, 1 - tail], axis=0)
    result = {}
    for i, key in enumerate(COMPARED):
        result[key] = {"a": float(values_a[:, i].mean()), "b": float(values_b[:, i].mean()),
                       "difference": float(differences[:, i].mean()), "low": float(low[i]), "high": float(high[i]),
                       "share_a_ahead": float((samples[:, i] > 0).mean())}
    return Comparison(str(a), str(b), variant, str(metrics_a.get("split")), n, resamples, confidence, seed, result)
