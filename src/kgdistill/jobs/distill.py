"""The distill job: one student of a trained teacher, from a fully resolved config (docs/METHOD.md, "PMD")."""
from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path

import torch

from .. import distributed
from ..config import DataConfig, RunConfig
from ..data.batching import TransferQueries, tokenizer_key
from ..errors import KGDistillError
from ..losses.contrastive import InfoNCELoss
from ..models.builder import build_model
from ..store.context import DataContext
from ..store.saved import load_run_config, load_teacher
from ..training.callbacks import Callback
from ..training.distillation import DistillationObjective, needs_teacher, stage_terms
from ..training.objectives import ContrastiveObjective
from ..training.trackers import make_trackers
from ..training.trainer import Trainer, write_run_info
from .evaluate import evaluate_in_run
from .train import TrainOutcome, guard_output

log = logging.getLogger("kgdistill")


def inherit_teacher_data(config: RunConfig, teacher_dir: Path, teacher_info: dict) -> None:
    """A student trains and is evaluated on its teacher's dataset with its teacher's text settings: every data key
    the user did not set (:attr:`RunConfig.explicit`) takes the teacher's value."""
    saved = load_run_config(teacher_dir)
    source = saved.data if saved is not None else DataConfig(dataset=teacher_info.get("dataset", DataConfig.dataset))
    for item in dataclasses.fields(DataConfig):
        if f"data.{item.name}" not in config.explicit:
            setattr(config.data, item.name, getattr(source, item.name))


def is_distilled(config: RunConfig) -> bool:
    """Whether the stage's terms (``distill.ablation``'s preset) learn from the teacher; else it is a control."""
    return needs_teacher(stage_terms(config.distill, config.distill.mask_rate or 0.0)[1])


def check_gradient_cache(config: RunConfig) -> None:
    """The distillation objective has no gradient-cache step: ``train.gradient_cache_chunk`` is refused before anything
    runs (a control, trained by SimKGC's loss alone, takes it)."""
    if config.train.gradient_cache_chunk is not None and is_distilled(config):
        raise KGDistillError("config key 'train.gradient_cache_chunk': distillation has no gradient-cache step; leave "
                             "the key unset for distillation (only the teacher and direct controls support it)")


def distill(config: RunConfig, output_dir: str | Path, resume: bool = False, progress: bool = True,
            callbacks: list[Callback] | None = None, tracker: str | None = None) -> TrainOutcome:
    """Train one student of ``distill.teacher`` and evaluate it (``callbacks``, ``tracker``: as for ``train``).

    The config says everything: the student's depth (``model.num_layers``; None: the teacher's), its mask rate
    (``distill.mask_rate``; None: ``distill.pre_mask_rate``), its steps (``distill.stage_steps``, else
    ``train.max_steps``) and rate (``distill.lr``, else ``train.lr``); data keys the user did not set are the teacher's
    (:func:`inherit_teacher_data`). The resolved config is saved as the run's ``config.yaml``, so
    ``kgdistill distill --config RUN/config.yaml`` repeats the run."""
    run_dir = Path(output_dir)
    check_gradient_cache(config)
    if not config.distill.teacher:
        raise KGDistillError("config key 'distill.teacher': a distill job needs its teacher's run or model folder")
    callbacks = [*make_trackers(tracker), *(callbacks or [])]
    guard_output(run_dir, resume)
    trainer, data, config = student_trainer(config, run_dir, progress, callbacks)
    if resume:
        trainer.resume()
    result = trainer.train()
    return TrainOutcome(run_dir, result, evaluate_in_run(run_dir, data, trainer.objective.model, config,
                                                          progress))


