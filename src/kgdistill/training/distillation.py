"""PMD's objective as a weighted list of terms (docs/METHOD.md, "PMD"): L = (1-a-b) L_CE + a L_SCORE + b L_MGFD
(+ gamma L_EMB beyond the paper), with a frozen teacher.

One forward computes what every term shares (:class:`DistillFeatures`: both models' vectors, score matrices, the
student's logits and false-negative masks); each term is an ``nn.Module`` registered by name in :data:`TERMS` that
turns those features into one loss. :func:`distill_terms` is the recipe: which terms, at which weights, for a config
and a mask rate. A new term is one class here and one line in :func:`distill_terms` (docs/METHOD.md, "Extending").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..config import DistillConfig
from ..data.batching import EncoderBatch, TrainBatch, TransferQueries
from ..losses.contrastive import InfoNCELoss, NegativeMasks, PreBatchQueue, Scores, build_masks
from ..losses.distill import (EmbeddingDistillLoss, GenerativeMGFDLoss, PooledMGFDLoss, ScoreDistillLoss,
                              mask_tokens)
from ..models.biencoder import Encoded


@dataclass
class DistillFeatures:
    """What one distillation forward computed, shared by every term."""

    student_hr: Encoded
    student_tail: Encoded
    teacher_hr: Encoded
    teacher_tail: Encoded
    student_scores: Scores
    teacher_scores: Scores
    student_logits: torch.Tensor
    student_in_batch: torch.Tensor
    masks: NegativeMasks
    pre_keep: torch.Tensor | None
    keep: torch.Tensor  # False at masked false negatives, over every score column
    hr_masked: EncoderBatch  # the masked text MGFD compares token features on, and its masked positions
    hr_positions: torch.Tensor
    tail_masked: EncoderBatch
    tail_positions: torch.Tensor
    clean: bool  # scores come from clean text; the masked text only feeds MGFD
    student_transfer: torch.Tensor | None = None  # both models' query vectors on the step's transfer queries
    teacher_transfer: torch.Tensor | None = None


def _flat(scores: Scores) -> torch.Tensor:
    blocks = [scores.in_batch]
    if scores.pre_batch is not None:
        blocks.append(scores.pre_batch)
    if scores.self_negative is not None:
        blocks.append(scores.self_negative[:, None])
    return torch.cat(blocks, dim=1)


class DistillTerm(nn.Module):
    """One weighted part of the objective, built from the objective (``Term(objective)``, keeping only its own
    modules: the objective's model and loss stay the objective's); ``term(features, objective)`` is its loss.
    ``needs_hidden`` terms compare token features, so the shared forward keeps the last hidden states of the text it
    scores."""

    needs_hidden = False


TERMS: dict[str, type[DistillTerm]] = {}


def register(name: str):
    """Register a :class:`DistillTerm` under ``name`` (the name :func:`distill_terms` and the logs use)."""
    def add(cls: type[DistillTerm]) -> type[DistillTerm]:
        cls.name = name
        TERMS[name] = cls
        return cls
    return add


@register("ce")
class CrossEntropyTerm(DistillTerm):
    """L_CE: the student's own InfoNCE with margin, as the teacher was trained."""

    def __init__(self, objective: DistillationObjective):
        super().__init__()

    def forward(self, f: DistillFeatures, objective: DistillationObjective) -> torch.Tensor:
        return objective.loss.cross_entropy(f.student_logits, f.student_in_batch)


@register("score")
class ScoreTerm(DistillTerm):
    """L_SCORE: the student's score matrix against the teacher's, on cosines (paper Eq. 5) or logits (code)."""

    def __init__(self, objective: DistillationObjective, on: str | None = None, loss: str | None = None):
        super().__init__()
        c = objective.config
        self.on, self.teacher_margin = on or c.score_on, c.teacher_margin
        self.loss = ScoreDistillLoss(loss or c.score_loss, self.on, c.kl_temperature)

    def forward(self, f: DistillFeatures, objective: DistillationObjective) -> torch.Tensor:
        if self.on == "logits":
            teacher_logits, _ = objective.loss.logits(f.teacher_scores, f.masks, objective.teacher.inv_temperature(),
                                                      margin=self.teacher_margin, pre_keep=f.pre_keep)
            return self.loss(f.student_logits, teacher_logits, f.keep)
        return self.loss(_flat(f.student_scores), _flat(f.teacher_scores), f.keep)


