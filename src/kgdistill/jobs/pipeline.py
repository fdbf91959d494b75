"""The pipeline job: the whole ladder (:func:`~kgdistill.pmd.plan.plan`), each stage a distill job in its own
folder, resumable stage by stage, then the report. A finished stage is never redone; an interrupted one resumes from
its last checkpoint."""
from __future__ import annotations

import copy
import dataclasses
import logging
import time
from pathlib import Path

from ..config import RunConfig
from ..errors import ConfigError
from ..evaluation.ranking import evaluation_mismatch
from ..models.plm import load_encoder, load_tokenizer, resolve_plm
from ..pmd.plan import SequenceLengths, Stage, plan, sequence_lengths, stage_run_config
from ..pmd.report import Report, build_report
from ..runfolder import RunFolder
from ..runtime import pick_device, resolve_precision
from ..store.model_card import write_model_card
from ..io import read_json_object
from ..store.context import DataContext
from ..store.saved import load_teacher
from ..training.callbacks import Callback, StepEnd
from ..training.trackers import make_trackers
from .distill import check_gradient_cache, distill, inherit_teacher_data
from .train import train

log = logging.getLogger("kgdistill")


class _StageEstimate(Callback):
    """Logs, a few steps into a stage, the pipeline's estimated time left from the rate just measured."""

    def __init__(self, stages: list[Stage], index: int, default_steps: int):
        self.stages, self.index, self.default_steps = stages, index, default_steps
        self.start = time.perf_counter()

    def on_train_begin(self, trainer) -> None:
        self.start = time.perf_counter()

    def on_step_end(self, trainer, step: StepEnd) -> None:
        done, left = step.done, step.left
        if done != min(5, done + left):
            return
        seconds = time.perf_counter() - self.start
        stage = self.stages[self.index]
        per_unit = seconds / done / stage.cost  # seconds per teacher-step equivalent
        later = sum((s.steps or self.default_steps) * s.cost for s in self.stages[self.index + 1:])
        remaining = left * seconds / done + later * per_unit
        log.info("[%s] %.1f s/step; estimated time left for the pipeline: %.0f min (training only, from this "
                 "stage's rate)", stage.name, seconds / done, remaining / 60)


def check_teacher_evaluated(teacher: str | Path, config: RunConfig) -> None:
    """A reused teacher must carry an evaluation on the pipeline's split, at the precision its stages will be
    evaluated at: the report compares every row with it, and would be refused only after every stage had trained."""
    metrics = read_json_object(Path(teacher) / RunFolder.METRICS)
    split, evaluated = config.eval.split, metrics.get("split")
    if evaluated != split:
        found = f"was evaluated on {evaluated!r}" if evaluated else "has no metrics.json"
        raise ConfigError(f"teacher {teacher} {found} but this pipeline evaluates on {split!r} (eval.split): "
                          f"evaluate it first (kgdistill evaluate --model {teacher} --split {split})"
                          f"{f' or set eval.split={evaluated}' if evaluated else ''}")
    precision = resolve_precision(config.train.precision, pick_device(config.train.device))
    if evaluation_mismatch(metrics, {"precision": precision}, keys=("precision",)):
        raise ConfigError(f"teacher {teacher} was evaluated at precision {metrics['precision']!r} but this pipeline "
                          f"evaluates at {precision!r} (train.precision): evaluate it first (kgdistill evaluate "
                          f"--model {teacher} --split {split} train.precision={precision}) or set "
                          f"train.precision={metrics['precision']}")


def plan_inputs(config: RunConfig) -> tuple[int, SequenceLengths]:
    """The teacher's depth and the mean sequence lengths of the data the stages train on (the teacher's data
    settings where the user set none, as each stage inherits them), which the plan's step costs weigh passes by."""
    teacher = config.distill.teacher
    if teacher is not None:
        teacher_model, tokenizer, teacher_dir = load_teacher(teacher)
        depth = teacher_model.num_layers
        config = copy.deepcopy(config)
        inherit_teacher_data(config, teacher_dir, teacher_model.info)
    else:
        plm = resolve_plm(config.model.plm)
        depth, tokenizer = int(load_encoder(plm).config.num_hidden_layers), load_tokenizer(plm)
    lengths = sequence_lengths(DataContext(config, tokenizer))
    log.info("plan: mean tokens a sequence: training queries %.1f, entities %.1f, transfer queries %.1f",
             lengths.query, lengths.entity, lengths.transfer)
    return depth, lengths


def pipeline(config: RunConfig, output_dir: str | Path, progress: bool = True, tracker: str | None = None) -> Report:
    """The whole ladder, resumable stage by stage; writes ``report.json``, ``report.md`` and ``report.png``. With
    ``distill.teacher`` set, that trained teacher is reused instead of training one.

    ``tracker`` (``tensorboard`` or ``mlflow``, default none) mirrors every stage's training log to a tracker."""
    make_trackers(tracker)  # a missing tracker package fails before anything runs
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    teacher = config.distill.teacher
    if teacher is not None:
        check_teacher_evaluated(teacher, config)
    depth, lengths = plan_inputs(config)
    stages = plan(config, depth, lengths=lengths)
    if any(stage.kind == "pmd" for stage in stages):
        check_gradient_cache(config)
    RunFolder(out).write_json(RunFolder.PLAN, {"mean_tokens": dataclasses.asdict(lengths),
                                               "stages": [s.__dict__ for s in stages]})
    default_steps = config.distill.stage_steps or config.train.max_steps or 1
    folders: dict[str, Path] = {}
    for index, stage in enumerate(stages):
        stage_dir = out / stage.name
        marker = stage_dir / RunFolder.STAGE_DONE
        if stage.kind == "teacher" and teacher is not None:
            folders[stage.name] = Path(teacher)
            continue
        if marker.is_file():
            log.info("[%s] finished earlier; not redone", stage.name)
        else:
            resume = (stage_dir / RunFolder.LAST).exists()
            log.info("[%s] %s: %d layers, %s%s", stage.name, "resuming" if resume else "starting", stage.layers,
                     stage.kind, "" if stage.mask_rate is None else f", mask rate {stage.mask_rate:.2f}")
            callbacks = [_StageEstimate(stages, index, default_steps)]
            if stage.kind == "teacher":
                train(config, stage_dir, resume=resume, progress=progress, callbacks=callbacks, tracker=tracker)
            else:
                distill(stage_run_config(config, stage, folders[stage.teacher]), stage_dir, resume=resume,
                        progress=progress, callbacks=callbacks, tracker=tracker)
            write_model_card(stage_dir)
            RunFolder(stage_dir).write_json(RunFolder.STAGE_DONE, {"done": True, "stage": stage.__dict__})
        folders[stage.name] = stage_dir
    report = build_report([(s.name, folders[s.name], s.kind) for s in stages])
    report.save(out)
    return report
