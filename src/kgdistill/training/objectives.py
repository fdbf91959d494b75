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
    ``objective(batch, step)`` returns the loss (the trainer calls its ``backward()``) and a dict of numbers to log;
    ``validation_loss(batch)`` the loss and logits of a validation batch; ``needs_heads`` says whether batches must
    carry the head-alone text."""

    model: nn.Module

    @property
    def needs_heads(self) -> bool: ...

    def __call__(self, batch: TrainBatch, step: int = 0) -> tuple[torch.Tensor, dict]: ...

    def validation_loss(self, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]: ...


def _rng_state() -> tuple:
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def _set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


class ContrastiveObjective(nn.Module):
    """Encode queries, tails and (for self-negatives) heads alone, then apply :class:`InfoNCELoss`.

    With ``cache_chunk`` (``train.gradient_cache_chunk``) it encodes in chunks of that size and gives the full
    batch's loss and gradients (gradient cache, Gao et al. 2021, as sentence-transformers' cached losses): the
    forward encodes everything without a graph and caches the loss's gradients with respect to the vectors (and the
    temperature); the returned loss carries a hook that, when the trainer calls ``backward()``, re-encodes chunk by
    chunk (replaying each chunk's RNG state so dropout matches, under the forward's autocast) and pushes the cached
    gradients through. Only one chunk's activations are ever held."""

    def __init__(self, model, loss: InfoNCELoss, cache_chunk: int | None = None):
        super().__init__()
        self.model = model
        self.loss = loss
        self.cache_chunk = cache_chunk

    @property
    def needs_heads(self) -> bool:
        """Whether batches carry the head-alone text (for self-negatives)."""
        return self.loss.config.self_negative

    def forward(self, batch: TrainBatch, step: int = 0) -> tuple[torch.Tensor, dict]:
        if self.cache_chunk is not None and torch.is_grad_enabled():
            return self._cached(batch, self.cache_chunk), {}
        hr = self.model.encode_queries(batch.hr).vectors
        tail = self.model.encode_entities(batch.tail).vectors
        head = self.model.encode_entities(batch.head).vectors if batch.head is not None else None
        loss, _ = self.loss(hr, tail, head, batch)
        return loss, {}

    def _cached(self, batch: TrainBatch, chunk: int) -> torch.Tensor:
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
        temperature = [self.model.log_inv_t] if self.model.log_inv_t.requires_grad else []
        grads = torch.autograd.grad(loss, vectors + temperature)
        vector_grads, temperature_grads = grads[:len(vectors)], grads[len(vectors):]
        out = loss.detach().requires_grad_()
        device = vectors[0].device.type  # chunks are re-encoded under the forward's autocast, not backward's
        autocast_on, autocast_dtype = torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)

        def backward_chunks(grad: torch.Tensor) -> None:
            for parameter, cached in zip(temperature, temperature_grads):
                parameter.grad = grad * cached if parameter.grad is None else parameter.grad + grad * cached
            # backward() runs hooks without grad mode: the chunks' graphs must be built here
            with torch.enable_grad(), torch.autocast(device, dtype=autocast_dtype, enabled=autocast_on):
                for (encode, inputs), cached, states in zip(parts, vector_grads, rng_states):
                    for index, start in enumerate(range(0, len(inputs), chunk)):
                        _set_rng_state(states[index])
                        encode(inputs.slice(start, start + chunk)).vectors.backward(grad * cached[start:start + chunk])

        out.register_hook(backward_chunks)
        return out

    def validation_loss(self, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """L_CE and logits on a validation batch (no margin, in-batch negatives only)."""
        hr = self.model.encode_queries(batch.hr).vectors
        tail = self.model.encode_entities(batch.tail).vectors
        return self.loss(hr, tail, None, batch)
