"""SimKGC's InfoNCE with additive margin, in-batch / pre-batch / self negatives and false-negative masks."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..config import LossConfig
from ..data.batching import KnownTails, TrainBatch
from ..runtime import fp32_scores

MASKED = -1e4  # the logit given to a known true answer that must not act as a negative (SimKGC's value)


@dataclass
class NegativeMasks:
    """Boolean 'keep' masks; False marks a false negative."""

    in_batch: torch.Tensor  # (B, B)
    self_negative: torch.Tensor  # (B,)


def build_masks(batch: TrainBatch, known: KnownTails, column_tails: np.ndarray | None = None,
                offset: int = 0) -> NegativeMasks:
    """In-batch (i, j) is dropped when tail_j is tail_i (j != i) or a known training answer of query i.

    ``column_tails``/``offset``: under torch.distributed the columns are the global batch's tails and this rank's
    rows start at ``offset`` in it.
    """
    heads, rels, tails = batch.heads, batch.relations, batch.tails
    columns = tails if column_tails is None else column_tails
    same = tails[:, None] == columns[None, :]
    known_ij = known.contains(heads[:, None], rels[:, None], columns[None, :])
    keep = ~(same | known_ij)
    keep[np.arange(len(tails)), offset + np.arange(len(tails))] = True
    keep_self = ~known.contains(heads, rels, heads)
    return NegativeMasks(torch.from_numpy(keep), torch.from_numpy(keep_self))


@dataclass
class Scores:
    """Cosine score blocks of one model on one batch (before margin and temperature)."""

    in_batch: torch.Tensor  # (B, B) e_hr . e_t
    pre_batch: torch.Tensor | None  # (B, K*B) against the queue
    self_negative: torch.Tensor | None  # (B,) e_hr . e_h


class PreBatchQueue(nn.Module):
    """FIFO of detached tail vectors from previous batches, with their entity ids for false-negative masks."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("vectors", F.normalize(torch.randn(size, dim), dim=-1))
        self.register_buffer("entities", torch.full((size,), -1, dtype=torch.long))

    def push(self, vectors: torch.Tensor, entities: np.ndarray) -> None:
        """Newest first; buffers are replaced, not written in place, since this step's graph still reads the old
        ones."""
        size = len(self.vectors)
        self.vectors = torch.cat([vectors.detach().float().to(self.vectors.device), self.vectors])[:size]
        ents = torch.as_tensor(entities, dtype=torch.long, device=self.entities.device)
        self.entities = torch.cat([ents, self.entities])[:size]

    def keep_mask(self, batch: TrainBatch, known: KnownTails) -> torch.Tensor:
        """False where a queued vector is a known answer (or the tail) of the batch's query."""
        ents = self.entities.cpu().numpy()
        stale = ents >= 0
        hit = known.contains(batch.heads[:, None], batch.relations[:, None], np.where(stale, ents, 0)[None, :])
        hit |= batch.tails[:, None] == ents[None, :]
        return torch.from_numpy(~(hit & stale[None, :]))


