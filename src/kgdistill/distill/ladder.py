"""PMD's progressive ladder: teacher -> pre-distillation (same depth) -> grades of fewer layers, each taught by the
grade above (method.md 2.1-2.3). Every stage lives in its own folder; a finished stage is never redone and an
interrupted one resumes from its last checkpoint.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

from ..api import DataContext, build_model, evaluate_in_run, load_model, tokenizer_key, train
from ..config import GradeConfig, RunConfig
from ..errors import KGDistillError
from ..io import atomic_write_json
from ..losses.contrastive import InfoNCELoss
from ..training.objectives import ContrastiveObjective
from ..training.trainer import LAST, Trainer, write_run_info
from .objective import DistillationObjective
from .report import Report, build_report

STAGE_DONE = "stage.json"
PAPER_RATIOS = (0.75, 0.5, 0.25)  # 12 -> 9 -> 6 -> 3
PAPER_MASK_RATES = (0.1, 0.05, 0.0)  # the grades' rates; pre-distillation uses distill.pre_mask_rate (0.2)


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
    """Apply the ablation switch to one stage's config and mask rate."""
    config = copy.deepcopy(config)
    ablation = config.distill.ablation
    if ablation == "no-mgfd":
        config.distill.beta, mask_rate = 0.0, 0.0
    elif ablation == "fixed-mask":
        mask_rate = config.distill.fixed_mask_rate
    elif ablation == "logit-only":
        config.distill.beta, mask_rate = 0.0, 0.0
        config.distill.score_loss, config.distill.score_on = "kl", "logits"
    return config, mask_rate


def distill(config: RunConfig, teacher: str | Path, output_dir: str | Path, layers: int | None = None,
            mask_rate: float | None = None, resume: bool = False, steps: int | None = None, lr: float | None = None,
            progress: bool = True) -> dict:
    """Train one student from a trained teacher and evaluate it; returns ``{"run_dir", "train", "metrics"}``."""
    run_dir = Path(output_dir)
    if (run_dir / LAST).exists() and not resume:
        raise KGDistillError(f"{run_dir}: already holds a run; pass --resume to continue it")
    teacher_model, teacher_tokenizer, teacher_dir = load_model(teacher)
    config = copy.deepcopy(config)
    config.model.plm = teacher_model.info.get("plm", config.model.plm)
    config.data.dataset = config.data.dataset or teacher_model.info.get("dataset")
    layers = layers or teacher_model.num_layers
    if layers > teacher_model.num_layers:
        raise KGDistillError(f"--layers {layers}: a student cannot be deeper than its {teacher_model.num_layers}-layer "
                             f"teacher ({teacher_dir})")
    config.model.num_layers = layers
    if config.model.layer_map is not None and len(config.model.layer_map) != layers:
        config.model.layer_map = None
    mask_rate = config.distill.pre_mask_rate if mask_rate is None else mask_rate
    if not 0 <= mask_rate < 1:
        raise KGDistillError(f"--mask-rate {mask_rate}: must be in [0, 1)")
    config, mask_rate = stage_config(config, mask_rate)
    student, tokenizer = build_model(config, teacher=teacher_model)
    if tokenizer_key(tokenizer) != tokenizer_key(teacher_tokenizer):
        raise KGDistillError(f"model.plm '{config.model.plm}' has a different vocabulary from the teacher's "
                             f"({teacher_dir}); teacher and student must share a tokenizer")
    student.info.update({"teacher": str(teacher_dir), "mask_rate": mask_rate, "ablation": config.distill.ablation})
    teaching = ("no teacher (direct)" if config.distill.ablation == "direct"
                else f"mask rate {mask_rate:.2f}; ablation {config.distill.ablation}")
    print(f"student: {layers} layers from {student.info['initialised_from']} layers {student.info['layer_map']} "
          f"(of {student.info['source_layers']}); {teaching}")
    data = DataContext(config, tokenizer)
    write_run_info(run_dir, config, {"job": "distill", "teacher": str(teacher_dir), "layers": layers,
                                     "mask_rate": mask_rate, "dataset": data.kg.summary()})
    loss = InfoNCELoss(student, config.loss, data.known_train, config.train.batch_size)
    if config.distill.ablation == "direct":
        objective = ContrastiveObjective(student, loss)
    else:
        objective = DistillationObjective(student, teacher_model, loss, config.distill, mask_rate,
                                          tokenizer.mask_token_id)
    steps = steps or config.distill.stage_steps
    trainer = Trainer(run_dir, config, objective, data.train_set(), data.valid_set(), tokenizer,
                      total_steps=steps, lr=lr, progress=progress)
    if resume:
        trainer.resume()
    result = trainer.train()
    metrics = evaluate_in_run(run_dir, data, student, config, progress)
    return {"run_dir": str(run_dir), "train": result.__dict__, "metrics": metrics}


@dataclass
class Stage:
    name: str
    layers: int
    mask_rate: float | None  # None for the teacher
    steps: int | None
    lr: float | None


def plan(config: RunConfig, depth: int) -> list[Stage]:
    grades = config.distill.grades or default_grades(depth)
    stages = [Stage("00-teacher", depth, None, None, None),
              Stage("01-pre-distilled", depth, config.distill.pre_mask_rate, None, None)]
    for i, grade in enumerate(grades, start=1):
        stages.append(Stage(f"{i + 1:02d}-grade{i}-{grade.layers}L", grade.layers, grade.mask_rate, grade.steps,
                            grade.lr))
    return stages


def pipeline(config: RunConfig, output_dir: str | Path, teacher: str | Path | None = None,
             progress: bool = True) -> Report:
    """The whole ladder, resumable stage by stage; writes ``report.json``, ``report.md`` and ``report.png``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if teacher is not None:
        depth = load_model(teacher)[0].num_layers
    else:
        from ..models.plm import load_encoder, resolve_plm

        depth = int(load_encoder(resolve_plm(config.model.plm)).config.num_hidden_layers)
    stages = plan(config, depth)
    atomic_write_json(out / "plan.json", [s.__dict__ for s in stages])
    done: list[tuple[Stage, Path]] = []
    previous: Path | None = None
    for stage in stages:
        stage_dir = out / stage.name
        marker = stage_dir / STAGE_DONE
        if stage.mask_rate is None and teacher is not None:
            previous = Path(teacher)
            done.append((stage, previous))
            continue
        if marker.is_file():
            print(f"[{stage.name}] finished earlier; not redone")
        else:
            resume = (stage_dir / LAST).exists()
            print(f"[{stage.name}] {'resuming' if resume else 'starting'}: {stage.layers} layers"
                  + ("" if stage.mask_rate is None else f", mask rate {stage.mask_rate:.2f}"))
            if stage.mask_rate is None:
                train(config, stage_dir, resume=resume, progress=progress)
            else:
                distill(config, previous, stage_dir, layers=stage.layers, mask_rate=stage.mask_rate, resume=resume,
                        steps=stage.steps, lr=stage.lr, progress=progress)
            atomic_write_json(marker, {"done": True, "stage": stage.__dict__})
        previous = stage_dir
        done.append((stage, stage_dir))
    report = build_report([(s.name, d) for s, d in done])
    report.save(out)
    return report
