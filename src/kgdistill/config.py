"""One typed config for every job, loaded from presets, YAML/JSON files and ``key=value`` overrides.

The config is passed down explicitly; nothing reads global state. Every run saves the resolved config beside its
checkpoints so that a run can be reproduced and resumed from its folder alone.
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


@dataclass
class DataConfig:
    """Which knowledge graph and how entity and query text is built (docs/METHOD.md, "SimKGC teacher": text)."""

    dataset: str = "wn18rr"
    format: str = "auto"  # auto (recognised by its files) | kgdistill | simkgc | kgbert
    max_tokens: int = 50
    use_neighbors: bool = True
    neighbor_min_words: int = 20  # descriptions with fewer words get neighbour names appended
    max_neighbors: int = 10
    train_limit: int | None = None  # keep only the first N training triples (tests, smoke runs)
    valid_limit: int | None = 1024  # validation examples used for periodic in-batch validation
    cache_dir: str | None = None  # tokenisation cache; default ~/.cache/kgdistill


@dataclass
class ModelConfig:
    """The PLM and how the bi-encoder is built from it."""

    plm: str = "default"  # 'default' (packaged all-MiniLM-L6-v2) or a local Hugging Face folder
    pooling: str = "mean"  # mean | cls
    num_layers: int | None = None  # None: the PLM's depth; fewer builds a student from a layer map
    layer_map: list[int] | None = None  # explicit source layers; None: spread evenly (paper lists for 12 layers)
    init_from: str = "plm"  # plm (released PMD code) | teacher (the teacher's fine-tuned layers)
    layer_choice: str = "even"  # which source layers a student keeps without a layer_map: even | top | bottom | ends


@dataclass
class LossConfig:
    """SimKGC's InfoNCE with additive margin and its three kinds of negatives (docs/METHOD.md, "SimKGC teacher")."""

    margin: float = 0.02
    init_temperature: float = 0.05
    learnable_temperature: bool = True
    max_inv_temperature: float = 100.0  # 1/tau is clamped to [1, this]; SimKGC has no clamp
    pre_batch: int = 0  # number of previous batches used as negatives
    pre_batch_weight: float = 0.5
    self_negative: bool = True
    tail_to_query_loss: bool = True  # the transposed in-batch CE term of SimKGC


@dataclass
class TrainConfig:
    """Optimisation and the run's bookkeeping."""

    batch_size: int = 64
    lr: float = 5e-5
    weight_decay: float = 1e-4
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    warmup_steps: int = 400  # SimKGC: min(400, total_steps // 10)
    grad_clip: float = 10.0
    precision: str = "auto"  # auto (bf16 on CPU and CUDA when supported) | bf16 | fp32
    device: str = "auto"  # auto | cpu | cuda
    num_threads: int | None = None  # torch intra-op threads; None: all cores
    log_every: int = 10
    validate_every: int | None = None  # steps between validations; None: once per epoch
    # At every validation also rank the first data.valid_limit valid triples against all entities (filtered, both
    # directions) and log valid_mrr / valid_hits@k; checkpoint-best then follows valid MRR instead of in-batch
    # accuracy. Costs one encoding of every entity per validation: for graphs of a few thousand entities.
    valid_ranking: bool = False
    checkpoint_every: int = 200  # steps between 'last' checkpoints (also written at the end of each epoch)
    # Stop when the validation metric (valid MRR with valid_ranking, else in-batch accuracy) has not improved for this
    # many validations in a row; None: train all steps.
    early_stopping_patience: int | None = None
    skip_nonfinite: bool = False  # skip a batch whose loss is NaN/inf instead of stopping (counted)
    gradient_cache_chunk: int | None = None  # encode in chunks of this size to fit large batches in small memory
    length_bucketing: bool = False  # batches of similar token length (less padding); see data.batching.BatchOrder
    bucket_pool: int = 32  # batches' worth of shuffled examples sorted by length together when bucketing
    compile: bool = False  # torch.compile the encoders (dynamic shapes); pays only over long runs
    # Padding-free encoding of training batches: several texts per row, block-diagonal attention, positions restarted
    # (models.packing); the same vectors as padded encoding up to float rounding, on BERT-style encoders.
    packing: bool = True
    # On CPUs: dropout masks from 16 random bits an element instead of torch's bernoulli_ (models.fast_dropout), the
    # drop rate rounded to 2^-16; about 2.5x cheaper, 1.15x a packed teacher step. GPUs keep torch's dropout.
    fast_dropout: bool = True
    fused_optimizer: bool = True  # fused AdamW where torch has it for the device, else foreach AdamW


