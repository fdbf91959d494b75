"""Two models (or two recipes, one run per seed each) evaluated alike, compared query by query: the metric
differences with a paired bootstrap interval.

A difference between two MRRs on the same split is partly the luck of which triples the split holds. Resampling the
split's triples (both directions of a triple together) with replacement, and recomputing both models' metrics on
each resample, gives an interval for the difference that this luck alone would allow. The other half of "is this a
win" is the spread between training seeds: given several runs a side (one per seed), each resample also draws the
runs of each side with replacement, so the interval covers both, as a two-level bootstrap does. With two or three
seeds a side, resampling the seeds understates their spread (a bootstrap over three values is coarse); the per-run
values are given beside it.
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
    """``a`` against ``b`` (one or more runs each, one per seed): each compared metric's value for both, averaged over
    the runs of a side, ``a - b``, its bootstrap interval, and the per-run values."""

    a: list[str]
    b: list[str]
    variant: str
    split: str
    num_triples: int
    resamples: int
    confidence: float
    seed: int
    metrics: dict  # metric -> {"a", "b", "difference", "low", "high", "share_a_ahead", "a_runs", "b_runs"}

    @property
    def over_seeds(self) -> bool:
        """Whether the interval resamples runs (seeds) as well as triples."""
        return len(self.a) > 1 or len(self.b) > 1

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "variant": self.variant, "split": self.split,
                "num_triples": self.num_triples, "resamples": self.resamples, "confidence": self.confidence,
                "seed": self.seed, "over_seeds": self.over_seeds, "metrics": self.metrics}

    def verdict(self) -> str:
        """One line on MRR: who is ahead, and whether the interval leaves out zero."""
        m = self.metrics["mrr"]
        interval = f"{self.confidence:.0%} interval {m['low'] * 100:+.2f} to {m['high'] * 100:+.2f}"
        seeded = " and ".join(side for side, runs in (("a", self.a), ("b", self.b)) if len(runs) > 1)
        noise = f"the split's sampling and the seeds' spread of {seeded}" if seeded else "the split's sampling"
        if m["low"] > 0 or m["high"] < 0:
            leader = "a" if m["low"] > 0 else "b"
            return f"MRR a - b = {m['difference'] * 100:+.2f} ({interval}): {leader} is ahead beyond {noise}"
        return (f"MRR a - b = {m['difference'] * 100:+.2f} ({interval}): within what {noise} allows; "
                f"not a difference this {'evidence' if self.over_seeds else 'split'} can show")

    def table(self) -> str:
        resampled = (f"triples and runs ({len(self.a)} against {len(self.b)})" if self.over_seeds
                     else "triples")
        lines = [f"a: {', '.join(self.a)}", f"b: {', '.join(self.b)}",
                 f"{self.split}, {self.num_triples} triples x 2 directions, {self.variant}; paired bootstrap over "
                 f"{resampled}, {self.resamples} resamples, seed {self.seed}",
                 f"{'':9}{'a':>8}{'b':>8}{'a - b':>8}{'low':>8}{'high':>8}{'a ahead':>9}"]
        for key, m in self.metrics.items():
            lines.append(f"{key:9}{m['a'] * 100:8.2f}{m['b'] * 100:8.2f}{m['difference'] * 100:+8.2f}"
                         f"{m['low'] * 100:+8.2f}{m['high'] * 100:+8.2f}{m['share_a_ahead']:9.1%}")
        if self.over_seeds:
            for side in ("a", "b"):
                runs = " / ".join(f"{v * 100:.2f}" for v in self.metrics["mrr"][f"{side}_runs"])
                lines.append(f"MRR of each run of {side}: {runs}")
        lines.append(self.verdict())
        return "\n".join(lines)

    def save(self, folder: str | Path) -> Path:
        """``comparison.json`` in ``folder``."""
        RunFolder(folder).write_json("comparison.json", self.to_dict())
        return Path(folder)


def _as_runs(side: str | Path | list | tuple, name: str) -> list[str]:
    """One evaluation folder, or a list of them (one per seed)."""
    runs = [str(side)] if isinstance(side, (str, Path)) else [str(run) for run in side]
    if not runs:
        raise KGDistillError(f"compare: no evaluation folder given for {name}")
    return runs


def _mean_over_drawn(counts: np.ndarray, values: np.ndarray, picks: np.ndarray | None) -> np.ndarray:
    """Each resample's metrics for one side: the runs drawn (``picks``: resample x run indices; None for one run)
    averaged, each run's metrics averaged over the triples drawn (``counts``: resample x triple multiplicities)."""
    runs, triples, metrics = values.shape
    per_run = (counts @ values.transpose(1, 0, 2).reshape(triples, runs * metrics)) / triples
    per_run = per_run.reshape(len(counts), runs, metrics)  # resample x run x metric
    if picks is None:
        return per_run[:, 0]
    return np.take_along_axis(per_run, picks[:, :, None], axis=1).mean(axis=1)


