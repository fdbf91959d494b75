"""kgdistill: text-based knowledge graph completion (SimKGC) made small and fast by progressive distillation (PMD).

Public API (imports are lazy, so ``import kgdistill`` stays cheap and runs nothing): the jobs ``train``,
``evaluate``, ``compare``, ``distill``, ``pipeline`` and ``export_model``, each returning a typed result
(``TrainOutcome``, ``EvaluationResult``, ``Comparison``, ``Report``, ``ExportResult``: ``to_dict()``, ``table()``,
``save(folder)``); ``Predictor`` and ``serve`` to use a trained model; ``load_dataset``, ``load_model``,
``build_config``, ``RunConfig``; and ``KGDistillError``, the base of every error caused by user input.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ._version import __version__

if TYPE_CHECKING:  # what IDEs and type checkers see; at run time each name is imported on first use
    from .config import RunConfig, build_config
    from .data.loading import load_dataset
    from .jobs.distill import distill
    from .jobs.pipeline import pipeline
    from .pmd.report import Report
    from .pmd.seeds import SeedsReport, seeds_report
    from .errors import KGDistillError
    from .evaluation.compare import Comparison, compare
    from .evaluation.ranking import EvaluationResult
    from .jobs.export import ExportResult, export_model
    from .inference.predictor import Prediction, Predictor
    from .inference.server import serve
    from .jobs.evaluate import evaluate
    from .store.saved import load_model
    from .jobs.train import TrainOutcome, train
    from .jobs.tune import TuneResult, tune
    from .data.frames import from_dataframes, to_dataframes
    from .results import Result

_EXPORTS = {
    "train": "kgdistill.jobs.train",
    "evaluate": "kgdistill.jobs.evaluate",
    "TrainOutcome": "kgdistill.jobs.train",
    "load_model": "kgdistill.store.saved",
    "distill": "kgdistill.jobs.distill",
    "pipeline": "kgdistill.jobs.pipeline",
    "Report": "kgdistill.pmd.report",
    "SeedsReport": "kgdistill.pmd.seeds",
    "seeds_report": "kgdistill.pmd.seeds",
    "EvaluationResult": "kgdistill.evaluation.ranking",
    "compare": "kgdistill.evaluation.compare",
    "Comparison": "kgdistill.evaluation.compare",
    "export_model": "kgdistill.jobs.export",
    "ExportResult": "kgdistill.jobs.export",
    "Predictor": "kgdistill.inference.predictor",
    "Prediction": "kgdistill.inference.predictor",
    "serve": "kgdistill.inference.server",
    "load_dataset": "kgdistill.data.loading",
    "from_dataframes": "kgdistill.data.frames",
    "to_dataframes": "kgdistill.data.frames",
    "tune": "kgdistill.jobs.tune",
    "TuneResult": "kgdistill.jobs.tune",
    "build_config": "kgdistill.config",
    "RunConfig": "kgdistill.config",
    "Result": "kgdistill.results",
    "KGDistillError": "kgdistill.errors",
}

__all__ = ["Comparison", "EvaluationResult", "ExportResult", "KGDistillError", "Prediction", "Predictor", "Report",
           "Result", "RunConfig", "SeedsReport", "TrainOutcome", "__version__", "build_config", "compare", "distill",
           "evaluate", "export_model", "from_dataframes", "load_dataset", "load_model", "pipeline", "seeds_report",
           "serve", "to_dataframes", "train", "TuneResult", "tune"]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kgdistill' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})

