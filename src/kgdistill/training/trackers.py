"""Experiment trackers, as trainer callbacks: TensorBoard and MLflow (optional extras: ``pip install
'kgdistill[tensorboard]'`` or ``'kgdistill[mlflow]'``). Off by default; one choice (``tracker``, ``--tracker``) turns
one on for a job.

A tracker only mirrors what the JSONL log records (``train_log.jsonl`` stays the source of truth): every training
record under ``train/``, every validation under ``valid/``, at its step. TensorBoard writes event files to
``<run>/tensorboard``; MLflow logs to a local SQLite store, ``<run>/mlflow.db`` (MLflow 3 refuses its old file store),
unless ``MLFLOW_TRACKING_URI`` names another, with the run's config as parameters and ``@`` in metric names spelled
``_at_`` (``valid/valid_acc_at_1``: MLflow refuses ``@``).
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import KGDistillError
from .callbacks import Callback, StepEnd

TRACKERS = ("tensorboard", "mlflow")


class TrackerUnavailableError(KGDistillError):
    """The chosen tracker's package is not installed, or no such tracker exists."""


def _scalars(record: dict | None) -> dict[str, float]:
    return {k: float(v) for k, v in (record or {}).items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def mlflow_metric_name(name: str) -> str:
    """MLflow allows only alphanumerics and ``_ - . : /`` and spaces in metric names: ``acc@1`` -> ``acc_at_1``."""
    return name.replace("@", "_at_")


def _flat(values: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


class TensorBoardTracker(Callback):
    """Scalars to TensorBoard event files in ``folder`` (default ``<run>/tensorboard``); rank 0 only."""

    def __init__(self, folder: str | Path | None = None):
        try:  # now, so that a missing package fails before any model loads
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TrackerUnavailableError("tracker 'tensorboard': needs the package tensorboard (pip install "
                                          "tensorboard; or pip install 'kgdistill[tensorboard]')") from None
        self.summary_writer, self.folder, self.writer = SummaryWriter, folder, None

    def on_train_begin(self, trainer) -> None:
        if trainer.rank == 0:
            self.writer = self.summary_writer(log_dir=str(self.folder or trainer.run_dir / "tensorboard"))

    def on_step_end(self, trainer, step: StepEnd) -> None:
        if self.writer is None:
            return
        for prefix, values in (("train", step.record), ("valid", step.validation)):
            for key, value in _scalars(values).items():
                self.writer.add_scalar(f"{prefix}/{key}", value, step.step)
        if step.record is not None or step.validation is not None:
            self.writer.flush()

    def on_train_end(self, trainer, result) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class MLflowTracker(Callback):
    """Metrics and the run's config to MLflow: a local SQLite store in the run folder (``<run>/mlflow.db``) unless
    ``MLFLOW_TRACKING_URI`` or ``tracking_uri`` names another; one MLflow run per training run; rank 0 only."""

    def __init__(self, tracking_uri: str | None = None, experiment: str = "kgdistill"):
        try:  # now, so that a missing package fails before any model loads
            import mlflow
        except ImportError:
            raise TrackerUnavailableError("tracker 'mlflow': needs the package mlflow (pip install mlflow; or pip "
                                          "install 'kgdistill[mlflow]')") from None
        self.module, self.tracking_uri, self.experiment = mlflow, tracking_uri, experiment
        self.mlflow = None  # the module while a run is open

    def on_train_begin(self, trainer) -> None:
        if trainer.rank != 0:
            return
        mlflow = self.module
        local = f"sqlite:///{(trainer.run_dir / 'mlflow.db').resolve()}"
        mlflow.set_tracking_uri(self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or local)
        mlflow.set_experiment(self.experiment)
        mlflow.start_run(run_name=trainer.run_dir.name)
        mlflow.log_params(_flat(trainer.config.to_dict()))
        self.mlflow = mlflow

    def on_step_end(self, trainer, step: StepEnd) -> None:
        if self.mlflow is None:
            return
        for prefix, values in (("train", step.record), ("valid", step.validation)):
            scalars = {f"{prefix}/{mlflow_metric_name(k)}": v for k, v in _scalars(values).items()}
            if scalars:
                self.mlflow.log_metrics(scalars, step=step.step)

    def on_train_end(self, trainer, result) -> None:
        if self.mlflow is not None:
            self.mlflow.end_run(status="FINISHED" if result is not None else "FAILED")
            self.mlflow = None


def make_trackers(tracker: str | None) -> list[Callback]:
    """The callbacks of one tracker choice: none for None, else ``tensorboard`` or ``mlflow``."""
    if tracker is None:
        return []
    if tracker == "tensorboard":
        return [TensorBoardTracker()]
    if tracker == "mlflow":
        return [MLflowTracker()]
    raise TrackerUnavailableError(f"tracker {tracker!r}: expected one of {', '.join(TRACKERS)}")
