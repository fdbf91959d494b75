"""The Python API in one place, mirrored one to one by the CLI (``kgdistill.cli``).

A thin facade: it defines nothing and nothing inside the package imports it. Jobs return typed results
(:class:`~kgdistill.results.Result`: ``to_dict()``, ``table()``, ``save(folder)``).
"""
from __future__ import annotations

from .config import RunConfig, build_config
from .data.frames import from_dataframes, to_dataframes
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
from .store.context import DataContext
from .jobs.evaluate import evaluate
from .store.saved import load_model, load_run_config, resolve_model_dir
from .jobs.train import TrainOutcome, train
from .jobs.tune import TuneResult, tune
from .models.builder import build_model
from .results import Result

__all__ = ["Comparison", "DataContext", "EvaluationResult", "ExportResult", "KGDistillError", "Prediction",
           "Predictor", "Report", "Result", "RunConfig", "SeedsReport", "TrainOutcome", "build_config", "build_model",
           "compare", "distill", "evaluate", "export_model", "from_dataframes", "load_dataset", "load_model",
           "load_run_config", "pipeline", "resolve_model_dir", "seeds_report", "serve", "to_dataframes", "train",
           "TuneResult", "tune"]
