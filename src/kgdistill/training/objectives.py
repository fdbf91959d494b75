"""What the trainer trains (:class:`Objective`), and the teacher's objective: SimKGC's InfoNCE on the bi-encoder's
vectors."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ..data.batching import TrainBatch
from ..losses.contrastive import InfoNCELoss


@runtime_checkable
class Objective(Protocol):
    """An ``nn.Module`` the trainer optimises: ``model`` is the bi-encoder being trained (saved in checkpoints);
    ``objective(batch, step)`` returns the loss and a dict of numbers to log; ``validation_loss(batch)`` the loss and
    logits of a validation batch; ``needs_heads`` says whether batches must carry the head-alone text.

    An objective may also have ``cached_step(batch, chunk) -> (loss, logs)``, which back-propagates itself chunk by
    chunk (``train.gradient_cache_chunk``); the trainer refuses that key for an objective without it."""

    model: nn.Module

    @property
    def needs_heads(self) -> bool: ...

    def __call__(self, batch: TrainBatch, step: int = 0) -> tuple[torch.Tensor, dict]: ...

    def validation_loss(self, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]: ...


def supports_cached_step(objective) -> bool:
    """Whether ``objective`` has the optional gradient-cache step."""
    return callable(getattr(objective, "cached_step", None))


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
        """Whether batches carry the head-alone text (for self-negatives)."""
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
        """L_CE and logits on a validation batch (no margin, in-batch negatives only)."""
        hr = self.model.encode_queries(batch.hr).vectors
        tail = self.model.encode_entities(batch.tail).vectors
        return self.loss(hr, tail, None, batch)
