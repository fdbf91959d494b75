"""InfoNCE (``kgdistill.losses.contrastive``), hand-computed: margin, temperature and the transposed term,
self-negative and pre-batch columns, SimKGC's false-negative masks, and scores in fp32 under bf16 autocast."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import make_toy_kg
from kgdistill.config import LossConfig
from kgdistill.data.batching import KnownTails, TrainBatch
from kgdistill.data.text import with_inverses
from kgdistill.losses.contrastive import InfoNCELoss, build_masks


class _Model(torch.nn.Module):
    hidden_size = 2

    def __init__(self, inv_t=20.0):
        super().__init__()
        self.log_inv_t = torch.nn.Parameter(torch.tensor(math.log(inv_t)))

    def inv_temperature(self):
        return self.log_inv_t.exp()


def test_infonce_margin_temperature_and_transpose_hand_computed():
    hr = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tail = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    known = KnownTails(np.array([[0, 0, 0], [1, 0, 1]]), 2, 1)
    loss_fn = InfoNCELoss(_Model(20.0), LossConfig(margin=0.02, self_negative=False), known, batch_size=2)
    batch = TrainBatch(None, None, None, np.array([0, 1]), np.array([0, 0]), np.array([0, 1]))
    loss, logits = loss_fn(hr, tail, None, batch)
    s = torch.tensor([[1.0 - 0.02, 0.6], [0.0, 0.8 - 0.02]]) * 20
    expected = F.cross_entropy(s, torch.arange(2)) + F.cross_entropy(s.T, torch.arange(2))
    assert torch.allclose(logits, s)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss_fn.eval()  # evaluation mode: no margin
    _, logits = loss_fn(hr, tail, None, batch)
    assert torch.allclose(logits, torch.tensor([[1.0, 0.6], [0.0, 0.8]]) * 20)


def test_self_negative_and_prebatch_columns():
    known = KnownTails(np.array([[0, 0, 1], [1, 0, 0]]), 3, 1)
    cfg = LossConfig(self_negative=True, pre_batch=1, pre_batch_weight=0.5)
    loss_fn = InfoNCELoss(_Model(10.0), cfg, known, batch_size=2)
    hr = F.normalize(torch.randn(2, 2), dim=-1)
    tail = F.normalize(torch.randn(2, 2), dim=-1)
    head = F.normalize(torch.randn(2, 2), dim=-1)
    batch = TrainBatch(None, None, None, np.array([0, 1]), np.array([0, 0]), np.array([1, 0]))
    initial_queue = loss_fn.queue.vectors.clone()  # random unit vectors, no entity ids yet: nothing masked
    _, logits = loss_fn(hr, tail, head, batch)
    assert logits.shape == (2, 2 + 2 + 1)
    assert torch.allclose(logits[:, 2:4], (hr @ initial_queue.T) * 10 * 0.5)
    assert torch.allclose(logits[:, 4], (hr * head).sum(-1) * 10)
    # the queue now holds this batch's tails; a second batch sees them, masked where they are known answers
    assert torch.equal(loss_fn.queue.entities, torch.tensor([1, 0]))
    _, logits2 = loss_fn(hr, tail, head, batch)
    expected_pre = (hr @ tail.T) * 10 * 0.5
    keep = ~torch.tensor([[True, False], [False, True]])  # row 0 (a,r)->b: b known; row 1 (b,r)->a: a known
    assert torch.allclose(logits2[:, 2:4][keep], expected_pre[keep])
    assert (logits2[:, 2:4][~keep] == -1e4).all()


def test_false_negative_masks_hand_built():
    kg = make_toy_kg()
    known = KnownTails(with_inverses(kg.splits["train"], 1), 4, 1)
    # batch: (a,r,b), (a,r,c), (d,r,a), (b, inverse r, a)
    batch = TrainBatch(None, None, None, heads=np.array([0, 0, 3, 1]), relations=np.array([0, 0, 0, 1]),
                       tails=np.array([1, 2, 0, 0]))
    masks = build_masks(batch, known)
    keep = masks.in_batch.numpy()
    assert keep.diagonal().all()
    assert not keep[0, 1] and not keep[1, 0]  # c is a known answer of (a, r) and b too
    assert not keep[2, 3] and not keep[3, 2]  # same tail entity a in rows 2 and 3
    assert keep[0, 2]  # a is not an answer of (a, r)
    # self-negative: is the head a known answer of its own query? never here
    assert masks.self_negative.all()


def test_scores_are_fp32_under_bf16_autocast():
    from kgdistill.config import LossConfig
    from kgdistill.losses.contrastive import InfoNCELoss

    torch.manual_seed(0)
    hr = torch.nn.functional.normalize(torch.randn(8, 64), dim=-1)
    tail = torch.nn.functional.normalize(hr + 0.3 * torch.randn(8, 64), dim=-1)
    model = type("M", (), {"hidden_size": 64})()
    loss = InfoNCELoss(model, LossConfig(self_negative=False), None, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = loss.scores(hr, tail, None)
        plain = hr @ tail.T  # what the old code computed under autocast
    assert scores.in_batch.dtype == torch.float32
    assert torch.allclose(scores.in_batch, hr @ tail.T, atol=1e-6)
    assert plain.dtype == torch.bfloat16 and (plain.float() - hr @ tail.T).abs().max() > 1e-3