def student_trainer(config: RunConfig, run_dir: Path, progress: bool = True,
                    callbacks: list[Callback] | None = None) -> tuple[Trainer, DataContext, RunConfig]:
    """One stage's seeded student, objective (with its teacher) and trainer, as ``distill`` runs them, and the
    resolved config (:func:`resolve_stage`); the run's ``run_info`` is written (``bench/stage_cost.py`` times the
    same steps)."""
    teacher_model, teacher_tokenizer, teacher_dir = load_teacher(config.distill.teacher)
    config = resolve_stage(config, teacher_model, teacher_dir)
    torch.manual_seed(config.seed)  # a stage run alone equals the same stage inside a pipeline
    student, tokenizer = build_model(config, teacher=teacher_model)
    if tokenizer_key(tokenizer) != tokenizer_key(teacher_tokenizer):
        raise KGDistillError(f"model.plm '{config.model.plm}' has a different vocabulary from the teacher's "
                             f"({teacher_dir}); teacher and student must share a tokenizer")
    mask_rate, terms = stage_terms(config.distill, config.distill.mask_rate)
    direct = not needs_teacher(terms)
    if config.distill.copy_temperature and student.info["initialised_from"] == "teacher":
        with torch.no_grad():  # the student starts where the teacher's temperature ended, like its layers
            student.log_inv_t.copy_(teacher_model.log_inv_t)
    student.info.update({"teacher": str(teacher_dir), "mask_rate": None if direct else mask_rate,
                         "ablation": config.distill.ablation})
    teaching = ("no teacher (direct, L_CE only)" if direct
                else f"mask rate {mask_rate:.2f}; ablation {config.distill.ablation}")
    log.info("student: %d layers from %s layers %s (of %d)%s; %s", config.model.num_layers,
             student.info["initialised_from"], student.info["layer_map"], student.info["source_layers"],
             "; query encoder only" if student.info.get("student_side") == "query" else "", teaching)
    data = DataContext(config, tokenizer)
    write_run_info(run_dir, config, {"job": "distill", "teacher": str(teacher_dir), "layers": config.model.num_layers,
                                     "mask_rate": mask_rate, "dataset": data.kg.summary()})
    loss = InfoNCELoss(student, config.loss, data.known_train, config.train.batch_size)
    if direct:
        objective = ContrastiveObjective(student, loss, config.train.gradient_cache_chunk)
    else:
        transfer = (TransferQueries(data.texts, data.tokenized, config.distill.embedding_terms()[1], config.seed,
                                    distributed.rank()) if "transfer" in dict(terms) else None)
        objective = DistillationObjective(student, teacher_model, loss, config.distill, mask_rate,
                                          tokenizer.mask_token_id, terms, transfer)
    trainer = Trainer(run_dir, config, objective, data.train_set(), data.valid_set(), tokenizer, progress=progress,
                      callbacks=callbacks, ranker=data.valid_ranker())
    return trainer, data, config


def resolve_stage(config: RunConfig, teacher_model, teacher_dir: Path) -> RunConfig:
    """The config a distill job runs and saves: every stage setting made explicit (depth, mask rate after the
    ablation switch, steps as ``train.max_steps``, rate as ``train.lr``, the teacher's PLM and data settings), so the
    saved config.yaml alone repeats the stage."""
    config = copy.deepcopy(config)
    config.model.plm = teacher_model.info.get("plm", config.model.plm)
    inherit_teacher_data(config, teacher_dir, teacher_model.info)
    layers = config.model.num_layers or teacher_model.num_layers
    if layers > teacher_model.num_layers:
        raise KGDistillError(f"config key 'model.num_layers': a student of {layers} layers cannot be deeper than its "
                             f"{teacher_model.num_layers}-layer teacher ({teacher_dir})")
    config.model.num_layers = layers
    if config.model.layer_map is not None and len(config.model.layer_map) != layers:
        config.model.layer_map = None
    mask_rate = config.distill.pre_mask_rate if config.distill.mask_rate is None else config.distill.mask_rate
    config.distill.mask_rate = stage_terms(config.distill, mask_rate)[0]
    if not is_distilled(config):
        config.distill.student_side = "both"  # a control is a plain SimKGC model at the student depth
    if config.distill.stage_steps is not None:
        config.train.max_steps = config.distill.stage_steps
    if config.distill.lr is not None:
        config.train.lr = config.distill.lr
    config.distill.teacher = str(teacher_dir)
    config.mark_explicit({"data.dataset"})  # resolved: a run from the saved config must not re-inherit
    return config
