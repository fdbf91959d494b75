"""The teacher's objective: SimKGC's InfoNCE on the bi-encoder's vectors."""
from __future__ import annotations

import torch
from torch import nn

from ..data.batching import TrainBatch
from ..losses.contrastive import InfoNCELoss


def _rng_state() -> tuple:
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def _set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


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

    def cached_step(self, batch: TrainBatch, chunk: int) -> tuple[torch.Tensor, dict]:
        """Gradient-cache step (Gao et al. 2021): same loss and gradients as the full batch, holding only one chunk's
        activations. Encode everything without a graph, back-propagate the loss to the vectors, then re-encode chunk
        by chunk (replaying each chunk's RNG state so dropout matches) and push the cached vector gradients through."""
        parts = [(self.model.encode_queries, batch.hr), (self.model.encode_entities, batch.tail)]
        if batch.head is not None:
            parts.append((self.model.encode_entities, batch.head))
        vectors, rng_states = [], []
        with torch.no_grad():
            for encode, inputs in parts:
                chunks, states = [], []
                for start in range(0, len(inputs), chunk):
                    states.append(_rng_state())
                    chunks.append(encode(inputs.slice(start, start + chunk)).vectors)
                vectors.append(torch.cat(chunks).requires_grad_())
                rng_states.append(states)
        head = vectors[2] if batch.head is not None else None
        loss, _ = self.loss(vectors[0], vectors[1], head, batch)
        loss.backward()
        for (encode, inputs), cached, states in zip(parts, vectors, rng_states):
            for index, start in enumerate(range(0, len(inputs), chunk)):
                _set_rng_state(states[index])
                encode(inputs.slice(start, start + chunk)).vectors.backward(cached.grad[start:start + chunk])
        return loss.detach(), {}

    def validation_loss(self, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
        hr = self.model.encode_queries(batch.hr).vectors
        tail = self.model.encode_entities(batch.tail).vectors
        return self.loss(hr, tail, None, batch)