class InfoNCELoss(nn.Module):
    """L_CE of SimKGC (docs/METHOD.md, "SimKGC teacher") as a module that takes the model.

    ``scores`` turns vectors into cosine blocks; ``logits`` applies margin (training only), temperature and masks;
    ``forward`` computes ``CE(logits, i) + CE(in_batch.T, i)``. Distillation reuses ``scores``/``logits`` for teacher
    and student so the two score matrices line up by construction.
    """

    def __init__(self, model, config: LossConfig, known: KnownTails, batch_size: int):
        super().__init__()
        self.model = model
        self.config = config
        self.known = known
        self.queue = PreBatchQueue(config.pre_batch * batch_size, model.hidden_size) if config.pre_batch else None

    def scores(self, hr: torch.Tensor, tail: torch.Tensor, head: torch.Tensor | None, queue=None) -> Scores:
        """Cosine blocks, always in fp32 (the encoders may have run under bf16 autocast)."""
        queue = self.queue if queue is None else queue
        pre = fp32_scores(hr, queue.vectors) if (self.config.pre_batch and queue is not None) else None
        self_neg = (hr.float() * head.float()).sum(-1) if (self.config.self_negative and head is not None) else None
        return Scores(fp32_scores(hr, tail), pre, self_neg)

    def logits(self, scores: Scores, masks: NegativeMasks, inv_t: torch.Tensor, margin: bool,
               pre_keep: torch.Tensor | None = None, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Full logits ``[in-batch | pre-batch | self]`` and the in-batch block, both scaled by 1/tau and masked.
        The positive of row i is column ``offset + i``."""
        in_batch = scores.in_batch
        if margin and self.config.margin:
            rows = torch.arange(len(in_batch), device=in_batch.device)
            in_batch = in_batch.index_put((rows, rows + offset), in_batch[rows, rows + offset] - self.config.margin)
        in_batch = (in_batch * inv_t).masked_fill(~masks.in_batch.to(in_batch.device), MASKED)
        blocks = [in_batch]
        if scores.pre_batch is not None:
            pre = scores.pre_batch * inv_t * self.config.pre_batch_weight
            if pre_keep is not None:
                pre = pre.masked_fill(~pre_keep.to(pre.device), MASKED)
            blocks.append(pre)
        if scores.self_negative is not None:
            self_neg = (scores.self_negative * inv_t).masked_fill(~masks.self_negative.to(in_batch.device), MASKED)
            blocks.append(self_neg[:, None])
        return torch.cat(blocks, dim=1), in_batch

    def cross_entropy(self, logits: torch.Tensor, in_batch: torch.Tensor) -> torch.Tensor:
        """CE of the full logits against the diagonal, plus the transposed in-batch term when enabled."""
        labels = torch.arange(len(logits), device=logits.device)
        loss = F.cross_entropy(logits, labels)
        if self.config.tail_to_query_loss:
            loss = loss + F.cross_entropy(in_batch.T, labels)
        return loss

    def _forward_distributed(self, hr, tail, head, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows against the global batch's tails (and, for the transposed term, this rank's tails against
        the global batch's queries). Averaged over ranks (as DDP does with gradients) this equals the loss of one
        process holding the whole global batch."""
        offset = distributed.rank() * len(batch)
        tail_all = distributed.gather_with_grad(tail)
        heads_all, rels_all, tails_all = (distributed.gather_array(x) for x in (batch.heads, batch.relations,
                                                                                 batch.tails))
        masks = build_masks(batch, self.known, tails_all, offset)
        pre_keep = self.queue.keep_mask(batch, self.known) if self.queue is not None else None
        inv_t = self.model.inv_temperature()
        logits, _ = self.logits(self.scores(hr, tail_all, head), masks, inv_t, margin=True, pre_keep=pre_keep,
                                offset=offset)
        labels = offset + torch.arange(len(batch), device=logits.device)
        loss = F.cross_entropy(logits, labels)
        if self.config.tail_to_query_loss:
            hr_all = distributed.gather_with_grad(hr)
            same = batch.tails[:, None] == tails_all[None, :]
            known_t = self.known.contains(heads_all[None, :], rels_all[None, :], batch.tails[:, None])
            keep_t = ~(same | known_t)
            keep_t[np.arange(len(batch)), offset + np.arange(len(batch))] = True
            transposed, _ = self.logits(Scores(fp32_scores(tail, hr_all), None, None),
                                        NegativeMasks(torch.from_numpy(keep_t), masks.self_negative), inv_t,
                                        margin=True, offset=offset)
            loss = loss + F.cross_entropy(transposed, labels)
        if self.queue is not None:
            self.queue.push(tail_all, tails_all)
        return loss, logits

    def forward(self, hr: torch.Tensor, tail: torch.Tensor, head: torch.Tensor | None, batch: TrainBatch,
                masks: NegativeMasks | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and full logits; pre-batch and self negatives only in training mode (as SimKGC)."""
        if self.training and masks is None:
            if distributed.active():
                return self._forward_distributed(hr, tail, head, batch)
        masks = build_masks(batch, self.known) if masks is None else masks
        if self.training:
            pre_keep = self.queue.keep_mask(batch, self.known) if self.queue is not None else None
            scores = self.scores(hr, tail, head)
        else:
            pre_keep, scores = None, Scores(fp32_scores(hr, tail), None, None)
        logits, in_batch = self.logits(scores, masks, self.model.inv_temperature(), margin=self.training,
                                       pre_keep=pre_keep)
        loss = self.cross_entropy(logits, in_batch)
        if self.training and self.queue is not None:
            self.queue.push(tail, batch.tails)
        return loss, logits
