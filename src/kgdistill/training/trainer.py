"""The training loop shared by the teacher and every distillation stage.

An *objective* (:class:`~kgdistill.training.objectives.Objective`) is an ``nn.Module`` holding the model being
trained (``objective.model``) and whatever else its loss needs (a frozen teacher, a generation head, a pre-batch
queue); ``objective(batch)`` returns the loss and a dict of numbers to log. The trainer owns optimisation, precision,
validation and resume; the JSONL log, the progress bar and checkpointing are callbacks
(:mod:`~kgdistill.training.callbacks`), and a job may add its own.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..runfolder import RunFolder
from .. import distributed
from ..config import RunConfig
from ..data.batching import BatchOrder, ExampleSet
from ..errors import CheckpointError, KGDistillError
from ..io import atomic_write_text, environment_info, recover_dir
from ..models.biencoder import BiEncoder
from ..models.fast_dropout import use_fast_dropout
from ..results import Result
from ..runtime import autocast, pick_device, precision_info, set_threads
from .callbacks import (Callback, Checkpointing, EarlyStopping, JsonlLog, ProgressBar, StepEnd, TrainerControl,
                        TrainerState)
from .checkpoint import load_training_state, save_training_state
from .objectives import Objective


class NonFiniteLossError(KGDistillError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def compile_encoders(objective: torch.nn.Module) -> None:
    """torch.compile every encoder's forward in place (``nn.Module.compile``), so parameters, state-dict keys,
    checkpoints and the DDP wrapper stay those of the eager modules; dynamic shapes since padding varies by batch.

    Compilation is lazy, so a trivial function is compiled first: a machine where inductor cannot build kernels
    (no C++ compiler, say) fails here with one line rather than inside the first step.
    """
    try:
        torch.compile(lambda x: x * 2 + 1, dynamic=True)(torch.ones(3, device=next(objective.parameters()).device))
    except Exception as exc:  # inductor raises many types (BackendCompilerFailed, InvalidCxxCompiler, ...)
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise KGDistillError(f"config key 'train.compile': torch.compile does not work on this machine "
                             f"({type(exc).__name__}: {first}); set train.compile=false") from None
    for module in objective.modules():
        if isinstance(module, BiEncoder):
            module.hr_encoder.compile(dynamic=True)
            module.tail_encoder.compile(dynamic=True)


def step_seed(seed: int, step: int) -> int:
    """Every step draws dropout and masks from its own seed, so a resumed run repeats an uninterrupted one."""
    return (seed * 1_000_003 + step * 7919) % (2**63 - 1)


@dataclass
class TrainResult(Result):
    """One training run's summary (``train_summary.json``): steps done, time, speed, last loss, best validation
    accuracy@1 and the batches skipped for a non-finite loss. ``steps`` and ``seconds`` count every process of a
    resumed run; ``samples_per_second`` is the last process's speed."""

    steps: int
    seconds: float
    samples_per_second: float
    final_loss: float
    best_valid: float | None
    skipped_batches: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def table(self) -> str:
        return (f"{self.steps} steps in {self.seconds:.0f} s ({self.samples_per_second:.1f} samples/s), final loss "
                f"{self.final_loss:.4f}")

    def save(self, folder: str | Path) -> Path:
        """``train_summary.json`` (:attr:`RunFolder.SUMMARY`)."""
        RunFolder(folder).write_json(RunFolder.SUMMARY, self.to_dict())
        return Path(folder)


def make_adamw(params: list[torch.nn.Parameter], lr: float, weight_decay: float, fused: bool) -> torch.optim.AdamW:
    """AdamW, fused into one kernel where this torch has one for the parameters' device (1.17x a packed teacher
    step with fast dropout on CPU, BENCHMARKS.md §5d), else the foreach implementation."""
    if fused:
        try:
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
        except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
            pass
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)


