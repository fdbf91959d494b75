"""Saved-run handling in one place: which folder holds the model, the config it was trained with, and the config a
job on it uses (the model's own dataset and text settings unless a dataset is named)."""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config import RunConfig, config_from_dict
from ..errors import CheckpointError, KGDistillError
from ..io import read_json_object
from ..models.biencoder import BiEncoder, load_model_tokenizer
from ..runfolder import RunFolder


def resolve_model_dir(path: str | Path, checkpoint: str = "last") -> Path:
    """A model folder, or a run folder whose checkpoint-last/-best is used (``checkpoint``: which first)."""
    path = Path(path)
    if (path / "model.json").is_file():
        return path
    for name in ([RunFolder.LAST, RunFolder.BEST] if checkpoint == "last" else [RunFolder.BEST, RunFolder.LAST]):
        if (path / name / "model.json").is_file():
            return path / name
    raise CheckpointError(f"{path}: no model here (expected model.json or a {RunFolder.LAST}/ folder)")


def run_dir_of(model_dir: Path) -> Path:
    """The run folder of a checkpoint folder; any other model folder is its own."""
    return model_dir.parent if model_dir.name in (RunFolder.LAST, RunFolder.BEST) else model_dir


def load_run_config(model_dir: Path) -> RunConfig | None:
    """The config saved beside a model (its run folder's config.yaml), when there is one."""
    for candidate in (model_dir / RunFolder.CONFIG, model_dir.parent / RunFolder.CONFIG):
        if candidate.is_file():
            try:
                return config_from_dict(yaml.safe_load(candidate.read_text(encoding="utf-8")))
            except (yaml.YAMLError, KGDistillError, TypeError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise CheckpointError(f"{candidate}: cannot read the saved config ({first})") from None
    return None


def chosen_checkpoint(path: str | Path, config: RunConfig) -> str:
    """Which checkpoint of a run a job on it loads: ``eval.checkpoint`` when the user set it, else the one the run
    itself was evaluated at (its config.yaml), so ``kgdistill evaluate RUN`` on an early-stopped run (a ``-best``
    control) scores the checkpoint its own metrics came from."""
    if "eval.checkpoint" in config.explicit:
        return config.eval.checkpoint
    saved = load_run_config(Path(path)) if Path(path).is_dir() else None
    return saved.eval.checkpoint if saved is not None else config.eval.checkpoint


def model_dataset(model_dir: Path) -> str | None:
    """The dataset named in a model folder's model.json, read without loading the weights."""
    try:
        return json.loads((model_dir / "model.json").read_text(encoding="utf-8"))["info"]["dataset"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # BiEncoder.load reports a broken model.json


def model_config(model_dir: Path, dataset: str | None = None, bundled: str | None = None) -> RunConfig:
    """The config a job on a saved model uses: the one it was trained with (defaults when the folder has none), on
    ``dataset`` when given (its layout recognised by its files), else on the model's own: an export's ``bundled``
    copy (a folder relative to the model's) when it is there, the run's dataset, or the one named in model.json."""
    saved = load_run_config(model_dir)
    config = copy.deepcopy(saved or RunConfig())
    if dataset is not None:
        config.data.dataset, config.data.format = str(dataset), "auto"
    elif bundled and (model_dir / bundled).is_dir():
        config.data.dataset = str(model_dir / bundled)
    elif saved is None:
        config.data.dataset = model_dataset(model_dir) or config.data.dataset
    return config


def load_model(path: str | Path, checkpoint: str = "last") -> tuple[BiEncoder, object, Path]:
    """A saved bi-encoder, its tokenizer and the model folder they came from (see :func:`resolve_model_dir`)."""
    folder = resolve_model_dir(path, checkpoint)
    return BiEncoder.load(folder), load_model_tokenizer(folder), folder


def load_teacher(path: str | Path) -> tuple[BiEncoder, object, Path]:
    """A teacher at the checkpoint its own metrics.json scored (its run's ``eval.checkpoint``; a model folder as it
    is), so a student learns from the model its "% of teacher" is measured against, also from an early-stopped
    teacher."""
    return load_model(path, chosen_checkpoint(path, RunConfig()))


def trained_steps(path: str | Path) -> int | None:
    """The steps a saved model was trained for: ``train_summary.json`` of its run folder (``path`` itself, or the run
    folder above a checkpoint); None when there is none (a bare model folder)."""
    folder = Path(path)
    for candidate in (folder, resolve_model_dir(folder).parent):
        steps = read_json_object(candidate / RunFolder.SUMMARY).get("steps")
        if isinstance(steps, int) and steps > 0:
            return steps
    return None


@dataclass
class RunFiles:
    """What a run folder (or pipeline grade, or export) says about its model: the one reader behind the ladder's
    report rows and the model cards."""

    folder: Path
    model_dir: Path
    meta: dict  # model.json
    metrics: dict  # metrics.json
    run: dict  # run.json
    summary: dict  # train_summary.json
    export: dict  # export.json

    @property
    def info(self) -> dict:
        return self.meta.get("info") or {}

    @property
    def size_mb(self) -> float | None:
        weights = self.model_dir / "model.safetensors"
        return round(weights.stat().st_size / 2**20, 1) if weights.is_file() else None

    def _rate(self, count: int, key: str) -> float | None:
        seconds = (self.metrics.get("seconds") or {}).get(key)
        return count / seconds if seconds else None

    @property
    def entities_per_s(self) -> float | None:
        """Entities encoded per second during the test evaluation."""
        return self._rate(self.metrics.get("num_entities", 0), "encode_entities")

    @property
    def queries_per_s(self) -> float | None:
        """Queries encoded per second during the test evaluation (both directions)."""
        return self._rate(2 * self.metrics.get("num_triples", 0), "encode_queries")


def read_run_files(folder: str | Path) -> RunFiles:
    folder = Path(folder)
    model_dir = resolve_model_dir(folder)
    return RunFiles(folder, model_dir, read_json_object(model_dir / "model.json"),
                    *(read_json_object(folder / name) for name in
                      (RunFolder.METRICS, RunFolder.RUN_INFO, RunFolder.SUMMARY, RunFolder.EXPORT)))