@dataclass
class EvalConfig:
    """Filtered ranking over all entities in both directions (docs/METHOD.md, "Evaluation")."""

    split: str = "test"
    batch_size: int = 256
    query_chunk: int = 1024  # queries scored against all entities at once; bounds memory
    rerank_weight: float = 0.05
    rerank_hops: int | None = None  # None: 5 for WN18RR, 2 otherwise (SimKGC)
    rerank_max_nodes: int = 100_000
    tie_policy: str = "realistic"  # optimistic | realistic | pessimistic
    max_queries: int | None = None  # evaluate only the first N triples of the split (quick runs say so)
    checkpoint: str = "last"  # last | best
    dump_predictions: bool = False
    # Millions of entities: entity vectors go to fp16 shards on disk (memory-mapped) and queries are streamed against
    # them one shard at a time, so memory is bounded by query_chunk x shard_size instead of query_chunk x |E|.
    streaming: bool = False
    shard_size: int = 262_144  # entities per shard (1024 x 262,144 fp32 scores = 1 GiB a block)
    shards_dir: str | None = None  # where the shards are written (kept); None: a temporary folder, removed afterwards


@dataclass
class GradeConfig:
    """One rung of the progressive ladder."""

    layers: int
    mask_rate: float
    steps: int | None = None  # None: the ladder's default budget
    lr: float | None = None  # None: train.lr


