"""PMD's progressive ladder: teacher -> pre-distillation (same depth) -> grades of fewer layers, each taught by the
grade above (docs/METHOD.md, "PMD"). Every stage lives in its own folder; a finished stage is never redone and an
interrupted one resumes from its last checkpoint.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import DataConfig, GradeConfig, RunConfig
from ..data.batching import tokenizer_key
from ..errors import KGDistillError
from ..io import atomic_write_json
from ..jobs.context import DataContext
from ..jobs.evaluate import evaluate_in_run
from ..jobs.model_card import write_model_card
from ..jobs.saved import load_model, load_run_config
from ..jobs.train import TrainOutcome, guard_output, train
from ..losses.contrastive import InfoNCELoss
from ..models.builder import build_model
from ..models.plm import load_encoder, resolve_plm
from ..training.callbacks import Callback, StepEnd
from ..training.checkpoint import LAST
from ..training.objectives import ContrastiveObjective
from ..training.trackers import make_trackers
from ..training.trainer import Trainer, write_run_info
from .objective import DistillationObjective
from .report import Report, build_report

STAGE_DONE = "stage.json"
PAPER_RATIOS = (0.75, 0.5, 0.25)  # 12 -> 9 -> 6 -> 3
PAPER_MASK_RATES = (0.1, 0.05, 0.0)  # the grades' rates; pre-distillation uses distill.pre_mask_rate (0.2)
log = logging.getLogger("kgdistill")


def default_grades(depth: int) -> list[GradeConfig]:
    """The paper's ladder scaled to the PLM depth: 12 -> 9, 6, 3; 6 -> 5, 3, 2."""
    grades, previous = [], depth
    for ratio, rate in zip(PAPER_RATIOS, PAPER_MASK_RATES):
        layers = max(1, math.ceil(depth * ratio))
        if layers < previous:
            grades.append(GradeConfig(layers=layers, mask_rate=rate))
            previous = layers
    return grades


def stage_config(config: RunConfig, mask_rate: float) -> tuple[RunConfig, float]:
    """Apply the ablation switch to one stage's config and mask rate.

    ``no-mgfd`` and ``logit-only`` only drop the masking (so L_MGFD is zero): the weights of L_CE and L_SCORE stay
    (1-a-b) and a, as the paper's "w/o MGFD" keeps everything else equal."""
    config = copy.deepcopy(config)
    ablation = config.distill.ablation
    if ablation == "no-mgfd":
        mask_rate = 0.0
    elif ablation == "fixed-mask":
        mask_rate = config.distill.fixed_mask_rate
    elif ablation == "logit-only":
        mask_rate = 0.0
        config.distill.score_loss, config.distill.score_on = "kl", "logits"
    return config, mask_rate


def inherit_teacher_data(config: RunConfig, teacher_dir: Path, teacher_info: dict, dataset: str | None) -> None:
    """A student trains and is evaluated on its teacher's dataset with its teacher's text settings: every data key the
    caller left at its default takes the teacher's value; ``dataset`` (an explicit choice) wins over both."""
    saved = load_run_config(teacher_dir)
    defaults = DataConfig()
    source = saved.data if saved is not None else DataConfig(dataset=teacher_info.get("dataset", defaults.dataset))
    for item in dataclasses.fields(DataConfig):
        if getattr(config.data, item.name) == getattr(defaults, item.name):
            setattr(config.data, item.name, getattr(source, item.name))
    if dataset is not None:
        config.data.dataset = dataset


def check_gradient_cache(config: RunConfig) -> None:
    """The distillation objective has no gradient-cache step: ``train.gradient_cache_chunk`` is refused before anything
    runs (a control, trained by SimKGC's loss alone, takes it)."""
    if config.train.gradient_cache_chunk is not None and config.distill.ablation != "direct":
        raise KGDistillError("config key 'train.gradient_cache_chunk': distillation has no gradient-cache step; leave "
                             "the key unset for distillation (only the teacher and direct controls support it)")


def step_cost(student_layers: int, teacher_layers: int, base_layers: int, query_only: bool = False,
              entity_layers: int | None = None, direct: bool = False, masked_passes: bool = False) -> float:
    """Encoder layer passes of one stage step relative to one teacher training step (three sequences a sample:
    query, tail, head; a trained pass costs about three forward passes, a frozen teacher's one).

    ``masked_passes``: scores come from clean text and MGFD runs, so student and teacher encode the masked query
    (and, unless only the query encoder is trained, the masked tail) once more."""
    entity_layers = entity_layers or teacher_layers
    if direct:
        passes = 9 * student_layers
    elif query_only:  # student query pass trained; tail and head come from the frozen teacher's entity encoder
        passes = 3 * student_layers + teacher_layers + 2 * entity_layers
    else:
        passes = 9 * student_layers + 3 * teacher_layers
    if masked_passes and not direct:
        passes += (3 * student_layers + teacher_layers) * (1 if query_only else 2)
    return passes / (9 * base_layers)


