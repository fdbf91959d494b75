"""A run folder and the names of everything in it, in one place (as PyKEEN's pipeline result owns
``save_to_directory``): every job reads and writes its folder through :class:`RunFolder`.

A run folder holds ``config.yaml`` (the resolved config), ``run.json`` (seed, versions, precision), the training log
``train_log.jsonl``, ``train_summary.json``, ``metrics.json`` with ``ranks.npz`` (per-query ranks), the two
checkpoints (self-contained model folders) and a model card; a pipeline's folder holds ``plan.json`` (the stages and
the mean token lengths their costs were weighed by), one stage folder per stage (each marked done by ``stage.json``)
and the report.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .io import atomic_write_bytes, atomic_write_json, atomic_write_text


class RunFolder:
    """The files of one run (or pipeline) folder: their names, and reading and writing them atomically."""

    CONFIG = "config.yaml"
    RUN_INFO = "run.json"
    LOG = "train_log.jsonl"
    SUMMARY = "train_summary.json"
    METRICS = "metrics.json"
    PREDICTIONS = "predictions.jsonl"
    RANKS = "ranks.npz"  # every evaluated query's rank, per variant (kgdistill compare)
    LAST = "checkpoint-last"
    BEST = "checkpoint-best"
    CARD = "README.md"
    STAGE_DONE = "stage.json"
    PLAN = "plan.json"
    REPORT = "report"  # report.json, report.md, report.png
    EXPORT = "export.json"  # an export folder's description (kgdistill export)

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def checkpoint(self, name: str = LAST) -> Path:
        """``checkpoint-last`` or ``checkpoint-best``."""
        return self.path / name

    def read_json(self, name: str) -> dict[str, Any] | None:
        """A JSON file of the folder, None when it is absent."""
        path = self.path / name
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def write_json(self, name: str, value: Any) -> Path:
        atomic_write_json(self.path / name, value)
        return self.path / name

    def write_text(self, name: str, text: str) -> Path:
        atomic_write_text(self.path / name, text)
        return self.path / name

    def write_bytes(self, name: str, data: bytes) -> Path:
        atomic_write_bytes(self.path / name, data)
        return self.path / name