@dataclass
class DistillConfig:
    """PMD (docs/METHOD.md, "PMD"): loss weights, MGFD form and the grade ladder."""

    # The stage a distill job trains: its teacher (a run or model folder; the student depth is model.num_layers, the
    # teacher's when None) and its MGFD mask rate (None: pre_mask_rate); pipeline sets both for every stage it plans.
    teacher: str | None = None
    mask_rate: float | None = None
    alpha: float = 0.1  # weight of L_SCORE
    beta: float = 0.1  # weight of L_MGFD
    score_loss: str = "mse"  # mse (paper Eq. 5) | kl
    score_on: str = "cosine"  # cosine (paper Eq. 5) | logits (released code: temperature-scaled, masked)
    kl_temperature: float = 1.0
    mgfd: str = "generative"  # generative (paper: per-token generation head) | pooled (released code)
    generation_hidden: int | None = None  # hidden size of the generation head; None: the teacher's
    student_input: str = "masked"  # masked (code and paper) | clean (student sees unmasked text for L_CE/L_SCORE)
    teacher_margin: bool = False  # released code builds teacher logits in eval mode (no margin)
    pre_mask_rate: float = 0.2  # pre-distillation (same depth)
    grades: list[GradeConfig] = field(default_factory=list)  # empty: scaled from the PLM depth (paper ratios)
    stage_steps: int | None = None  # steps of a distill job (it becomes its train.max_steps); None: train.max_steps
    ablation: str = "none"  # none | direct | no-mgfd | fixed-mask | logit-only: term-list presets (ABLATIONS)
    fixed_mask_rate: float = 0.2  # for the fixed-mask ablation
    # Beyond the paper: match the student's pooled query/entity vectors to the teacher's (as sentence-transformers
    # distils embedding models); added as + gamma * L_EMB, so gamma = 0 is the paper's objective.
    embedding_weight: float = 0.0
    # gamma for a query-only student (student_side=query, and the serving grade); None: embedding_weight. Scored
    # against the teacher's frozen entity vectors, such a student ranks as the teacher does exactly when its query
    # vectors equal the teacher's, so it can lean harder on L_EMB than a symmetric student.
    query_embedding_weight: float | None = None
    embedding_loss: str = "cosine"  # cosine (1 - cos) | mse
    # Beyond the paper: a label-free transfer set. Each step also draws this many random (entity, relation or inverse)
    # queries from the whole graph, in their evaluation text, and pulls the student's query vectors onto the
    # teacher's there (+ gamma * L_TRANSFER; no answers are used). The extra passes are charged to the budget.
    transfer_queries: int = 0
    query_transfer_queries: int | None = None  # transfer_queries for a query-only student; None: transfer_queries
    # both: the student has both encoders at its depth (paper); query: only the query encoder is distilled, the
    # teacher's entity encoder (and so its entity index) is kept frozen, as a serving recipe.
    student_side: str = "both"
    # A student built from the teacher's layers also starts at the teacher's learned temperature (else at
    # loss.init_temperature, as a PLM-initialised student does); it matters most for a query-only student scored
    # against the teacher's frozen entity vectors.
    copy_temperature: bool = True
    pre_distill: bool = True  # run the same-depth pre-distillation stage before the grades
    # The students' rate: the pre-distillation's, a distill job's, and the base of the grades' rates below. None:
    # train.lr, the teacher's own, as in the paper.
    lr: float | None = None
    # Shallower grades take larger steps: a grade of L layers under a D-layer teacher trains at
    # distill.lr * (D / L) ** lr_depth_power (0: distill.lr everywhere, as the paper); a grade's own lr wins, and its
    # controls train at the same rate.
    lr_depth_power: float = 0.0
    # The whole ladder's budget in teacher-step equivalents (a stage's step costs its encoder layer passes relative
    # to a teacher training step); split evenly over the distillation stages. None: budget_ratio's, else stage_steps
    # for every stage.
    budget: float | None = None
    # The budget as a multiple of the teacher's own training steps (its run's train_summary.json, or train.max_steps
    # for the teacher a pipeline trains): 1.0 spends on distillation what training the teacher cost, so a teacher
    # trained longer gets a longer distillation. Used when budget is None.
    budget_ratio: float | None = None
    # per grade, also train: direct (same init, L_CE) | plm (PLM layers, L_CE), at the grade's compute; direct-steps |
    # plm-steps at its number of steps; direct-best | plm-best at its compute, scored at the best valid checkpoint
    controls: list[str] = field(default_factory=list)
    # Also train the serving recipe at the smallest grade's depth: a query-only student (student_side=query) taught
    # by the teacher, with the smallest grade's steps; its own row in the report.
    serving_grade: bool = False

    def embedding_terms(self) -> tuple[float, int]:
        """gamma and the transfer queries a step for this config's student side: a query-only student's own keys
        (``query_embedding_weight``, ``query_transfer_queries``) where set."""
        gamma, transfer = self.embedding_weight, self.transfer_queries
        if self.student_side == "query":
            gamma = gamma if self.query_embedding_weight is None else self.query_embedding_weight
            transfer = transfer if self.query_transfer_queries is None else self.query_transfer_queries
        return gamma, transfer


@dataclass
class RunConfig:
    """Everything a job needs."""

    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts, as saved in a run's config.yaml."""
        return dataclasses.asdict(self)

    @property
    def explicit(self) -> frozenset[str]:
        """Dotted keys the user set (in a config file, overrides or keyword sections; every key of a saved
        config.yaml), as opposed to a default or a preset's value: a student inherits its teacher's data settings for
        the other data keys. Recorded by :func:`build_config`, never guessed from the values."""
        return self.__dict__.get("_explicit", frozenset())

    def mark_explicit(self, keys: frozenset[str] | set[str]) -> None:
        """Record ``keys`` as set by the user (added to those already recorded)."""
        self.__dict__["_explicit"] = self.explicit | frozenset(keys)

    def save(self, path: str | Path) -> None:
        """Write the resolved config as YAML, atomically."""
        from .io import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