def distill(config: RunConfig, teacher: str | Path, output_dir: str | Path, layers: int | None = None,
            mask_rate: float | None = None, resume: bool = False, steps: int | None = None, lr: float | None = None,
            progress: bool = True, dataset: str | None = None, callbacks: list[Callback] | None = None,
            tracker: str | None = None) -> TrainOutcome:
    """Train one student from a trained teacher and evaluate it (``callbacks``, ``tracker``: as for ``train``).

    The student inherits the teacher's dataset and text settings unless ``dataset`` or a changed data key says
    otherwise (:func:`inherit_teacher_data`)."""
    run_dir = Path(output_dir)
    guard_output(run_dir, resume)
    check_gradient_cache(config)
    callbacks = [*make_trackers(tracker), *(callbacks or [])]
    teacher_model, teacher_tokenizer, teacher_dir = load_model(teacher)
    config = copy.deepcopy(config)
    config.model.plm = teacher_model.info.get("plm", config.model.plm)
    inherit_teacher_data(config, teacher_dir, teacher_model.info, dataset)
    layers = layers or teacher_model.num_layers
    if layers > teacher_model.num_layers:
        raise KGDistillError(f"layers {layers}: a student cannot be deeper than its {teacher_model.num_layers}-layer "
                             f"teacher ({teacher_dir})")
    config.model.num_layers = layers
    if lr is not None:  # the stage's own rate is the run's train.lr, so config.yaml and the model card say it
        config.train.lr = lr
    if config.model.layer_map is not None and len(config.model.layer_map) != layers:
        config.model.layer_map = None
    mask_rate = config.distill.pre_mask_rate if mask_rate is None else mask_rate
    if not 0 <= mask_rate < 1:
        raise KGDistillError(f"mask_rate {mask_rate}: must be in [0, 1)")
    config, mask_rate = stage_config(config, mask_rate)
    direct = config.distill.ablation == "direct"
    if direct:
        config.distill.student_side = "both"  # a control is a plain SimKGC model at the student depth
    torch.manual_seed(config.seed)  # a stage run alone equals the same stage inside a pipeline
    student, tokenizer = build_model(config, teacher=teacher_model)
    if config.distill.copy_temperature and student.info["initialised_from"] == "teacher":
        with torch.no_grad():  # the student starts where the teacher's temperature ended, like its layers
            student.log_inv_t.copy_(teacher_model.log_inv_t)
    if tokenizer_key(tokenizer) != tokenizer_key(teacher_tokenizer):
        raise KGDistillError(f"model.plm '{config.model.plm}' has a different vocabulary from the teacher's "
                             f"({teacher_dir}); teacher and student must share a tokenizer")
    student.info.update({"teacher": str(teacher_dir), "mask_rate": None if direct else mask_rate,
                         "ablation": config.distill.ablation})
    teaching = ("no teacher (direct, L_CE only)" if direct
                else f"mask rate {mask_rate:.2f}; ablation {config.distill.ablation}")
    log.info("student: %d layers from %s layers %s (of %d)%s; %s", layers, student.info["initialised_from"],
             student.info["layer_map"], student.info["source_layers"],
             "; query encoder only" if student.info.get("student_side") == "query" else "", teaching)
    data = DataContext(config, tokenizer)
    write_run_info(run_dir, config, {"job": "distill", "teacher": str(teacher_dir), "layers": layers,
                                     "mask_rate": mask_rate, "dataset": data.kg.summary()})
    loss = InfoNCELoss(student, config.loss, data.known_train, config.train.batch_size)
    if direct:
        objective = ContrastiveObjective(student, loss)
    else:
        objective = DistillationObjective(student, teacher_model, loss, config.distill, mask_rate,
                                          tokenizer.mask_token_id)
    steps = steps or config.distill.stage_steps
    trainer = Trainer(run_dir, config, objective, data.train_set(), data.valid_set(), tokenizer,
                      total_steps=steps, lr=lr, progress=progress, callbacks=callbacks, ranker=data.valid_ranker())
    if resume:
        trainer.resume()
    result = trainer.train()
    return TrainOutcome(run_dir, result, evaluate_in_run(run_dir, data, student, config, progress))


@dataclass
class Stage:
    name: str
    layers: int
    mask_rate: float | None  # None for the teacher and the controls
    steps: int | None
    lr: float | None
    kind: str = "pmd"  # teacher | pmd | direct | plm | query (the serving grade)
    teacher: str | None = None  # the stage whose model teaches (or initialises) this one
    cost: float = 1.0  # one step's compute in teacher training steps (step_cost)