class Trainer:
    """Trains an objective's model for ``train.max_steps`` (else ``train.epochs``), with validation, checkpoints and
    resume."""

    def __init__(self, run_dir: str | Path, config: RunConfig, objective: Objective, train_set: ExampleSet,
                 valid_set: ExampleSet | None, tokenizer, progress: bool = True, callbacks: list[Callback] | None = None,
                 ranker: Callable[[BiEncoder], dict[str, float]] | None = None):
        self.callbacks = list(callbacks or [])  # after the trainer's own: JSONL log, progress bar, checkpointing
        self._running: list[Callback] | None = None  # all of them, while train() runs
        self._clock: tuple[float, float] | None = None  # train()'s start: (perf_counter, state.seconds then)
        self.run_dir = Path(run_dir)
        self.config = config
        self.objective = objective
        self.train_set = train_set
        self.valid_set = valid_set
        self.ranker = ranker  # valid MRR and hits of the model (train.valid_ranking), run at every validation
        self.tokenizer = tokenizer
        self.progress = progress
        tc = config.train
        set_threads(tc.num_threads)
        self.device = pick_device(tc.device)
        self.objective.to(self.device)
        for module in self.objective.modules():  # student and (frozen) teacher alike
            if isinstance(module, BiEncoder):
                module.packing = tc.packing
                if tc.fast_dropout and self.device.type == "cpu":
                    for encoder in {id(e): e for e in (module.hr_encoder, module.tail_encoder)}.values():
                        use_fast_dropout(encoder)
        if tc.compile:
            compile_encoders(self.objective)
        self.batch_size = tc.batch_size
        self.order = BatchOrder.for_training(train_set, tc, config.seed)
        self.steps_per_epoch = self.order.steps_per_epoch
        if self.steps_per_epoch == 0:
            raise KGDistillError(f"config key 'train.batch_size': {tc.batch_size} is larger than the "
                                 f"{len(train_set)} training examples")
        self.total_steps = tc.max_steps or math.ceil(tc.epochs * self.steps_per_epoch)
        params = [p for p in objective.parameters() if p.requires_grad]
        self.optimizer = make_adamw(params, tc.lr, tc.weight_decay, tc.fused_optimizer)
        warmup = min(tc.warmup_steps, max(self.total_steps // 10, 1)) if tc.warmup_steps else 0

        def schedule(step: int) -> float:
            if warmup and step < warmup:
                return (step + 1) / warmup
            return max(0.0, (self.total_steps - step) / max(1, self.total_steps - warmup))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.state = TrainerState()
        self.control = TrainerControl()
        self.world, self.rank = distributed.world_size(), distributed.rank()
        self.step_module = self.objective
        if self.world > 1:
            if tc.batch_size % self.world:
                raise KGDistillError(f"config key 'train.batch_size': {tc.batch_size} is not divisible by the "
                                     f"{self.world} processes")
            if tc.gradient_cache_chunk is not None:
                raise KGDistillError("config key 'train.gradient_cache_chunk': not supported with several processes")
            from torch.nn.parallel import DistributedDataParallel

            self.step_module = DistributedDataParallel(self.objective, find_unused_parameters=True)
        self.progress = progress and self.rank == 0

    # ------------------------------------------------------------------ data order
    def _rows(self, step: int) -> np.ndarray:
        rows = self.order.rows(step)
        share = self.batch_size // self.world  # this rank's slice of the global batch
        return rows[self.rank * share:(self.rank + 1) * share]

    def batch(self, step: int):
        """This rank's training batch of step ``step``, as :meth:`train` draws it (benchmarks time the same)."""
        return self.train_set.batch(self._rows(step), with_heads=self.objective.needs_heads)

    # ------------------------------------------------------------------ checkpoints
    def _objective_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.objective.state_dict().items()
                if not k.startswith(("model.", "teacher."))}

    def save(self, name: str = RunFolder.LAST) -> None:
        """Write ``checkpoint-last`` (with the training state, for resume) or ``checkpoint-best`` (the model alone)."""
        if self.rank != 0:
            return
        self._tick()
        progress = {"step": self.state.step, "best_valid": self.state.best_valid, "skipped": self.state.skipped,
                    "last_loss": self.state.last_loss, "total_steps": self.total_steps, "seconds": self.state.seconds}

        def extra(folder: Path) -> None:
            save_training_state(folder, self.optimizer, self.scheduler, self._objective_state(), progress)

        self.objective.model.save(self.run_dir / name, self.tokenizer,
                                  extra=extra if name == RunFolder.LAST else None)
        for callback in self.callbacks_in_use:
            callback.on_save(self, name, self.run_dir / name)

    def _tick(self) -> None:
        """Bring ``state.seconds`` up to now: the earlier processes' seconds plus this one's since :meth:`train`."""
        if self._clock is not None:
            started, before = self._clock
            self.state.seconds = before + time.perf_counter() - started

    def resume(self) -> bool:
        """Restore the last checkpoint if there is one; returns whether training resumed."""
        folder = recover_dir(self.run_dir / RunFolder.LAST)
        for stale in [*self.run_dir.glob(f".{RunFolder.LAST}.*"), *self.run_dir.glob(f".{RunFolder.BEST}.*")]:
            shutil.rmtree(stale, ignore_errors=True)  # half-written by a killed process
        if not folder.exists():
            return False
        saved = BiEncoder.load(folder)
        self.objective.model.load_state_dict(saved.state_dict())
        objective_state, progress = load_training_state(folder, self.optimizer, self.scheduler)
        missing, unexpected = self.objective.load_state_dict(objective_state, strict=False)
        missing = [k for k in missing if not k.startswith(("model.", "teacher."))]
        if missing or unexpected:
            raise CheckpointError(f"{folder}: training state does not match this run (missing {missing[:3]}, "
                                  f"unexpected {unexpected[:3]})")
        if progress.get("total_steps") != self.total_steps:
            raise CheckpointError(f"{folder}: saved for {progress.get('total_steps')} steps but this run has "
                                  f"{self.total_steps} (its config, or the pipeline's plan of a stage's steps, "
                                  "changed since); resume with the settings that saved it, or use a new output folder")
        self.state.step = int(progress["step"])
        log_path = self.run_dir / RunFolder.LOG
        if log_path.is_file():  # drop records of steps after the checkpoint: they are redone
            kept = [line for line in log_path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and _logged_step(line) <= self.state.step]
            atomic_write_text(log_path, "".join(line + "\n" for line in kept))
        self.state.best_valid = progress["best_valid"]
        self.state.skipped = int(progress["skipped"])
        self.state.last_loss = progress.get("last_loss")  # absent from checkpoints written before it was saved
        self.state.seconds = float(progress.get("seconds", 0.0))  # likewise: such a resume counts from zero
        return True

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """SimKGC's cheap check: loss and in-batch accuracy on validation queries (eval mode: no margin); with a
        ranker also filtered ranking of valid triples against all entities."""
        if self.valid_set is None or len(self.valid_set) < 2:
            return {}
        self.objective.eval()
        losses, hits1, n = [], 0, 0
        bs = self.batch_size
        for start in range(0, len(self.valid_set) - 1, bs):
            rows = np.arange(start, min(start + bs, len(self.valid_set)))
            if len(rows) < 2:
                break
            batch = self.valid_set.batch(rows, with_heads=False).to(self.device)
            with autocast(self.device, self.config.train.precision):
                loss, logits = self.objective.validation_loss(batch)
            losses.append(float(loss))
            hits1 += int((logits.argmax(1).cpu() == torch.arange(len(rows))).sum())
            n += len(rows)
        metrics = {"valid_loss": float(np.mean(losses)), "valid_acc@1": hits1 / max(n, 1)}
        if self.ranker is not None:
            metrics.update(self.ranker(self.objective.model))
        self.objective.train()
        return metrics

    # ------------------------------------------------------------------ loop
    @property
    def callbacks_in_use(self) -> list[Callback]:
        """The callbacks of the running ``train`` call: the trainer's own, then the job's."""
        return self._running if self._running is not None else self.callbacks

    def train_step(self, batch) -> tuple[torch.Tensor, dict]:
        """One optimisation step on ``batch``, as :meth:`train` takes it: forward under autocast, backward, clipping, the optimiser and the schedule. A non-finite loss is skipped with
        ``train.skip_nonfinite``, else it raises :class:`NonFiniteLossError`. Returns the loss and the numbers to
        log."""
        tc = self.config.train
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, tc.precision):
            loss, logs = self.step_module(batch.to(self.device), step=self.state.step)
        if not torch.isfinite(loss):
            if not tc.skip_nonfinite:
                raise NonFiniteLossError(
                    f"non-finite loss ({float(loss.detach())}) at step {self.state.step}; last good checkpoint kept in "
                    f"{self.run_dir / RunFolder.LAST} (lower train.lr or set train.skip_nonfinite=true)")
            self.state.skipped += 1
            self.optimizer.zero_grad(set_to_none=True)
        else:
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for p in self.objective.parameters() if p.requires_grad], tc.grad_clip)
            self.optimizer.step()
            logs["grad_norm"] = float(grad_norm)
        self.scheduler.step()
        return loss, logs

    @property
    def step(self) -> int:
        """Steps done in all (``state.step``)."""
        return self.state.step

    def _act(self) -> None:
        """Carry out what the callbacks asked for (:class:`TrainerControl`), then clear the requests."""
        if self.control.should_save_best:
            self.save(RunFolder.BEST)
        if self.control.should_save:
            self.save(RunFolder.LAST)
        self.control.should_save = self.control.should_save_best = False

    def train(self) -> TrainResult:
        """Run the remaining steps (fewer when a callback asks to stop); returns the summary, also written as
        ``train_summary.json``."""
        tc = self.config.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.objective.train()
        validate_every = tc.validate_every or self.steps_per_epoch
        stopping = [EarlyStopping(tc.early_stopping_patience)] if tc.early_stopping_patience else []
        self._running = [JsonlLog(), ProgressBar(), Checkpointing(), *stopping, *self.callbacks]
        state = self.state
        state.total_steps = self.total_steps
        self.control.should_stop = False
        start_time, start_step, window = time.perf_counter(), state.step, []
        self._clock = (start_time, state.seconds)
        result = None
        try:
            for callback in self._running:
                callback.on_train_begin(self)
            while state.step < self.total_steps and not self.control.should_stop:
                torch.manual_seed(step_seed(self.config.seed, state.step))
                batch = self.batch(state.step)
                t0 = time.perf_counter()
                loss, logs = self.train_step(batch)
                state.step += 1
                last_loss = float(loss.detach())
                state.last_loss = last_loss if math.isfinite(last_loss) else None
                window.append(time.perf_counter() - t0)
                record = None
                if state.step % tc.log_every == 0 or state.step == self.total_steps:
                    rate = len(batch) * len(window) / max(sum(window), 1e-9)
                    window = []
                    record = {"step": state.step, "loss": last_loss, "lr": self.scheduler.get_last_lr()[0],
                              "samples_per_s": rate, "inv_t": float(self.objective.model.inv_temperature().detach()),
                              **logs}
                metrics = None
                if (state.step % validate_every == 0 or state.step == self.total_steps) and self.rank == 0:
                    metrics = self.validate() or None
                    if metrics:
                        for callback in self._running:
                            callback.on_validate(self, metrics)
                        self._act()
                end = StepEnd(state.step, state.step - start_step, self.total_steps - state.step,
                              time.perf_counter() - start_time, last_loss, record, metrics)
                for callback in self._running:
                    callback.on_step_end(self, end)
                if self.control.should_stop:
                    self.control.should_save = True  # a stopped run ends on a checkpoint that records the stop
                self._act()
            seconds = time.perf_counter() - start_time
            self._tick()
            done = state.step - start_step
            final_loss = state.last_loss if state.last_loss is not None else float("nan")
            result = TrainResult(state.step, state.seconds, done * self.batch_size / max(seconds, 1e-9), final_loss,
                                 state.best_valid, state.skipped)
        finally:
            running, self._running, self._clock = self._running, None, None
            for callback in running:
                callback.on_train_end(self, result)
        if self.rank == 0:
            result.save(self.run_dir)
        distributed.barrier()
        return result

def _logged_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 2**62  # a line torn by a kill: dropped


def write_run_info(run_dir: Path, config: RunConfig, extra: dict | None = None) -> None:
    """Resolved config, seed, versions and the command beside the checkpoints."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / RunFolder.CONFIG)
    precision = precision_info(config.train.precision, pick_device(config.train.device))
    RunFolder(run_dir).write_json(RunFolder.RUN_INFO, {"seed": config.seed, "versions": environment_info(),
                                            "precision": precision, "pid": os.getpid(), **(extra or {})})