# Presets: 'quick' fits two CPU cores (a teacher, then one 2-layer student in one jump: about 30 minutes);
# 'quick-ladder' is the same budget spent on PMD's progressive ladder; 'paper' is SimKGC's released WN18RR script and
# PMD's distillation settings, for a GPU.
_QUICK: dict[str, Any] = {
    # The teacher's rate, 3e-4, was decided on full WN18RR's valid split (BENCHMARKS.md section 7i: 25.34 against 22.33
    # at 1e-4, two seeds).
    "train": {"batch_size": 128, "lr": 3e-4, "max_steps": 180, "warmup_steps": 20, "checkpoint_every": 60,
              "validate_every": 60},
    "data": {"valid_limit": 512},
    # At 50 steps a student built from raw PLM layers cannot learn what the teacher needed 180 for (it ranks the
    # query's own head first for every query); on a CPU budget students start from the teacher's layers.
    "model": {"init_from": "teacher"},
    # Measured in BENCHMARKS.md sections 2-3 and 7: the distillation gets the teacher's own steps in teacher-step
    # equivalents (cheap grades get more steps; from a 540-step teacher a third of that lost to fine-tuning at equal
    # compute, all of it won, section 7e), students also match the teacher's pooled vectors, scores are
    # compared on clean text (masked text feeds MGFD only), and the students' rate is 1e-4 at the teacher's depth,
    # larger for shallower grades: x (6/L)^2, 4e-4 at 3 layers and 9e-4 at 2 (the best of 1e-4 / 3e-4 / 1e-3 was 3e-4
    # at 3 layers and 1e-3 at 2).
    # A query-only student (the serving recipe) leans harder on L_EMB: 4.0 against 1.0 raised it from 45.19 to 46.46
    # valid MRR at equal compute (section 7p, decided on valid; no CE at all, 45.33, did not). It also learns from a
    # label-free transfer set of 128 random queries a step: from a converged teacher, 40.19 valid MRR (99.8 %) against
    # 38.10 without it at equal compute, three seeds each (section 7t, decided on valid); the symmetric students were
    # not measured with one.
    "distill": {"stage_steps": 50, "budget_ratio": 1.0, "embedding_weight": 1.0, "query_embedding_weight": 4.0,
                "query_transfer_queries": 128, "student_input": "clean", "lr": 1e-4, "lr_depth_power": 2.0},
}
PRESETS: dict[str, dict[str, Any]] = {
    # The best small model at this budget (BENCHMARKS.md section 3c): one jump from the teacher to 2 layers, keeping
    # its first and last layers, all of the budget at 9e-4. Not PMD's full objective: at a 0 % mask rate there is no
    # MGFD term and nothing is progressive; it is score + embedding distillation (0.8 CE + 0.1 SCORE + 4.0 EMB) from
    # the teacher's layers. From a teacher that levels off (BENCHMARKS.md section 7) it beats fine-tuning the same
    # layers at equal compute by about 3 MRR (three seeds); MGFD (masking) did not pay at equal compute there. From
    # the unfinished 180-step teacher on full WN18RR it loses to that fine-tuning by 7.1 MRR (section 7k, three seeds).
    # EMB weight 4 against 1, decided on valid from a converged teacher (section 7r): +2.21 MRR over three seeds
    # (94.4 % of the teacher against 88.9 %), and +1.59 on full WN18RR's valid (seed 7).
    "quick": {**_QUICK, "model": {**_QUICK["model"], "layer_choice": "ends"},
              "distill": {**_QUICK["distill"], "pre_distill": False, "embedding_weight": 4.0,
                          "grades": [{"layers": 2, "mask_rate": 0.0, "lr": 9e-4}]}},
    "quick-ladder": _QUICK,
    "paper": {
        "train": {"batch_size": 1024, "lr": 5e-5, "epochs": 50, "max_steps": None, "warmup_steps": 400,
                  "checkpoint_every": 500},
        "data": {"valid_limit": None},
        "model": {"init_from": "plm"},
        "distill": {"stage_steps": None, "budget": None, "embedding_weight": 0.0, "student_input": "masked",
                    "lr_depth_power": 0.0},
    },
}