def plan(config: RunConfig, depth: int) -> list[Stage]:
    """The stages in order: teacher, pre-distillation, grades, and each grade's controls right after it.

    With ``distill.budget`` every distillation stage gets an even share of the budget, in teacher-step equivalents,
    so cheap grades get more steps; explicit per-grade steps still win."""
    d = config.distill
    query_only = d.student_side == "query"
    stages = [Stage("00-teacher", depth, None, None, None, kind="teacher")]
    pmd = [(depth, d.pre_mask_rate, None, None, "01-pre-distilled")] if d.pre_distill else []
    for i, grade in enumerate(d.grades or default_grades(depth), start=1):
        lr = grade.lr
        if lr is None and d.lr_depth_power and grade.layers < depth:
            lr = config.train.lr * (depth / grade.layers) ** d.lr_depth_power
        pmd.append((grade.layers, grade.mask_rate, grade.steps, lr, f"{i + 1:02d}-grade{i}-{grade.layers}L"))
    share = d.budget / max(len(pmd), 1) if d.budget else None
    previous = stages[0]
    for layers, rate, steps, lr, name in pmd:
        # the rate the stage really masks at (an ablation may drop or fix it) decides whether MGFD's passes run
        masked_passes = d.student_input == "clean" and d.beta > 0 and stage_config(config, rate)[1] > 0
        cost = step_cost(layers, previous.layers, depth, query_only, entity_layers=depth, masked_passes=masked_passes)
        if steps is None and share is not None:
            steps = max(1, round(share / cost))
        stage = Stage(name, layers, rate, steps or d.stage_steps, lr, "pmd", previous.name, cost)
        stages.append(stage)
        for control in d.controls:  # 'direct'/'plm': the PMD stage's compute; '-steps': its steps
            cost = step_cost(layers, previous.layers, depth, direct=True)
            same_steps = control.endswith("-steps")
            steps_ = stage.steps if same_steps else max(1, round(stage.steps * stage.cost / cost))
            stages.append(Stage(f"{name}-{control}", layers, None, steps_, lr, control.removesuffix("-steps"),
                                previous.name, cost))
        previous = stage
    if d.serving_grade and previous.kind == "pmd":
        stages.append(Stage(f"{int(previous.name[:2]) + 1:02d}-serving-query-{previous.layers}L", previous.layers, 0.0,
                            previous.steps, previous.lr, "query", stages[0].name,
                            step_cost(previous.layers, depth, depth, query_only=True)))
    return stages


class _StageEstimate(Callback):
    """Logs, a few steps into a stage, the ladder's estimated time left from the rate just measured."""

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
        log.info("[%s] %.1f s/step; estimated time left for the ladder: %.0f min (training only, from this "
                 "stage's rate)", stage.name, seconds / done, remaining / 60)


def pipeline(config: RunConfig, output_dir: str | Path, teacher: str | Path | None = None,
             progress: bool = True, tracker: str | None = None) -> Report:
    """The whole ladder, resumable stage by stage; writes ``report.json``, ``report.md`` and ``report.png``.

    ``tracker`` (``tensorboard`` or ``mlflow``, default none) mirrors every stage's training log to a tracker."""
    make_trackers(tracker)  # a missing tracker package fails before anything runs
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if teacher is not None:
        depth = load_model(teacher)[0].num_layers
    else:
        depth = int(load_encoder(resolve_plm(config.model.plm)).config.num_hidden_layers)
    stages = plan(config, depth)
    if any(stage.kind == "pmd" for stage in stages):
        check_gradient_cache(config)
    atomic_write_json(out / "plan.json", [s.__dict__ for s in stages])
    default_steps = config.distill.stage_steps or config.train.max_steps or 1
    folders: dict[str, Path] = {}
    for index, stage in enumerate(stages):
        stage_dir = out / stage.name
        marker = stage_dir / STAGE_DONE
        if stage.kind == "teacher" and teacher is not None:
            folders[stage.name] = Path(teacher)
            continue
        if marker.is_file():
            log.info("[%s] finished earlier; not redone", stage.name)
        else:
            resume = (stage_dir / LAST).exists()
            log.info("[%s] %s: %d layers, %s%s", stage.name, "resuming" if resume else "starting", stage.layers,
                     stage.kind, "" if stage.mask_rate is None else f", mask rate {stage.mask_rate:.2f}")
            callbacks = [_StageEstimate(stages, index, default_steps)]
            if stage.kind == "teacher":
                train(config, stage_dir, resume=resume, progress=progress, callbacks=callbacks, tracker=tracker)
            else:
                stage_config_ = copy.deepcopy(config)
                if stage.kind == "query":
                    stage_config_.distill.student_side = "query"
                elif stage.kind != "pmd":
                    stage_config_.distill.ablation = "direct"
                if stage.kind == "plm":
                    stage_config_.model.init_from = "plm"
                distill(stage_config_, folders[stage.teacher], stage_dir, layers=stage.layers,
                        mask_rate=stage.mask_rate or 0.0, resume=resume, steps=stage.steps, lr=stage.lr,
                        progress=progress, callbacks=callbacks, tracker=tracker)
            write_model_card(stage_dir)
            atomic_write_json(marker, {"done": True, "stage": stage.__dict__})
        folders[stage.name] = stage_dir
    report = build_report([(s.name, folders[s.name], s.kind) for s in stages])
    report.save(out)
    return report