@register("logit-score")
class LogitScoreTerm(ScoreTerm):
    """L_SCORE as the released code's logit-only ablation: KL between the temperature-scaled, masked logits,
    whatever ``distill.score_loss`` and ``distill.score_on`` say."""

    def __init__(self, objective: DistillationObjective):
        super().__init__(objective, on="logits", loss="kl")


@register("mgfd")
class MGFDTerm(DistillTerm):
    """L_MGFD: the student's token features at masked positions against the teacher's, through a generation head
    (paper) or as pooled vectors (released code); the entity side too unless only the query encoder trains."""

    needs_hidden = True

    def __init__(self, objective: DistillationObjective):
        super().__init__()
        student, teacher, c = objective.model, objective.teacher, objective.config

        def head() -> nn.Module:
            if c.mgfd == "generative":
                return GenerativeMGFDLoss(student.hidden_size, teacher.hidden_size, c.generation_hidden)
            return PooledMGFDLoss()

        self.hr = head()
        self.tail = None if objective.query_only else head()  # the teacher's frozen entity side needs none

    def forward(self, f: DistillFeatures, objective: DistillationObjective) -> torch.Tensor:
        student, teacher = objective.model, objective.teacher
        with torch.no_grad():  # clean input: the teacher encodes the masked text again, for its token features
            t_hr = teacher.encode_queries(f.hr_masked, hidden=True).hidden if f.clean else f.teacher_hr.hidden
            t_tail = None
            if self.tail is not None:
                t_tail = (teacher.encode_entities(f.tail_masked, hidden=True).hidden if f.clean
                          else f.teacher_tail.hidden)
        s_hr = student.encode_queries(f.hr_masked, hidden=True).hidden if f.clean else f.student_hr.hidden
        loss = self.hr(s_hr, t_hr, f.hr_positions.to(s_hr.device))
        if self.tail is not None:
            s_tail = student.encode_entities(f.tail_masked, hidden=True).hidden if f.clean else f.student_tail.hidden
            loss = loss + self.tail(s_tail, t_tail, f.tail_positions.to(s_tail.device))
        return loss


@register("embedding")
class EmbeddingTerm(DistillTerm):
    """L_EMB (beyond the paper): the student's pooled vectors onto the teacher's, both sides unless query-only."""

    def __init__(self, objective: DistillationObjective):
        super().__init__()
        self.loss = EmbeddingDistillLoss(objective.config.embedding_loss)

    def forward(self, f: DistillFeatures, objective: DistillationObjective) -> torch.Tensor:
        loss = self.loss(f.student_hr.vectors, f.teacher_hr.vectors)
        if not objective.query_only:
            loss = loss + self.loss(f.student_tail.vectors, f.teacher_tail.vectors)
        return loss


@register("transfer")
class TransferTerm(EmbeddingTerm):
    """L_TRANSFER (beyond the paper): L_EMB's loss on the query side of label-free transfer queries
    (``distill.transfer_queries``), so the student imitates the teacher beyond the training queries."""

    def forward(self, f: DistillFeatures, objective: DistillationObjective) -> torch.Tensor:
        return self.loss(f.student_transfer, f.teacher_transfer)


