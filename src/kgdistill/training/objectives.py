"""The teacher's objective: SimKGC's InfoNCE on the bi-encoder's vectors."""
from __future__ import annotations

import torch
from torch import nn

from ..data.batching import TrainBatch
from ..losses.contrastive import InfoNCELoss


class ContrastiveObjective(nn.Module):
    """Encode queries, tails and (for self-negatives) heads alone, then apply :class:`InfoNCELoss`."""

    def __init__(self, model, loss: InfoNCELoss):
        super().__init__()
        self.model = model
        self.loss = loss

    @property
    def needs_heads(self) -> bool:
        return self.loss.config.self_negative

    def forward(self, batch: TrainBatch, step: int = 0) -> tuple[torch.Tensor, dict]:
        hr = self.model.encode_queries(batch.hr).vectors
        tail = self.model.encode_entities(batch.tail).vectors
        head = self.model.encode_entities(batch.head).vectors if batch.head is not None else None
        loss, _ = self.loss(hr, tail, head, batch)
        return loss, {}

    def validation_loss(self, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
        hr = self.model.encode_queries(batch.hr).vectors
        tail = self.model.encode_entities(batch.tail).vectors
        return self.loss(hr, tail, None, batch)