def compare(a: str | Path | list, b: str | Path | list, variant: str = "no_rerank", resamples: int = 10_000,
            confidence: float = 0.95, seed: int = 0) -> Comparison:
    """Compare evaluation folders (run folders, or ``kgdistill evaluate --output`` folders) of the same split,
    candidates, filter, tie policy and re-ranking; refused otherwise. ``a`` and ``b`` are one folder each, or one
    folder per training seed (then the interval resamples the seeds too). ``variant``: ``no_rerank`` or ``rerank``."""
    if resamples < 1:
        raise KGDistillError(f"resamples must be a positive integer, got {resamples}")
    if not 0 < confidence < 1:
        raise KGDistillError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    runs_a, runs_b = _as_runs(a, "a"), _as_runs(b, "b")
    reference, values = None, {}
    for run in runs_a + runs_b:
        metrics, ranks = read_evaluation(run, variant)
        if reference is None:
            reference = (run, metrics)
        key = evaluation_mismatch(reference[1], metrics)
        if key is not None:
            raise KGDistillError(f"{run}: evaluated with {key} {metrics.get(key)!r} but {reference[0]} with "
                                 f"{reference[1].get(key)!r}; only evaluations made alike compare query by query")
        values[run] = _per_triple(ranks, int(metrics["num_triples"]))
    n = int(reference[1]["num_triples"])
    values_a = np.stack([values[run] for run in runs_a])  # run x triple x metric
    values_b = np.stack([values[run] for run in runs_b])
    rng = np.random.default_rng(seed)
    samples = []
    chunk = max(1, 1_000_000 // n)  # resamples per block: bounded memory on large splits
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        drawn = rng.integers(0, n, size=(size, n))  # triples drawn with replacement, the same for every run
        counts = np.bincount((drawn + n * np.arange(size)[:, None]).ravel(), minlength=size * n)
        counts = counts.reshape(size, n).astype(np.float64)
        picks_a = rng.integers(0, len(runs_a), size=(size, len(runs_a))) if len(runs_a) > 1 else None
        picks_b = rng.integers(0, len(runs_b), size=(size, len(runs_b))) if len(runs_b) > 1 else None
        samples.append(_mean_over_drawn(counts, values_a, picks_a) - _mean_over_drawn(counts, values_b, picks_b))
    samples = np.concatenate(samples)
    tail = (1 - confidence) / 2
    low, high = np.quantile(samples, [tail, 1 - tail], axis=0)
    per_run_a, per_run_b = values_a.mean(axis=1), values_b.mean(axis=1)  # run x metric
    result = {}  # share_a_ahead: a tie stays a tie despite rounding in the means (hence 1e-12, not 0)
    for i, key in enumerate(COMPARED):
        mean_a, mean_b = float(per_run_a[:, i].mean()), float(per_run_b[:, i].mean())
        result[key] = {"a": mean_a, "b": mean_b, "difference": mean_a - mean_b, "low": float(low[i]),
                       "high": float(high[i]), "share_a_ahead": float((samples[:, i] > 1e-12).mean()),
                       "a_runs": per_run_a[:, i].tolist(), "b_runs": per_run_b[:, i].tolist()}
    return Comparison(runs_a, runs_b, variant, str(reference[1].get("split")), n, resamples, confidence, seed, result)
