"""Saved-run handling in one place: which folder holds the model, the config it was trained with, and the config a
job on it uses (the model's own dataset and text settings unless a dataset is named)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml

from ..config import RunConfig, config_from_dict
from ..errors import CheckpointError, KGDistillError
from ..models.biencoder import BiEncoder, load_model_tokenizer
from ..training.checkpoint import BEST, LAST


def resolve_model_dir(path: str | Path, checkpoint: str = "last") -> Path:
    """A model folder, or a run folder whose checkpoint-last/-best is used (``checkpoint``: which first)."""
    path = Path(path)
    if (path / "model.json").is_file():
        return path
    for name in ([LAST, BEST] if checkpoint == "last" else [BEST, LAST]):
        if (path / name / "model.json").is_file():
            return path / name
    raise CheckpointError(f"{path}: no model here (expected model.json or a {LAST}/ folder)")


def run_dir_of(model_dir: Path) -> Path:
    """The run folder of a checkpoint folder; any other model folder is its own."""
    return model_dir.parent if model_dir.name in (LAST, BEST) else model_dir


def load_run_config(model_dir: Path) -> RunConfig | None:
    """The config saved beside a model (its run folder's config.yaml), when there is one."""
    for candidate in (model_dir / "config.yaml", model_dir.parent / "config.yaml"):
        if candidate.is_file():
            try:
                return config_from_dict(yaml.safe_load(candidate.read_text(encoding="utf-8")))
            except (yaml.YAMLError, KGDistillError, TypeError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise CheckpointError(f"{candidate}: cannot read the saved config ({first})") from None
    return None


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