def distill_terms(config: DistillConfig, mask_rate: float) -> list[tuple[str, float]]:
    """The objective's terms and weights: the paper's (1-a-b) CE + a SCORE + b MGFD, MGFD only where tokens are
    masked, plus gamma EMB when gamma > 0 (``distill.embedding_weight``; ``distill.query_embedding_weight`` for a
    query-only student, when set), and gamma TRANSFER with transfer queries (``distill.transfer_queries``;
    ``distill.query_transfer_queries`` for a query-only student, when set)."""
    a, b = config.alpha, config.beta
    terms = [("ce", 1 - a - b), ("score", a)]
    if b > 0 and mask_rate > 0:
        terms.append(("mgfd", b))
    gamma, transfer = config.embedding_terms()
    if gamma > 0:
        terms.append(("embedding", gamma))
        if transfer > 0:
            terms.append(("transfer", gamma))
    return terms


Terms = list[tuple[str, float]]
# Ablations and controls are presets of the term list: name -> (config, the stage's planned mask rate) -> (the rate
# it really masks at, its weighted terms). "no-mgfd" and "logit-only" keep the CE and SCORE weights (1-a-b) and a,
# as the paper's "w/o MGFD" keeps everything else equal; "direct" is a control: SimKGC's loss alone, no teacher.
ABLATIONS: dict[str, Callable[[DistillConfig, float], tuple[float, Terms]]] = {
    "none": lambda d, rate: (rate, distill_terms(d, rate)),
    "no-mgfd": lambda d, rate: (0.0, distill_terms(d, 0.0)),
    "fixed-mask": lambda d, rate: (d.fixed_mask_rate, distill_terms(d, d.fixed_mask_rate)),
    "logit-only": lambda d, rate: (0.0, [("logit-score" if name == "score" else name, weight)
                                         for name, weight in distill_terms(d, 0.0)]),
    "direct": lambda d, rate: (0.0, [("ce", 1.0)]),
}


def stage_terms(config: DistillConfig, mask_rate: float) -> tuple[float, Terms]:
    """A stage's mask rate and weighted terms under ``distill.ablation`` (:data:`ABLATIONS`)."""
    return ABLATIONS[config.ablation](config, mask_rate)


def needs_teacher(terms: Terms) -> bool:
    """Whether any term learns from the teacher: a list of CE alone trains as SimKGC does (a control)."""
    return any(name != "ce" for name, _ in terms)


