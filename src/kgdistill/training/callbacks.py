"""What the training loop does besides optimising, as callbacks: the JSONL log (``train_log.jsonl``, the source of
truth), the progress bar and checkpointing are the trainer's own; a job adds more (the ladder's time estimate,
trackers).

Per step the trainer calls, in order: ``on_validate`` when it validated at this step, then ``on_step_end``; every
checkpoint written calls ``on_save``. Callbacks read ``trainer.state`` (:class:`TrainerState`) and ask for checkpoints
or a stop through ``trainer.control`` (:class:`TrainerControl`), as Hugging Face's ``TrainerCallback`` does; the
trainer acts on the flags after each hook round. ``on_train_begin`` and ``on_train_end`` frame a call of ``Trainer.train``;
``on_train_end`` also runs when training stops with an error (``result`` None then).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from ..runfolder import RunFolder

if TYPE_CHECKING:
    from .trainer import Trainer, TrainResult



@dataclass
class TrainerState:
    """Where training is, saved in checkpoints (``step``, ``best_valid``, ``skipped``, ``last_loss``, ``seconds``)
    and read by callbacks."""

    step: int = 0  # steps done in all (a resumed run counts the earlier ones)
    total_steps: int = 0
    best_valid: float | None = None  # best validation metric so far (:func:`selection_metric`)
    skipped: int = 0  # batches skipped for a non-finite loss
    # the loss of the last step done; a run resumed from its final checkpoint reports it as its final loss
    last_loss: float | None = None
    # wall-clock seconds of training up to ``step``, summed over the processes of a resumed run (the time a killed
    # process spent past its last checkpoint is not counted: those steps are redone)
    seconds: float = 0.0


@dataclass
class TrainerControl:
    """What callbacks ask the trainer to do; the trainer acts on the flags after the hooks of a step and clears
    them (callbacks never call the trainer's methods)."""

    should_save: bool = False  # write checkpoint-last
    should_save_best: bool = False  # write checkpoint-best
    should_stop: bool = False  # end training after this step


@dataclass
class StepEnd:
    """One finished optimisation step, as callbacks see it."""

    step: int  # steps done in all (a resumed run counts the earlier ones)
    done: int  # steps done by this call of Trainer.train
    left: int  # steps still to do
    seconds: float  # since this call of Trainer.train began
    loss: float
    record: dict | None  # the step's log record (every train.log_every steps and the last), else None
    validation: dict | None  # the validation metrics measured at this step, else None


class Callback:
    """Hooks of the training loop; every one is optional (they do nothing here)."""

    def on_train_begin(self, trainer: Trainer) -> None:
        """Before the first step of a call of ``Trainer.train``."""

    def on_validate(self, trainer: Trainer, metrics: dict) -> None:
        """After a validation (rank 0), before ``on_step_end`` of the same step."""

    def on_step_end(self, trainer: Trainer, step: StepEnd) -> None:
        """After every optimisation step."""

    def on_save(self, trainer: Trainer, name: str, folder: Path) -> None:
        """After a checkpoint (``checkpoint-last`` or ``checkpoint-best``) was written to ``folder``."""

    def on_train_end(self, trainer: Trainer, result: TrainResult | None) -> None:
        """After the last step, or when training stopped with an error (``result`` None)."""


class JsonlLog(Callback):
    """``train_log.jsonl``: a record every ``train.log_every`` steps and after every validation; rank 0 only."""

    def __init__(self) -> None:
        self.handle = None

    def on_train_begin(self, trainer: Trainer) -> None:
        trainer.run_dir.mkdir(parents=True, exist_ok=True)
        self.handle = open(trainer.run_dir / RunFolder.LOG if trainer.rank == 0 else os.devnull, "a", encoding="utf-8")

    def on_step_end(self, trainer: Trainer, step: StepEnd) -> None:
        for record in (step.record, None if step.validation is None else {"step": step.step, **step.validation}):
            if record is not None:
                self.handle.write(json.dumps(record) + "\n")
                self.handle.flush()

    def on_train_end(self, trainer: Trainer, result: TrainResult | None) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


class ProgressBar(Callback):
    """The ``train`` progress bar (rank 0, when the trainer shows progress), with the last loss and samples/s."""

    def __init__(self) -> None:
        self.bar = None

    def on_train_begin(self, trainer: Trainer) -> None:
        self.bar = tqdm(total=trainer.total_steps, initial=trainer.state.step, desc="train", unit="step",
                        disable=not trainer.progress, dynamic_ncols=True)

    def on_step_end(self, trainer: Trainer, step: StepEnd) -> None:
        if step.record is not None:
            self.bar.set_postfix(loss=f"{step.loss:.3f}", sps=f"{step.record['samples_per_s']:.0f}")
        self.bar.update(1)

    def on_train_end(self, trainer: Trainer, result: TrainResult | None) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def selection_metric(metrics: dict) -> str:
    """What ``checkpoint-best`` follows: valid MRR when validation ranked (``train.valid_ranking``), else in-batch
    accuracy@1."""
    return "valid_mrr" if "valid_mrr" in metrics else "valid_acc@1"


class Checkpointing(Callback):
    """Asks for ``checkpoint-best`` whenever the validation metric (:func:`selection_metric`) improves, and for
    ``checkpoint-last`` every ``train.checkpoint_every`` steps and after the last one (after that step's validation,
    so that it records it)."""

    def on_validate(self, trainer: Trainer, metrics: dict) -> None:
        value = metrics[selection_metric(metrics)]
        if trainer.state.best_valid is None or value > trainer.state.best_valid:
            trainer.state.best_valid = value
            trainer.control.should_save_best = True

    def on_step_end(self, trainer: Trainer, step: StepEnd) -> None:
        if step.step % trainer.config.train.checkpoint_every == 0 or step.left == 0:
            trainer.control.should_save = True


class EarlyStopping(Callback):
    """Stops training when the validation metric (:func:`selection_metric`) has not improved for ``patience``
    validations in a row (``train.early_stopping_patience``); the run ends on a ``checkpoint-last`` and
    ``checkpoint-best`` keeps the best model."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best: float | None = None
        self.waited = 0

    def on_validate(self, trainer: Trainer, metrics: dict) -> None:
        value = metrics[selection_metric(metrics)]
        if self.best is None or value > self.best:
            self.best, self.waited = value, 0
            return
        self.waited += 1
        if self.waited >= self.patience:
            trainer.control.should_stop = True
