"""Python API, mirrored one to one by the CLI: ``train``, ``evaluate``, ``distill``, ``pipeline``."""
from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from .config import RunConfig, config_from_dict
from .data.batching import ExampleSet, KnownTails, Tokenized
from .data.dataset import KnowledgeGraph, load_dataset
from .data.text import TextBuilder, with_inverses
from .errors import CheckpointError, KGDistillError
from .evaluation.ranking import EvaluationResult, Evaluator, write_metrics
from .models.biencoder import BiEncoder, load_model_tokenizer
from .models.plm import (build_student_encoder, choose_layers, load_encoder, load_tokenizer, num_layers,
                         resolve_plm)
from .runtime import pick_device
from .training.trainer import BEST, LAST, Trainer, write_run_info

log = logging.getLogger("kgdistill")


def tokenizer_key(tokenizer) -> str:
    """Content hash of a tokenizer, so that token caches are shared by every model with the same vocabulary."""
    vocab = sorted(tokenizer.get_vocab().items())
    text = json.dumps([type(tokenizer).__name__, getattr(tokenizer, "do_lower_case", None), vocab])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class DataContext:
    """The dataset with its text builder, token cache and known training answers, built once per job."""

    def __init__(self, config: RunConfig, tokenizer, kg: KnowledgeGraph | None = None):
        self.config = config
        self.kg = (kg or load_dataset(config.data.dataset, config.data.format)).limited(config.data.train_limit)
        d = config.data
        self.texts = TextBuilder(self.kg, d.use_neighbors, d.neighbor_min_words, d.max_neighbors)
        self.tokenized = Tokenized(tokenizer, tokenizer_key(tokenizer), d.max_tokens, d.cache_dir)
        self.train_queries = with_inverses(self.kg.splits["train"], self.kg.num_relations)
        self.known_train = KnownTails(self.train_queries, self.kg.num_entities, self.kg.num_relations)
        self._train_set = None
        self._valid_set = None

    @property
    def prefix(self) -> str:
        return f"{self.kg.name}-{self.kg.fingerprint}-{self.config.data.use_neighbors}"

    def train_set(self) -> ExampleSet:
        if self._train_set is None:
            self._train_set = ExampleSet(self.train_queries, self.texts, self.tokenized, f"{self.prefix}-train",
                                         training=True)
        return self._train_set

    def valid_set(self) -> ExampleSet | None:
        if self._valid_set is None:
            queries = with_inverses(self.kg.splits["valid"], self.kg.num_relations)
            if len(queries) < 2:
                return None
            limit = self.config.data.valid_limit
            if limit is not None and limit < len(queries):
                queries = queries[np.random.default_rng(self.config.seed).choice(len(queries), limit, replace=False)]
            self._valid_set = ExampleSet(queries, self.texts, self.tokenized, f"{self.prefix}-valid", training=False)
        return self._valid_set

    def evaluator(self, device: torch.device | None = None) -> Evaluator:
        device = device or pick_device(self.config.train.device)
        return Evaluator(self.kg, self.texts, self.tokenized, self.config.eval, device, self.config.train.precision)


# ---------------------------------------------------------------------------------------------------- models
def build_model(config: RunConfig, teacher: BiEncoder | None = None) -> tuple[BiEncoder, object]:
    """A bi-encoder from the PLM, or a shallower student from a layer map over the PLM's or the teacher's layers."""
    plm_path = resolve_plm(config.model.plm)
    tokenizer = load_tokenizer(plm_path)
    plm = load_encoder(plm_path)
    from_teacher = config.model.init_from == "teacher" and teacher is not None
    sources = (teacher.hr_encoder, teacher.tail_encoder) if from_teacher else (plm, plm)
    depth = num_layers(sources[0])
    layers = config.model.num_layers or (len(config.model.layer_map) if config.model.layer_map else depth)
    if teacher is not None and layers > teacher.num_layers:
        raise KGDistillError(f"config key 'model.num_layers': a student of {layers} layers cannot be deeper than its "
                             f"{teacher.num_layers}-layer teacher")
    if layers > depth:
        raise KGDistillError(f"config key 'model.num_layers': {layers} layers requested but the source "
                             f"({'teacher' if from_teacher else 'PLM'}) has {depth}")
    layer_map = config.model.layer_map or choose_layers(depth, layers, config.model.layer_choice)
    hr = build_student_encoder(sources[0], layer_map)
    query_only = config.distill.student_side == "query" and teacher is not None
    if query_only:  # the serving recipe: the teacher's entity encoder, frozen, so its entity index stays valid
        tail = copy.deepcopy(teacher.tail_encoder).requires_grad_(False)
    else:
        tail = build_student_encoder(sources[1], layer_map)
    info = {"plm": str(config.model.plm), "dataset": config.data.dataset, "layer_map": layer_map,
            "initialised_from": "teacher" if from_teacher else "plm", "source_layers": depth,
            "student_side": "query" if query_only else "both"}
    lc = config.loss
    model = BiEncoder(hr, tail, config.model.pooling, lc.init_temperature, lc.learnable_temperature,
                      lc.max_inv_temperature, info)
    return model, tokenizer