class DistillationObjective(nn.Module):
    """Student and frozen teacher see the same (masked) batch; both score matrices are built by the same
    :class:`InfoNCELoss` (same negatives, same false-negative masks), so they align column for column; the loss is
    the weighted sum of ``terms`` (default :func:`distill_terms`); a ``transfer`` term draws its queries from
    ``transfer``."""

    def __init__(self, student, teacher, loss: InfoNCELoss, config: DistillConfig, mask_rate: float,
                 mask_token_id: int, terms: list[tuple[str, float]] | None = None,
                 transfer: TransferQueries | None = None):
        super().__init__()
        self.model = student
        self.teacher = teacher.eval().requires_grad_(False)
        self.loss = loss
        self.config = config
        self.mask_rate = mask_rate
        self.mask_token_id = mask_token_id
        self.query_only = student.info.get("student_side") == "query"
        self.teacher_queue = None
        if loss.queue is not None:  # the same random start as the student's, so pre-batch columns compare alike
            self.teacher_queue = PreBatchQueue(len(loss.queue.vectors), teacher.hidden_size)
            self.teacher_queue.vectors = loss.queue.vectors.clone()
        weighted = terms if terms is not None else stage_terms(config, mask_rate)[1]
        uses_transfer = any(name == "transfer" for name, _ in weighted)
        if uses_transfer and transfer is None:
            raise ValueError("a 'transfer' term needs the transfer queries to draw from (transfer=TransferQueries)")
        self.transfer = transfer if uses_transfer else None
        self.weights = [weight for _, weight in weighted]
        self.terms = nn.ModuleList(TERMS[name](self) for name, _ in weighted)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen: no dropout, ever
        return self

    @property
    def needs_heads(self) -> bool:
        """Whether batches carry the head-alone text (for self-negatives)."""
        return self.loss.config.self_negative

    def features(self, batch: TrainBatch, step: int = 0) -> DistillFeatures:
        """Mask, encode with both models, score: everything the terms share (``step`` picks the transfer queries)."""
        clean = self.config.student_input == "clean"
        hidden = any(term.needs_hidden for term in self.terms) and not clean
        hr_in, hr_pos = mask_tokens(batch.hr, self.mask_rate, self.mask_token_id)
        tail_in, tail_pos = mask_tokens(batch.tail, self.mask_rate, self.mask_token_id)
        # The head-alone text is only scored, never fed to MGFD: clean input scores it unmasked.
        head_in = (mask_tokens(batch.head, self.mask_rate, self.mask_token_id)[0]
                   if batch.head is not None and not clean else None)
        score_hr, score_tail, score_head = (batch.hr, batch.tail, batch.head) if clean else (hr_in, tail_in, head_in)
        tail_hidden = hidden and not self.query_only
        with torch.no_grad():
            t_hr = self.teacher.encode_queries(score_hr, hidden=hidden)
            t_tail = self.teacher.encode_entities(score_tail, hidden=tail_hidden)
            t_head = self.teacher.encode_entities(score_head).vectors if score_head is not None else None
        s_hr = self.model.encode_queries(score_hr, hidden=hidden)
        if self.query_only:  # the student's entity encoder *is* the teacher's (frozen): reuse its vectors
            s_tail, s_head = Encoded(t_tail.vectors), t_head
        else:
            s_tail = self.model.encode_entities(score_tail, hidden=tail_hidden)
            s_head = self.model.encode_entities(score_head).vectors if score_head is not None else None
        masks = build_masks(batch, self.loss.known)
        queue = self.loss.queue
        pre_keep = queue.keep_mask(batch, self.loss.known) if queue is not None else None
        s_scores = self.loss.scores(s_hr.vectors, s_tail.vectors, s_head)
        t_scores = self.loss.scores(t_hr.vectors, t_tail.vectors, t_head, queue=self.teacher_queue)
        s_logits, s_in_batch = self.loss.logits(s_scores, masks, self.model.inv_temperature(), margin=True,
                                                pre_keep=pre_keep)
        keep_blocks = [masks.in_batch]
        if s_scores.pre_batch is not None:
            keep_blocks.append(pre_keep)
        if s_scores.self_negative is not None:
            keep_blocks.append(masks.self_negative[:, None])
        keep = torch.cat(keep_blocks, dim=1).to(s_logits.device)
        s_transfer = t_transfer = None
        if self.transfer is not None:  # clean text: the transfer queries feed L_TRANSFER alone
            queries = self.transfer.batch(step).to(batch.hr.input_ids.device)
            with torch.no_grad():
                t_transfer = self.teacher.encode_queries(queries).vectors
            s_transfer = self.model.encode_queries(queries).vectors
        return DistillFeatures(s_hr, s_tail, t_hr, t_tail, s_scores, t_scores, s_logits, s_in_batch, masks, pre_keep,
                               keep, hr_in, hr_pos, tail_in, tail_pos, clean, s_transfer, t_transfer)

    def forward(self, batch: TrainBatch, step: int = 0) -> tuple[torch.Tensor, dict]:
        f = self.features(batch, step)
        total, logs = None, {}
        for weight, term in zip(self.weights, self.terms):
            value = term(f, self)
            total = weight * value if total is None else total + weight * value
            logs[f"l_{term.name}"] = float(value.detach())
        if self.loss.queue is not None:
            self.loss.queue.push(f.student_tail.vectors, batch.tails)
            self.teacher_queue.push(f.teacher_tail.vectors, batch.tails)
        return total, logs

    def validation_loss(self, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's L_CE and logits on a validation batch (no margin, in-batch negatives only)."""
        hr = self.model.encode_queries(batch.hr).vectors
        tail = self.model.encode_entities(batch.tail).vectors
        return self.loss(hr, tail, None, batch)
