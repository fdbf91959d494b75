"""PMD's progressive ladder as a plan (docs/METHOD.md, "PMD"): teacher -> pre-distillation (same depth) -> grades
of fewer layers, each taught by the grade above, with the controls and the serving grade; each stage's steps from the
budget, and the config its distill job runs (:func:`stage_run_config`)."""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from ..config import DistillConfig, GradeConfig, RunConfig, control_parts
from ..errors import ConfigError
from ..store.saved import trained_steps
from ..training.distillation import stage_terms

log = logging.getLogger("kgdistill")

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


@dataclass(frozen=True)
class SequenceLengths:
    """Mean real tokens of the sequences a step encodes; a layer pass costs in proportion to them (packed encoding):
    the training queries (head text + relation), the training entities (tails, and heads alone) and the transfer
    queries. All 1 (the default): every sequence costs the same."""
    query: float = 1.0
    entity: float = 1.0
    transfer: float = 1.0


def sequence_lengths(data, sample: int = 2048) -> SequenceLengths:
    """The mean lengths of a DataContext's training set and of ``sample`` transfer queries (a fixed draw)."""
    from ..data.batching import TransferQueries

    query, tail, head = data.train_set().encoder_lengths(with_heads=True)
    transfer = TransferQueries(data.texts, data.tokenized, sample, seed=0).batch(0).attention_mask.sum(1)
    return SequenceLengths(float(query.mean()), float((tail.mean() + head.mean()) / 2), float(transfer.float().mean()))


def step_cost(student_layers: int, teacher_layers: int, base_layers: int, query_only: bool = False,
              entity_layers: int | None = None, direct: bool = False, masked_passes: bool = False,
              transfer: float = 0.0, lengths: SequenceLengths = SequenceLengths()) -> float:
    """Encoder token-layer passes of one stage step relative to one teacher training step (three sequences a sample:
    query, tail, head, each weighted by its mean length in ``lengths``; a trained pass costs about three forward
    passes, a frozen teacher's one). Counting tokens, not sequences, matters where student and teacher encode
    different sequences: the query-only student and the transfer queries (BENCHMARKS.md section 7u).

    ``masked_passes``: scores come from clean text and MGFD runs, so student and teacher encode the masked query
    (and, unless only the query encoder is trained, the masked tail) once more. ``transfer``: transfer queries per
    training example (``distill.transfer_queries`` / ``train.batch_size``), each a trained student query pass and a
    teacher one."""
    entity_layers = entity_layers or teacher_layers
    q, e = lengths.query, lengths.entity
    sample = q + 2 * e
    if direct:
        passes = 3 * student_layers * sample
    elif query_only:  # student query pass trained; tail and head come from the frozen teacher's entity encoder
        passes = 3 * student_layers * q + teacher_layers * q + 2 * entity_layers * e
    else:
        passes = (3 * student_layers + teacher_layers) * sample
    if masked_passes and not direct:
        passes += (3 * student_layers + teacher_layers) * (q if query_only else q + e)
    if not direct:
        passes += transfer * (3 * student_layers + teacher_layers) * lengths.transfer
    return passes / (3 * base_layers * sample)

# Stage kinds: the students distilled from a teacher, and the controls trained without one (the same layers).
STUDENT_KINDS = ("pmd", "query")
CONTROL_KINDS = ("direct", "plm")


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
    checkpoint: str = "last"  # which checkpoint is scored: best (a '-best' control) follows valid MRR


def distill_budget(config: RunConfig, teacher_steps: int | None = None) -> float | None:
    """The distillation budget in teacher-step equivalents: ``distill.budget``, else ``distill.budget_ratio`` times
    the teacher's training steps (``teacher_steps``, by default those of the run ``distill.teacher`` names, or the
    ``train.max_steps`` of the teacher the pipeline trains); None (``stage_steps`` for every stage) when neither."""
    d = config.distill
    if d.budget is not None or d.budget_ratio is None:
        return d.budget
    if teacher_steps is None:
        teacher_steps = trained_steps(d.teacher) if d.teacher else config.train.max_steps
    if not teacher_steps:
        raise ConfigError("config key 'distill.budget_ratio': the teacher's training steps are unknown (its folder "
                          "has no train_summary.json, or the teacher to train has no train.max_steps); set "
                          "distill.budget to a number of teacher steps")
    return d.budget_ratio * teacher_steps


def transfer_share(config: RunConfig, distill: DistillConfig, terms: dict) -> float:
    """Transfer queries per training example of a stage with ``distill``'s settings and ``terms`` (0 without a
    transfer term)."""
    return distill.embedding_terms()[1] / config.train.batch_size if "transfer" in terms else 0.0


