"""Hand-computed small cases for L_CE, L_SCORE and both MGFD forms; masking properties."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kgdistill.config import LossConfig
from kgdistill.data.batching import EncoderBatch, KnownTails, TrainBatch
from kgdistill.losses.contrastive import InfoNCELoss
from kgdistill.losses.distill import GenerativeMGFDLoss, PooledMGFDLoss, ScoreDistillLoss, mask_tokens


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


def test_score_mse_and_kl_hand_computed():
    s = torch.tensor([[0.5, 0.1], [0.2, 0.9]])
    t = torch.tensor([[0.7, 0.1], [0.2, 0.5]])
    keep = torch.ones(2, 2, dtype=torch.bool)
    assert ScoreDistillLoss("mse")(s, t, keep).item() == pytest.approx((0.04 + 0.16) / 4)
    keep[1, 1] = False  # a masked false negative contributes nothing
    assert ScoreDistillLoss("mse")(s, t, keep).item() == pytest.approx(0.04 / 4)
    kl = ScoreDistillLoss("kl", temperature=2.0)(s, t, torch.ones(2, 2, dtype=torch.bool))
    p = F.softmax(t / 2, 1)
    expected = (p * (p.log() - F.log_softmax(s / 2, 1))).sum(1).mean() * 4
    assert kl.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError):
        ScoreDistillLoss()(s, t[:, :1], keep)


def test_pooled_mgfd_hand_computed():
    student = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    teacher = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [9.0, 9.0]]])
    positions = torch.tensor([[True, True, False]])
    s = F.normalize(torch.tensor([[0.5, 0.5]]), dim=-1)
    t = torch.tensor([[1.0, 0.0]])
    assert PooledMGFDLoss()(student, teacher, positions).item() == pytest.approx(F.mse_loss(s, t).item())
    assert PooledMGFDLoss()(student, teacher, torch.zeros_like(positions)).item() == 0.0


def test_generative_mgfd_uses_only_masked_positions_and_trains_head():
    torch.manual_seed(0)
    loss = GenerativeMGFDLoss(3, 2, hidden=4)
    student = torch.randn(2, 5, 3, requires_grad=True)
    teacher = torch.randn(2, 5, 2)
    positions = torch.zeros(2, 5, dtype=torch.bool)
    positions[0, 1] = positions[1, 3] = True
    value = loss(student, teacher, positions)
    expected = F.mse_loss(loss.generator(student[positions]), teacher[positions])
    assert value.item() == pytest.approx(expected.item())
    teacher2 = teacher.clone()
    teacher2[0, 0] += 100  # an unmasked position: no effect
    assert loss(student, teacher2, positions).item() == pytest.approx(value.item())
    value.backward()
    assert (student.grad[~positions] == 0).all() and (student.grad[positions].abs().sum(-1) > 0).all()
    with torch.no_grad():  # one gradient step on the generation head lowers the loss: the head trains
        for p in loss.parameters():
            p -= 0.05 * p.grad
    assert loss(student, teacher, positions).item() < value.item()


def test_mask_tokens_rate_and_excluded_positions():
    ids = torch.arange(1, 21).repeat(4, 1)
    attention = torch.ones_like(ids)
    attention[2, 10:] = 0  # a shorter sequence
    batch = EncoderBatch(ids, attention)
    torch.manual_seed(1)
    masked, positions = mask_tokens(batch, 0.2, mask_token_id=999)
    lengths = attention.sum(1)
    assert positions.sum(1).tolist() == [int(0.2 * int(n)) for n in lengths]
    assert not positions[:, 0].any()  # never [CLS]
    for row, n in enumerate(lengths.tolist()):
        assert not positions[row, n - 1]  # never the last [SEP]
        assert not positions[row, n:].any()  # never padding
    assert (masked.input_ids[positions] == 999).all() and torch.equal(masked.input_ids[~positions], ids[~positions])
    same, none = mask_tokens(batch, 0.0, 999)
    assert same is batch and not none.any()
