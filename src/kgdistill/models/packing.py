"""Padding-free encoding: several short texts share one row, each attending only to itself.

A padded batch of WN18RR queries is about 37 % padding. Packing lays the real tokens of several sequences side by
side in rows as wide as the batch (first-fit decreasing), restarts the position ids at every sequence, and gives the
encoder a block-diagonal attention mask, so every sequence sees exactly what it would see alone. The hidden states
are scattered back into the padded layout, so pooling, MGFD and every caller are unchanged; the result equals padded
encoding up to floating-point summation order (``tests/models/test_packing.py``).

Only encoders whose position ids are plain 0..L-1 (BERT-style absolute positions) can be packed this way;
:func:`can_pack` says which, and others keep padded encoding.
"""
from __future__ import annotations

import torch

PACKABLE = {"bert", "distilbert", "electra"}


def can_pack(encoder) -> bool:
    """Whether ``encoder`` takes explicit 0-based position ids and a ready-made 4D attention mask."""
    return getattr(encoder.config, "model_type", None) in PACKABLE


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[tuple[int, int]]:
    """(row, offset) of every sequence: longest first, each into the first row with room."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    free: list[int] = []
    place = [(0, 0)] * len(lengths)
    for i in order:
        n = lengths[i]
        for row, room in enumerate(free):
            if room >= n:
                place[i] = (row, capacity - room)
                free[row] = room - n
                break
        else:
            place[i] = (len(free), 0)
            free.append(capacity - n)
    return place


def encode_packed(encoder, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The encoder's last hidden states for a right-padded batch, computed on packed rows; shape (B, T, H).

    Padding positions of the output are zeros (padded encoding leaves arbitrary values there; nothing reads them)."""
    batch, width = input_ids.shape
    lengths = attention_mask.sum(1)
    place = first_fit_decreasing(lengths.tolist(), width)
    rows = max(r for r, _ in place) + 1
    device = input_ids.device
    src_seq, src_pos = attention_mask.nonzero(as_tuple=True)  # every real token, row-major
    row_of = torch.tensor([r for r, _ in place], device=device)
    offset_of = torch.tensor([o for _, o in place], device=device)
    dst_row, dst_col = row_of[src_seq], offset_of[src_seq] + src_pos
    packed_ids = torch.zeros(rows, width, dtype=input_ids.dtype, device=device)
    packed_ids[dst_row, dst_col] = input_ids[src_seq, src_pos]
    positions = torch.zeros(rows, width, dtype=torch.long, device=device)
    positions[dst_row, dst_col] = src_pos
    segment = torch.full((rows, width), -1, dtype=torch.long, device=device)
    segment[dst_row, dst_col] = src_seq
    same = segment[:, :, None] == segment[:, None, :]
    same |= torch.eye(width, dtype=torch.bool, device=device)  # a free slot attends to itself (no empty softmax row)
    kwargs = {"input_ids": packed_ids, "position_ids": positions}
    if token_type_ids is not None:
        packed_types = torch.zeros(rows, width, dtype=token_type_ids.dtype, device=device)
        packed_types[dst_row, dst_col] = token_type_ids[src_seq, src_pos]
        kwargs["token_type_ids"] = packed_types
    if getattr(encoder.config, "_attn_implementation", "sdpa") == "eager":
        dtype = encoder.get_input_embeddings().weight.dtype
        mask = torch.zeros(same.shape, dtype=dtype, device=device).masked_fill(~same, torch.finfo(dtype).min)
    else:
        mask = same
    hidden = encoder(attention_mask=mask[:, None], **kwargs).last_hidden_state
    out = hidden.new_zeros(batch, width, hidden.shape[-1])
    out[src_seq, src_pos] = hidden[dst_row, dst_col]
    return out
