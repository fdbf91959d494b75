"""PMD's distillation losses (docs/METHOD.md, "PMD"), each an ``nn.Module``.

- :class:`ScoreDistillLoss`: L_SCORE, MSE between student and teacher score matrices (paper Eq. 5, cosine) or on
  the temperature-scaled logits (released code); KL with a temperature as an option.
- :class:`PooledMGFDLoss`: the released code's MGFD, one L2-normalised mean vector over the masked positions.
- :class:`GenerativeMGFDLoss`: the paper's *generation* form; student token features at masked positions pass a small
  generation head that must reproduce the teacher's token features.
- :class:`EmbeddingDistillLoss`: beyond the paper, the student's pooled unit vectors matched to the teacher's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batching import EncoderBatch
from ..models.plm import seq_positions_maskable


def mask_tokens(batch: EncoderBatch, rate: float, mask_token_id: int, generator: torch.Generator | None = None
                ) -> tuple[EncoderBatch, torch.Tensor]:
    """Replace ``int(rate * length)`` distinct tokens per sequence by [MASK], never [CLS] nor the last [SEP].

    Returns the masked batch and the boolean mask of replaced positions (the same for teacher and student).
    """
    ids = batch.input_ids
    maskable = seq_positions_maskable(batch.attention_mask)
    if rate <= 0:
        return batch, torch.zeros_like(maskable)
    lengths = batch.attention_mask.sum(1)
    k = (rate * lengths.float()).floor().long().clamp(max=maskable.sum(1))
    noise = torch.rand(ids.shape, generator=generator, device="cpu").to(ids.device)
    noise = noise.masked_fill(~maskable, 2.0)  # unmaskable positions sort last
    order = noise.argsort(1).argsort(1)  # rank of each position
    positions = (order < k[:, None]) & maskable
    masked_ids = ids.masked_fill(positions, mask_token_id)
    return EncoderBatch(masked_ids, batch.attention_mask, batch.token_type_ids), positions


class ScoreDistillLoss(nn.Module):
    """Match the student's score matrix to the teacher's, over every column both models produce."""

    def __init__(self, kind: str = "mse", on: str = "cosine", temperature: float = 1.0):
        super().__init__()
        self.kind, self.on, self.temperature = kind, on, temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``student``/``teacher``: (B, C) cosine scores or logits; ``keep``: False at masked false negatives."""
        if student.shape != teacher.shape:
            raise ValueError(f"score matrices differ in shape: student {tuple(student.shape)}, "
                             f"teacher {tuple(teacher.shape)}")
        teacher = teacher.detach()
        if self.kind == "kl":
            t = self.temperature
            s_log = F.log_softmax(student.masked_fill(~keep, -1e4) / t, dim=1)
            t_prob = F.softmax(teacher.masked_fill(~keep, -1e4) / t, dim=1)
            return F.kl_div(s_log, t_prob, reduction="batchmean") * t * t
        diff = (student - teacher).masked_fill(~keep, 0.0)  # masked cells contribute nothing (as the code's -1e4)
        return diff.pow(2).mean()


class PooledMGFDLoss(nn.Module):
    """Released-code MGFD: MSE between L2-normalised means of the last hidden states at masked positions."""

    def forward(self, student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        has = positions.any(1)
        if not has.any():
            return student_hidden.new_zeros((), dtype=torch.float32)
        w = positions.unsqueeze(-1).float()
        s = F.normalize((student_hidden.float() * w).sum(1) / w.sum(1).clamp(min=1), dim=-1)
        t = F.normalize((teacher_hidden.float() * w).sum(1) / w.sum(1).clamp(min=1), dim=-1)
        return F.mse_loss(s[has], t[has].detach())


class GenerativeMGFDLoss(nn.Module):
    """Paper-style MGFD: a generation head maps student token features at masked positions to the teacher's."""

    def __init__(self, student_dim: int, teacher_dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or teacher_dim
        self.generator = nn.Sequential(nn.Linear(student_dim, hidden), nn.GELU(), nn.Linear(hidden, teacher_dim))

    def forward(self, student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if not positions.any():
            return student_hidden.new_zeros((), dtype=torch.float32)
        generated = self.generator(student_hidden[positions].float())
        return F.mse_loss(generated, teacher_hidden[positions].float().detach())


class EmbeddingDistillLoss(nn.Module):
    """Pull the student's pooled unit vectors onto the teacher's: a dense target per example, not only relative
    scores, which is what lets a shallow student land in the teacher's vector space quickly."""

    def __init__(self, kind: str = "cosine"):
        super().__init__()
        self.kind = kind

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        student, teacher = student.float(), teacher.float().detach()
        if self.kind == "mse":
            return F.mse_loss(student, teacher)
        return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
