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


def test_packed_loss_and_gradients_equal_padded(tiny_config):
    """train.packing changes how a batch is laid out, not what is learnt: the same InfoNCE loss and gradients (eval
    mode, so that dropout, drawn over a different layout, is out of the comparison)."""
    import numpy as np

    from kgdistill.api import DataContext, build_model
    from kgdistill.losses.contrastive import InfoNCELoss
    from kgdistill.training.objectives import ContrastiveObjective

    config = tiny_config()
    torch.manual_seed(0)
    model, tokenizer = build_model(config)
    data = DataContext(config, tokenizer)
    objective = ContrastiveObjective(model, InfoNCELoss(model, config.loss, data.known_train, 8)).eval()
    batch = data.train_set().batch(np.arange(8), with_heads=True)
    results = {}
    for packing in (False, True):
        model.packing = packing
        model.zero_grad()
        loss, _ = objective(batch)
        loss.backward()
        results[packing] = (loss.detach(), model.hr_encoder.embeddings.word_embeddings.weight.grad.clone())
    assert torch.allclose(results[True][0], results[False][0], atol=1e-5)
    assert torch.allclose(results[True][1], results[False][1], atol=1e-5)
