"""One PMD stage's objective: L = (1-a-b) L_CE + a L_SCORE + b L_MGFD with a frozen teacher (docs/METHOD.md,
"PMD")."""
from __future__ import annotations

import torch
from torch import nn

from ..config import DistillConfig
from ..data.batching import TrainBatch
from ..losses.contrastive import InfoNCELoss, PreBatchQueue, Scores, build_masks
from ..losses.distill import (EmbeddingDistillLoss, GenerativeMGFDLoss, PooledMGFDLoss, ScoreDistillLoss,
                              mask_tokens)
from ..models.biencoder import Encoded


def _flat(scores: Scores) -> torch.Tensor:
    blocks = [scores.in_batch]
    if scores.pre_batch is not None:
        blocks.append(scores.pre_batch)
    if scores.self_negative is not None:
        blocks.append(scores.self_negative[:, None])
    return torch.cat(blocks, dim=1)


class DistillationObjective(nn.Module):
    """Student and frozen teacher see the same (masked) batch; both score matrices are built by the same
    :class:`InfoNCELoss` (same negatives, same false-negative masks), so they align column for column."""

    def __init__(self, student, teacher, loss: InfoNCELoss, config: DistillConfig, mask_rate: float,
                 mask_token_id: int):
        super().__init__()
        self.model = student
        self.teacher = teacher.eval().requires_grad_(False)
        self.loss = loss
        self.config = config
        self.mask_rate = mask_rate
        self.mask_token_id = mask_token_id
        self.score_loss = ScoreDistillLoss(config.score_loss, config.score_on, config.kl_temperature)
        self.teacher_queue = None
        if loss.queue is not None:  # the same random start as the student's, so pre-batch columns compare alike
            self.teacher_queue = PreBatchQueue(len(loss.queue.vectors), teacher.hidden_size)
            self.teacher_queue.vectors = loss.queue.vectors.clone()
        self.use_mgfd = config.beta > 0 and mask_rate > 0
        self.query_only = student.info.get("student_side") == "query"
        self.embedding_loss = EmbeddingDistillLoss(config.embedding_loss)
        # Generation heads only where MGFD runs: none at a 0 % mask rate, none for the teacher's frozen entity side.
        self.mgfd_hr = self._mgfd_loss(student, teacher) if self.use_mgfd else None
        self.mgfd_tail = self._mgfd_loss(student, teacher) if self.use_mgfd and not self.query_only else None

    def _mgfd_loss(self, student, teacher) -> nn.Module:
        if self.config.mgfd == "generative":
            return GenerativeMGFDLoss(student.hidden_size, teacher.hidden_size, self.config.generation_hidden)
        return PooledMGFDLoss()

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen: no dropout, ever
        return self

    @property
    def needs_heads(self) -> bool:
        """Whether batches carry the head-alone text (for self-negatives)."""
        return self.loss.config.self_negative

    def forward(self, batch: TrainBatch, step: int = 0) -> tuple[torch.Tensor, dict]:
        clean = self.config.student_input == "clean"
        hr_in, hr_pos = mask_tokens(batch.hr, self.mask_rate, self.mask_token_id)
        tail_in, tail_pos = mask_tokens(batch.tail, self.mask_rate, self.mask_token_id)
        # The head-alone text is only scored, never fed to MGFD: clean input scores it unmasked.
        head_in = (mask_tokens(batch.head, self.mask_rate, self.mask_token_id)[0]
                   if batch.head is not None and not clean else None)
        # Scores are compared on the text both models score: masked (paper and code) or clean. With clean input the
        # masked text only feeds MGFD, so the teacher encodes it a second time just for its token features.
        score_hr, score_tail, score_head = (batch.hr, batch.tail, batch.head) if clean else (hr_in, tail_in, head_in)
        mgfd_tail = self.mgfd_tail is not None
        with torch.no_grad():
            t_hr = self.teacher.encode_queries(score_hr, hidden=self.use_mgfd and not clean)
            t_tail = self.teacher.encode_entities(score_tail, hidden=mgfd_tail and not clean)
            t_head = self.teacher.encode_entities(score_head).vectors if score_head is not None else None
            if self.use_mgfd and clean:
                t_hr_hidden = self.teacher.encode_queries(hr_in, hidden=True).hidden
                t_tail_hidden = self.teacher.encode_entities(tail_in, hidden=True).hidden if mgfd_tail else None
            else:
                t_hr_hidden, t_tail_hidden = t_hr.hidden, t_tail.hidden
        s_hr = self.model.encode_queries(score_hr, hidden=self.use_mgfd and not clean)
        if self.query_only:  # the student's entity encoder *is* the teacher's (frozen): reuse its vectors
            s_tail, s_head = Encoded(t_tail.vectors), t_head
        else:
            s_tail = self.model.encode_entities(score_tail, hidden=mgfd_tail and not clean)
            s_head = self.model.encode_entities(score_head).vectors if score_head is not None else None
        masks = build_masks(batch, self.loss.known)
        queue = self.loss.queue
        pre_keep = queue.keep_mask(batch, self.loss.known) if queue is not None else None
        s_scores = self.loss.scores(s_hr.vectors, s_tail.vectors, s_head)
        t_scores = self.loss.scores(t_hr.vectors, t_tail.vectors, t_head, queue=self.teacher_queue)
        s_logits, s_in_batch = self.loss.logits(s_scores, masks, self.model.inv_temperature(), margin=True,
                                                pre_keep=pre_keep)
        l_ce = self.loss.cross_entropy(s_logits, s_in_batch)
        keep_blocks = [masks.in_batch]
        if s_scores.pre_batch is not None:
            keep_blocks.append(pre_keep)
        if s_scores.self_negative is not None:
            keep_blocks.append(masks.self_negative[:, None])
        keep = torch.cat(keep_blocks, dim=1).to(s_logits.device)
        if self.config.score_on == "logits":
            t_logits, _ = self.loss.logits(t_scores, masks, self.teacher.inv_temperature(),
                                           margin=self.config.teacher_margin, pre_keep=pre_keep)
            l_score = self.score_loss(s_logits, t_logits, keep)
        else:
            l_score = self.score_loss(_flat(s_scores), _flat(t_scores), keep)
        l_mgfd = s_logits.new_zeros(())
        if self.use_mgfd:
            s_hr_hidden = self.model.encode_queries(hr_in, hidden=True).hidden if clean else s_hr.hidden
            l_mgfd = self.mgfd_hr(s_hr_hidden, t_hr_hidden, hr_pos.to(s_hr_hidden.device))
            if mgfd_tail:
                s_tail_hidden = self.model.encode_entities(tail_in, hidden=True).hidden if clean else s_tail.hidden
                l_mgfd = l_mgfd + self.mgfd_tail(s_tail_hidden, t_tail_hidden, tail_pos.to(s_tail_hidden.device))
        l_emb = s_logits.new_zeros(())
        if self.config.embedding_weight > 0:
            l_emb = self.embedding_loss(s_hr.vectors, t_hr.vectors)
            if not self.query_only:
                l_emb = l_emb + self.embedding_loss(s_tail.vectors, t_tail.vectors)
        a, b = self.config.alpha, self.config.beta
        loss = (1 - a - b) * l_ce + a * l_score + b * l_mgfd + self.config.embedding_weight * l_emb
        if queue is not None:
            queue.push(s_tail.vectors, batch.tails)
            self.teacher_queue.push(t_tail.vectors, batch.tails)
        return loss, {"l_ce": float(l_ce.detach()), "l_score": float(l_score.detach()),
                      "l_mgfd": float(l_mgfd.detach()), "l_emb": float(l_emb.detach())}

    def validation_loss(self, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's L_CE and logits on a validation batch (no margin, in-batch negatives only)."""
        hr = self.model.encode_queries(batch.hr).vectors
        tail = self.model.encode_entities(batch.tail).vectors
        return self.loss(hr, tail, None, batch)