_CHOICES = {
    "data.format": {"auto", "kgdistill", "simkgc", "kgbert"},
    "model.pooling": {"mean", "cls"},
    "model.init_from": {"plm", "teacher"},
    "train.precision": {"auto", "bf16", "fp32"},
    "train.device": {"auto", "cpu", "cuda"},
    "eval.split": {"train", "valid", "test"},
    "eval.tie_policy": {"optimistic", "realistic", "pessimistic"},
    "eval.checkpoint": {"last", "best"},
    "distill.score_loss": {"mse", "kl"},
    "distill.score_on": {"cosine", "logits"},
    "distill.mgfd": {"generative", "pooled"},
    "distill.student_input": {"masked", "clean"},
    "distill.ablation": {"none", "direct", "no-mgfd", "fixed-mask", "logit-only"},
    "distill.embedding_loss": {"cosine", "mse"},
    "distill.student_side": {"both", "query"},
    "model.layer_choice": {"even", "top", "bottom", "ends"},
}


# direct: same init as the PMD grade, L_CE only; plm: from the PLM's layers, L_CE only. Both get the PMD stage's
# compute (more steps, having no teacher to run); with '-steps' they get its number of steps instead; with '-best'
# its compute, validated by valid MRR and scored at its best valid checkpoint (early stopping chosen on valid: the
# strongest control plain fine-tuning gives).
CONTROLS = {"direct", "plm", "direct-steps", "plm-steps", "direct-best", "plm-best"}