def plan(config: RunConfig, depth: int, teacher_steps: int | None = None,
         lengths: SequenceLengths = SequenceLengths()) -> list[Stage]:
    """The stages in order: teacher, pre-distillation, grades, and each grade's controls right after it.

    With a budget (:func:`distill_budget`) every distillation stage gets an even share of it, in teacher-step
    equivalents (:func:`step_cost` with the data's ``lengths``), so cheap grades get more steps; explicit per-grade
    steps still win."""
    d = config.distill
    budget = distill_budget(config, teacher_steps)
    if budget:
        ratio = d.budget_ratio if d.budget is None else None
        log.info("distillation budget: %.0f teacher-step equivalents%s", budget,
                 f" ({ratio:g} x the teacher's {budget / ratio:.0f} training steps)" if ratio else "")
    query_only = d.student_side == "query"
    stages = [Stage("00-teacher", depth, None, None, None, kind="teacher")]
    base_lr = d.lr if d.lr is not None else config.train.lr
    pmd = [(depth, d.pre_mask_rate, None, d.lr, "01-pre-distilled")] if d.pre_distill else []
    for i, grade in enumerate(d.grades or default_grades(depth), start=1):
        lr = grade.lr
        if lr is None:  # None stays None: the stage trains at train.lr
            scale = (depth / grade.layers) ** d.lr_depth_power
            lr = base_lr * scale if scale != 1 else d.lr
        pmd.append((grade.layers, grade.mask_rate, grade.steps, lr, f"{i + 1:02d}-grade{i}-{grade.layers}L"))
    share = budget / max(len(pmd), 1) if budget else None
    previous = stages[0]
    for layers, rate, steps, lr, name in pmd:
        # the stage's real terms (an ablation may drop MGFD or fix its rate) decide whether MGFD's passes run
        terms = dict(stage_terms(d, rate)[1])
        masked_passes = d.student_input == "clean" and "mgfd" in terms
        cost = step_cost(layers, previous.layers, depth, query_only, entity_layers=depth, masked_passes=masked_passes,
                         transfer=transfer_share(config, d, terms), lengths=lengths)
        if steps is None and share is not None:
            steps = max(1, round(share / cost))
        stage = Stage(name, layers, rate, steps or d.stage_steps, lr, "pmd", previous.name, cost)
        stages.append(stage)
        for control in d.controls:  # 'direct'/'plm': the PMD stage's compute; '-steps': its steps; '-best': early
            cost = step_cost(layers, previous.layers, depth, direct=True, lengths=lengths)  # early stopped: valid MRR
            kind, variant = control_parts(control)
            steps_ = stage.steps if variant == "steps" else max(1, round(stage.steps * stage.cost / cost))
            stages.append(Stage(f"{name}-{control}", layers, None, steps_, lr, kind, previous.name, cost,
                                "best" if variant == "best" else "last"))
        previous = stage
    if d.serving_grade and previous.kind == "pmd":
        serving = dataclasses.replace(d, student_side="query")
        stages.append(Stage(f"{int(previous.name[:2]) + 1:02d}-serving-query-{previous.layers}L", previous.layers, 0.0,
                            previous.steps, previous.lr, "query", stages[0].name,
                            step_cost(previous.layers, depth, depth, query_only=True, lengths=lengths,
                                      transfer=transfer_share(config, serving, dict(stage_terms(serving, 0.0)[1])))))
    return stages


def stage_run_config(config: RunConfig, stage: Stage, teacher: Path) -> RunConfig:
    """The distill job's config of one planned stage: the pipeline's config with the stage's teacher, depth, mask
    rate, steps, rate and kind written into its keys."""
    config = copy.deepcopy(config)
    d = config.distill
    d.teacher, d.mask_rate, d.stage_steps = str(teacher), stage.mask_rate or 0.0, stage.steps
    config.model.num_layers = stage.layers
    if stage.lr is not None:  # the stage's own rate is the run's train.lr, so config.yaml and the model card say it
        config.train.lr = d.lr = stage.lr
    if stage.kind == "query":
        d.student_side = "query"
    elif stage.kind != "pmd":
        d.ablation = "direct"
    if stage.kind == "plm":
        config.model.init_from = "plm"
    if stage.checkpoint == "best":  # valid MRR at every validation picks checkpoint-best, which is then scored
        config.train.valid_ranking, config.eval.checkpoint = True, "best"
    return config
