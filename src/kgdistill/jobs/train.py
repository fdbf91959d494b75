"""The teacher's training job: a run folder from a config, then its evaluation."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import distributed
from ..config import RunConfig
from ..errors import KGDistillError
from ..evaluation.ranking import EvaluationResult
from ..io import lock_folder
from ..losses.contrastive import InfoNCELoss
from ..models.builder import build_model
from ..results import Result
from ..training.callbacks import Callback
from ..training.objectives import ContrastiveObjective
from ..training.trackers import make_trackers
from ..training.trainer import Trainer, TrainResult, write_run_info
from ..store.context import DataContext
from .evaluate import evaluate_in_run
from ..runfolder import RunFolder


@dataclass
class TrainOutcome(Result):
    """What ``train`` and ``distill`` return: the run folder, the training summary and the evaluation of the
    checkpoint named by ``eval.checkpoint`` (None when skipped)."""

    run_dir: Path
    train: TrainResult
    evaluation: EvaluationResult | None = None

    @property
    def metrics(self) -> dict | None:
        """The evaluation's metrics, None when there was no evaluation."""
        return self.evaluation.metrics if self.evaluation is not None else None

    def to_dict(self) -> dict:
        return {"run_dir": str(self.run_dir), "train": self.train.to_dict(),
                "metrics": self.evaluation.to_dict() if self.evaluation is not None else None}

    def table(self) -> str:
        t = self.train
        lines = [f"trained {t.steps} steps in {t.seconds:.0f} s ({t.samples_per_second:.1f} samples/s); "
                 f"run folder: {self.run_dir}"]
        if self.evaluation is not None:
            lines.append(self.evaluation.table())
        return "\n".join(lines)

    def save(self, folder: str | Path) -> Path:
        """``train_summary.json``, and the evaluation's files when there was one."""
        folder = Path(folder)
        self.train.save(folder)
        if self.evaluation is not None:
            self.evaluation.save(folder)
        return folder


def guard_output(run_dir: Path, resume: bool) -> None:
    """A folder that already holds a run is continued only with ``resume``, never overwritten; and by one process at
    a time: the main process locks it (:func:`~kgdistill.io.lock_folder`, ``RUN_DIR/.lock``) until it exits, so a
    second run, or a resume of a live one, fails naming the owner's pid instead of deleting its temporary
    checkpoints."""
    if distributed.is_main():
        lock_folder(run_dir)
    if (run_dir / RunFolder.LAST).exists() and not resume:
        raise KGDistillError(f"{run_dir}: already holds a run; pass resume=True to continue it or choose another "
                             f"output_dir")


def teacher_trainer(config: RunConfig, run_dir: Path, progress: bool = True,
                    callbacks: list[Callback] | None = None) -> tuple[Trainer, DataContext]:
    """The teacher's seeded model, SimKGC objective and trainer, as ``train`` runs them (``bench/stage_cost.py``
    times the same steps)."""
    torch.manual_seed(config.seed)
    model, tokenizer = build_model(config)
    data = DataContext(config, tokenizer)
    loss = InfoNCELoss(model, config.loss, data.known_train, config.train.batch_size)
    objective = ContrastiveObjective(model, loss, config.train.gradient_cache_chunk)
    return Trainer(run_dir, config, objective, data.train_set(), data.valid_set(), tokenizer, progress=progress,
                   callbacks=callbacks, ranker=data.valid_ranker()), data


def train(config: RunConfig, output_dir: str | Path, resume: bool = False, evaluate_after: bool = True,
          progress: bool = True, callbacks: list[Callback] | None = None, tracker: str | None = None) -> TrainOutcome:
    """Train a SimKGC teacher into ``output_dir``, then evaluate it on ``config.eval.split``.

    ``resume`` continues the folder's last checkpoint; ``callbacks`` (:class:`~kgdistill.training.callbacks.Callback`)
    see every step, validation and checkpoint, after the trainer's own; ``tracker`` (``tensorboard`` or ``mlflow``,
    default none) mirrors the training log to an experiment tracker."""
    callbacks = [*make_trackers(tracker), *(callbacks or [])]
    distributed.init_from_env()
    run_dir = Path(output_dir)
    guard_output(run_dir, resume)
    trainer, data = teacher_trainer(config, run_dir, progress, callbacks)
    write_run_info(run_dir, config, {"job": "train", "dataset": data.kg.summary()})
    if resume:
        trainer.resume()
    result = trainer.train()
    evaluation = None
    if evaluate_after and distributed.is_main():
        evaluation = evaluate_in_run(run_dir, data, trainer.objective.model, config, progress)
    return TrainOutcome(run_dir, result, evaluation)