def control_parts(control: str) -> tuple[str, str]:
    """A control's kind and what it is held equal on: ``'direct-best'`` -> ``('direct', 'best')``; the variant is
    ``'compute'`` for a bare kind, ``'steps'`` or ``'best'`` (equal compute, best valid checkpoint) otherwise."""
    kind, _, variant = control.partition("-")
    return kind, variant or "compute"


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a dataclass field type, converting what is safe (int -> float, dict -> dataclass)."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {**vars(typing), **globals()})  # resolve postponed annotations of this module
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if dataclasses.is_dataclass(annotation):
        if isinstance(annotation, type) and isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return _build(annotation, value, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads '1e-4' as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"config key '{key}': must be a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in fields:
            raise ConfigError(f"unknown config key '{key}' (known: {', '.join(sorted(fields))})")
        kwargs[name] = _coerce(value, fields[name].type, key)
    missing = [name for name, f in fields.items() if name not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"config key '{prefix + '.' if prefix else ''}{missing[0]}': required")
    return cls(**kwargs)


def merge_values(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` laid over it, nested sections merged key by key (the order presets, files and
    overrides are resolved in)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_values(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ``["train.lr=1e-4", "loss.self_negative=false"]`` into a nested dict (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.lr=1e-4)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and raw.strip().lower() in {"none", "null"}:
            value = None
        node = nested
        parts = key.strip().split(".")
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{'.'.join(parts[:depth + 1])}' is a section, not a value")
        if isinstance(node.get(parts[-1]), dict) and not isinstance(value, dict):
            raise ConfigError(f"override '{item}': '{key.strip()}' is a section, not a value")
        node[parts[-1]] = value
    return nested


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into nested dicts; errors name the file, and a syntax error its line, column
    and problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config file is not UTF-8") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    except yaml.YAMLError as exc:
        mark, context_mark = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context = getattr(exc, "context", None)
        if context and context_mark is not None:
            problem += f" ({context} started at line {context_mark.line + 1})"
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections (data, model, train, ...)")
    return data


def dotted_keys(values: dict[str, Any], prefix: str = "") -> set[str]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr"}``: the leaf keys of nested dicts."""
    keys = set()
    for name, value in values.items():
        key = f"{prefix}{name}"
        keys |= dotted_keys(value, key + ".") if isinstance(value, dict) and value else {key}
    return keys


def build_config(preset: str | None = "quick", file: str | Path | None = None, overrides: dict[str, Any] | None = None,
                 **sections: Any) -> RunConfig:
    """Resolve a config: defaults < preset < file < overrides < keyword sections; then validate. The keys given by
    the file, the overrides and the sections are recorded as the user's (:attr:`RunConfig.explicit`)."""
    values: dict[str, Any] = {}
    if preset:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset '{preset}' (known: {', '.join(PRESETS)})")
        values = merge_values(values, PRESETS[preset])
    user: dict[str, Any] = {}
    if file:
        user = merge_values(user, load_config_file(file))
    if overrides:
        user = merge_values(user, overrides)
    for name, value in sections.items():
        if value is not None:
            user = merge_values(user, {name: value})
    config = _build(RunConfig, merge_values(values, user))
    validate(config)
    # a dataset folder named relative to the working directory is saved absolute, so that the run's config.yaml
    # (and every job on its models: evaluate, distill, predict) finds it from anywhere
    folder = Path(config.data.dataset).expanduser()
    if not folder.is_absolute() and folder.is_dir():
        config.data.dataset = str(folder.resolve())
    config.mark_explicit(dotted_keys(user))
    return config


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """A validated config from nested dicts (a saved config.yaml), with no preset applied; every key it holds counts
    as set."""
    config = _build(RunConfig, values)
    validate(config)
    config.mark_explicit(dotted_keys(values))
    return config


def validate(config: RunConfig) -> None:
    """Range and consistency checks; each failure names the key."""
    for key, allowed in _CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value not in allowed:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {sorted(allowed)}")

    if not 0 <= config.seed < 2**32:
        raise ConfigError(f"config key 'seed': must be in [0, 2**32), got {config.seed}")

    def positive(key: str, value: float | None, allow_zero: bool = False) -> None:
        if value is None:
            return
        if not math.isfinite(value):
            raise ConfigError(f"config key '{key}': must be finite, got {value}")
        if value < 0 or (value == 0 and not allow_zero):
            raise ConfigError(f"config key '{key}': must be {'>= 0' if allow_zero else '> 0'}, got {value}")

    positive("data.max_tokens", config.data.max_tokens)
    positive("data.max_neighbors", config.data.max_neighbors, allow_zero=True)
    positive("data.train_limit", config.data.train_limit)
    positive("data.valid_limit", config.data.valid_limit)
    positive("model.num_layers", config.model.num_layers)
    positive("loss.margin", config.loss.margin, allow_zero=True)
    positive("loss.init_temperature", config.loss.init_temperature)
    positive("loss.pre_batch", config.loss.pre_batch, allow_zero=True)
    positive("loss.pre_batch_weight", config.loss.pre_batch_weight, allow_zero=True)
    if config.loss.max_inv_temperature < 1 or 1 / config.loss.init_temperature > config.loss.max_inv_temperature:
        raise ConfigError("config key 'loss.max_inv_temperature': must be >= 1 and >= 1/loss.init_temperature")
    positive("train.batch_size", config.train.batch_size)
    if config.train.batch_size < 2:
        raise ConfigError("config key 'train.batch_size': contrastive training needs at least 2 examples a batch")
    positive("train.lr", config.train.lr)
    positive("train.weight_decay", config.train.weight_decay, allow_zero=True)
    positive("train.epochs", config.train.epochs)
    positive("train.max_steps", config.train.max_steps)
    positive("train.warmup_steps", config.train.warmup_steps, allow_zero=True)
    positive("train.grad_clip", config.train.grad_clip)
    positive("train.num_threads", config.train.num_threads)
    positive("train.log_every", config.train.log_every)
    positive("train.validate_every", config.train.validate_every)
    positive("train.checkpoint_every", config.train.checkpoint_every)
    positive("train.early_stopping_patience", config.train.early_stopping_patience)
    positive("train.gradient_cache_chunk", config.train.gradient_cache_chunk)
    positive("train.bucket_pool", config.train.bucket_pool)
    positive("eval.batch_size", config.eval.batch_size)
    positive("eval.query_chunk", config.eval.query_chunk)
    positive("eval.rerank_weight", config.eval.rerank_weight, allow_zero=True)
    positive("eval.rerank_hops", config.eval.rerank_hops, allow_zero=True)
    positive("eval.max_queries", config.eval.max_queries)
    positive("eval.shard_size", config.eval.shard_size)
    if config.eval.shards_dir == "":
        raise ConfigError("config key 'eval.shards_dir': must be a folder path or null (a temporary folder)")
    d = config.distill
    for key in ("alpha", "beta"):
        value = getattr(d, key)
        if not 0 <= value <= 1:
            raise ConfigError(f"config key 'distill.{key}': must be in [0, 1], got {value}")
    if d.alpha + d.beta > 1:
        raise ConfigError(f"config keys 'distill.alpha' + 'distill.beta' must be <= 1 (the CE weight is 1-alpha-beta), "
                          f"got {d.alpha} + {d.beta}")
    positive("distill.kl_temperature", d.kl_temperature)
    positive("distill.embedding_weight", d.embedding_weight, allow_zero=True)
    positive("distill.query_embedding_weight", d.query_embedding_weight, allow_zero=True)
    positive("distill.transfer_queries", d.transfer_queries, allow_zero=True)
    positive("distill.query_transfer_queries", d.query_transfer_queries, allow_zero=True)
    for side, prefix in (("both", ""), ("query", "query_")):
        gamma, transfer = dataclasses.replace(d, student_side=side).embedding_terms()
        if transfer and not gamma:
            raise ConfigError(f"config key 'distill.{prefix}transfer_queries': the transfer set is weighted by the "
                              f"embedding weight; set distill.{prefix}embedding_weight > 0 as well")
    positive("distill.budget", d.budget)
    positive("distill.budget_ratio", d.budget_ratio)
    positive("distill.lr", d.lr)
    positive("distill.lr_depth_power", d.lr_depth_power, allow_zero=True)
    for i, control in enumerate(d.controls):
        if control not in CONTROLS:
            raise ConfigError(f"config key 'distill.controls[{i}]': {control!r} is not one of {sorted(CONTROLS)}")
    positive("distill.stage_steps", d.stage_steps)
    for key, rate in (("distill.pre_mask_rate", d.pre_mask_rate), ("distill.fixed_mask_rate", d.fixed_mask_rate),
                      ("distill.mask_rate", d.mask_rate)):
        if rate is None:
            continue
        if not 0 <= rate < 1:
            raise ConfigError(f"config key '{key}': a mask rate must be in [0, 1), got {rate}")
    previous = None
    for i, grade in enumerate(d.grades):
        if grade.layers < 1:
            raise ConfigError(f"config key 'distill.grades[{i}].layers': must be >= 1, got {grade.layers}")
        if not 0 <= grade.mask_rate < 1:
            raise ConfigError(f"config key 'distill.grades[{i}].mask_rate': must be in [0, 1), got {grade.mask_rate}")
        if previous is not None and grade.layers > previous:
            raise ConfigError(f"config key 'distill.grades[{i}].layers': a student ({grade.layers} layers) cannot be "
                              f"deeper than its teacher (grade {i - 1}, {previous} layers)")
        positive(f"distill.grades[{i}].steps", grade.steps)
        positive(f"distill.grades[{i}].lr", grade.lr)
        previous = grade.layers
    if config.model.layer_map is not None:
        if config.model.num_layers is not None and len(config.model.layer_map) != config.model.num_layers:
            raise ConfigError(f"config key 'model.layer_map': {len(config.model.layer_map)} layers listed but "
                              f"model.num_layers is {config.model.num_layers}")