def resolve_model_dir(path: str | Path, checkpoint: str = "last") -> Path:
    """A model folder, or a run folder whose checkpoint-last/-best is used."""
    path = Path(path)
    if (path / "model.json").is_file():
        return path
    for name in ([LAST, BEST] if checkpoint == "last" else [BEST, LAST]):
        if (path / name / "model.json").is_file():
            return path / name
    raise CheckpointError(f"{path}: no model here (expected model.json or a {LAST}/ folder)")


def load_run_config(model_dir: Path) -> RunConfig | None:
    """The config saved beside a model (its run folder's config.yaml), when there is one."""
    for candidate in (model_dir / "config.yaml", model_dir.parent / "config.yaml"):
        if candidate.is_file():
            try:
                return config_from_dict(yaml.safe_load(candidate.read_text(encoding="utf-8")))
            except (yaml.YAMLError, KGDistillError, TypeError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise CheckpointError(f"{candidate}: cannot read the saved config ({first})") from None
    return None


def load_model(path: str | Path, checkpoint: str = "last") -> tuple[BiEncoder, object, Path]:
    folder = resolve_model_dir(path, checkpoint)
    return BiEncoder.load(folder), load_model_tokenizer(folder), folder


# ---------------------------------------------------------------------------------------------------- jobs
@dataclass
class TrainOutcome:
    run_dir: Path
    train: dict
    metrics: dict | None


def _guard_output(run_dir: Path, resume: bool) -> None:
    if (run_dir / LAST).exists() and not resume:
        raise KGDistillError(f"{run_dir}: already holds a run; pass --resume to continue it or choose another "
                             f"--output-dir")


def train(config: RunConfig, output_dir: str | Path, resume: bool = False, evaluate_after: bool = True,
          progress: bool = True, on_step=None) -> TrainOutcome:
    """Train a SimKGC teacher, then evaluate its last checkpoint on ``config.eval.split``."""
    from .training import distributed

    distributed.init_from_env()
    run_dir = Path(output_dir)
    _guard_output(run_dir, resume)
    torch.manual_seed(config.seed)
    model, tokenizer = build_model(config)
    data = DataContext(config, tokenizer)
    write_run_info(run_dir, config, {"job": "train", "dataset": data.kg.summary()})
    from .losses.contrastive import InfoNCELoss
    from .training.objectives import ContrastiveObjective

    loss = InfoNCELoss(model, config.loss, data.known_train, config.train.batch_size)
    trainer = Trainer(run_dir, config, ContrastiveObjective(model, loss), data.train_set(), data.valid_set(),
                      tokenizer, progress=progress, on_step=on_step)
    if resume:
        trainer.resume()
    result = trainer.train()
    metrics = None
    if evaluate_after and distributed.is_main():
        metrics = evaluate_in_run(run_dir, data, trainer.objective.model, config, progress)
    return TrainOutcome(run_dir, result.__dict__, metrics)


def evaluate_in_run(run_dir: Path, data: DataContext, model: BiEncoder, config: RunConfig,
                    progress: bool = True) -> dict:
    if config.eval.checkpoint == "best" and (run_dir / BEST).exists():
        model = BiEncoder.load(run_dir / BEST)
    result = data.evaluator().evaluate(model.to(pick_device(config.train.device)), progress=progress)
    write_metrics(result, run_dir)
    return result.metrics


def evaluate(model_path: str | Path, dataset: str | None = None, split: str = "test", config: RunConfig | None = None,
             output: str | Path | None = None, progress: bool = True) -> EvaluationResult:
    """Filtered ranking of a saved model; writes ``metrics.json`` beside the run (or to ``output``)."""
    model, tokenizer, folder = load_model(model_path, (config.eval.checkpoint if config else "last"))
    saved = load_run_config(folder)
    base = copy.deepcopy(saved or RunConfig())
    if config is not None:  # the caller's evaluation and device settings; the data settings the model was trained with
        base.eval, base.train.device, base.train.precision = config.eval, config.train.device, config.train.precision
    config = base
    if dataset is not None:
        config.data.dataset = dataset
    elif saved is None:
        config.data.dataset = model.info.get("dataset", config.data.dataset)
    config.eval.split = split
    data = DataContext(config, tokenizer)
    device = pick_device(config.train.device)
    result = data.evaluator(device).evaluate(model.to(device), split, progress=progress)
    out_dir = Path(output) if output else (folder.parent if folder.name in (LAST, BEST) else folder)
    write_metrics(result, out_dir)
    return result
