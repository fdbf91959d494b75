"""The distillation losses (``kgdistill.losses.distill``), hand-computed: L_SCORE (MSE and KL), both MGFD forms,
and the masking of tokens."""
import pytest
import torch
import torch.nn.functional as F

from kgdistill.data.batching import EncoderBatch
from kgdistill.losses.distill import GenerativeMGFDLoss, PooledMGFDLoss, ScoreDistillLoss, mask_tokens


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
