"""Dropout with a cheaper random mask, for training on CPUs.

On a CPU ``torch.bernoulli_`` draws one 32-bit random number per element, and dropout over the attention
probabilities (rows x heads x L x L) and hidden states was 14 % of a teacher training step (BENCHMARKS.md §5d).
Here one 64-bit draw gives the keep/drop decision of four elements (16 random bits each): the same Bernoulli mask
with the drop rate rounded to a multiple of 2^-16 (0.1 -> 0.100006), about 2.5x cheaper forward and backward. The
encoder keeps its library code: hidden-state dropouts are swapped module for module, attention dropout comes from an
attention function registered with transformers' ``AttentionInterface`` (torch's SDPA whenever no dropout is due).
"""
from __future__ import annotations

import torch
from torch import nn

ATTENTION = "kgdistill_sdpa"  # the attention implementation name encoders are switched to
_LANES = 1 << 16


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """A boolean mask of ``shape``, each element True with probability 1 - round(p * 2^16) / 2^16."""
    count = shape.numel()
    draws = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_(-2**63, 2**63 - 1)
    lanes = draws.view(torch.int16)[:count].view(shape)  # uniform on [-2^15, 2^15)
    return lanes >= round(p * _LANES) - _LANES // 2


def fast_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout in training mode: zero each element with probability ``p`` (to 2^-16), scale the rest to keep the mean."""
    kept = 1.0 - round(p * _LANES) / _LANES
    if kept <= 0.0:  # p rounds to 1: everything dropped, as torch's dropout at p = 1
        return torch.zeros_like(x)
    return torch.where(keep_mask(x.shape, p, x.device), x * (1.0 / kept), 0.0)


class FastDropout(nn.Dropout):
    """:class:`torch.nn.Dropout` drawing its mask with :func:`keep_mask`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return fast_dropout(x, self.p)


def attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Attention as transformers' SDPA computes it, with :func:`fast_dropout` on the probabilities when training."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if dropout == 0.0:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=scaling, **kwargs)
    scores = torch.matmul(query, key.transpose(2, 3)) * (scaling or query.size(-1) ** -0.5)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    probs = fast_dropout(torch.softmax(scores, dim=-1), dropout)
    return torch.matmul(probs.to(value.dtype), value).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    if ATTENTION not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(ATTENTION, attention_forward)
        AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the same masks as SDPA


def use_fast_dropout(encoder: nn.Module) -> bool:
    """Switch a transformers encoder to :class:`FastDropout` and :func:`attention_forward`; False (encoder unchanged)
    where its attention is not SDPA (eager or flash kernels keep their own dropout)."""
    config = getattr(encoder, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    _register()
    encoder.set_attn_implementation(ATTENTION)
    for module in list(encoder.modules()):
        for name, child in module.named_children():
            if type(child) is nn.Dropout:
                replacement = FastDropout(child.p)
                replacement.train(child.training)  # the replaced module's mode, not nn.Module's default
                setattr(module, name, replacement)
    return True
