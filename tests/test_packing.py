"""Padding-free packing equals padded encoding: same hidden states at every real token, same pooled vectors."""
from __future__ import annotations

import pytest
import torch

from kgdistill.models.packing import can_pack, encode_packed, first_fit_decreasing


def test_first_fit_decreasing_places_every_sequence_without_overlap():
    lengths = [5, 3, 8, 2, 2, 7, 1]
    place = first_fit_decreasing(lengths, 8)
    used: dict[int, set[int]] = {}
    for (row, offset), n in zip(place, lengths):
        cells = set(range(offset, offset + n))
        assert offset + n <= 8 and not cells & used.get(row, set())
        used.setdefault(row, set()).update(cells)
    assert max(r for r, _ in place) + 1 == 4  # 28 tokens in rows of 8: four rows, none wasted beyond the bound


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_encoding_equals_padded_encoding(tiny_plm, attn):
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(str(tiny_plm), attn_implementation=attn).eval()
    assert can_pack(encoder)
    torch.manual_seed(0)
    lengths = torch.tensor([9, 3, 12, 4, 4, 7, 2, 12])
    width = int(lengths.max())
    ids = torch.randint(5, 60, (len(lengths), width))
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    ids = ids * mask
    types = ((torch.arange(width)[None, :] >= (lengths[:, None] // 2)) & mask.bool()).long()
    with torch.no_grad():
        padded = encoder(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        packed = encode_packed(encoder, ids, mask, types)
    real = mask.bool()
    assert torch.allclose(packed[real], padded[real], atol=1e-5)
    assert (packed[~real] == 0).all()


def test_packing_keeps_gradients(tiny_plm):
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(str(tiny_plm))
    ids = torch.randint(5, 60, (4, 6))
    mask = torch.tensor([[1] * 6, [1] * 2 + [0] * 4, [1] * 3 + [0] * 3, [1] * 1 + [0] * 5])
    encode_packed(encoder, ids * mask, mask).sum().backward()
    assert encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0
