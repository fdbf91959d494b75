"""Gradient cache gives the full batch's loss and gradients while encoding in chunks; non-finite losses stop cleanly."""
import numpy as np
import pytest
import torch


def _objective(tiny_config, **overrides):
    from kgdistill.api import DataContext, build_model
    from kgdistill.losses.contrastive import InfoNCELoss
    from kgdistill.training.objectives import ContrastiveObjective

    config = tiny_config(**overrides)
    torch.manual_seed(0)
    model, tokenizer = build_model(config)
    data = DataContext(config, tokenizer)
    objective = ContrastiveObjective(model, InfoNCELoss(model, config.loss, data.known_train, 8)).train()
    model.hr_encoder.eval()  # dropout off so that the two paths see the same function
    model.tail_encoder.eval()
    return objective, data.train_set().batch(np.arange(8))


@pytest.mark.parametrize("chunk", [1, 3, 8])
def test_gradient_cache_matches_full_batch(tiny_config, chunk):
    objective, batch = _objective(tiny_config)
    loss, _ = objective(batch)
    loss.backward()
    full = {n: p.grad.clone() for n, p in objective.named_parameters() if p.grad is not None}
    objective.zero_grad(set_to_none=True)
    objective.cache_chunk = chunk
    cached_loss, _ = objective(batch)
    cached_loss.backward()  # the trainer's plain backward() runs the chunks
    assert cached_loss.item() == pytest.approx(loss.item(), rel=1e-5)
    cached = {n: p.grad for n, p in objective.named_parameters() if p.grad is not None}
    assert cached.keys() == full.keys() and "model.log_inv_t" in cached
    for name, grad in full.items():
        assert torch.allclose(cached[name], grad, atol=1e-6, rtol=1e-4), name


def test_training_with_gradient_cache_runs_and_learns(tiny_config, tmp_path):
    from kgdistill.api import train

    outcome = train(tiny_config(train__gradient_cache_chunk=3, train__max_steps=4), tmp_path / "gc",
                    evaluate_after=False, progress=False)
    assert outcome.train.steps == 4 and np.isfinite(outcome.train.final_loss)


def test_non_finite_loss_stops_with_last_checkpoint_intact(tiny_config, tmp_path, monkeypatch):
    from kgdistill.api import train
    from kgdistill.training.objectives import ContrastiveObjective
    from kgdistill.training.trainer import NonFiniteLossError

    config = tiny_config(train__max_steps=6, train__checkpoint_every=2)
    original = ContrastiveObjective.forward

    def poisoned(self, batch, step=0):
        loss, logs = original(self, batch, step)
        return (loss * float("nan") if step == 3 else loss), logs

    monkeypatch.setattr(ContrastiveObjective, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match="step 3"):
        train(config, tmp_path / "nan", evaluate_after=False, progress=False)
    from kgdistill.models.biencoder import BiEncoder

    BiEncoder.load(tmp_path / "nan/checkpoint-last")  # the step-2 checkpoint is intact and verifies
    skipped = tiny_config(train__max_steps=6, train__skip_nonfinite=True)
    outcome = train(skipped, tmp_path / "skip", evaluate_after=False, progress=False)
    assert outcome.train.skipped_batches == 1


def test_distillation_refuses_the_key_instead_of_ignoring_it(tiny_config, tmp_path):
    from kgdistill.api import train
    from kgdistill.jobs.distill import distill
    from kgdistill.errors import KGDistillError

    config = tiny_config(train__gradient_cache_chunk=4, model__num_layers=2)
    train(tiny_config(train__max_steps=2), tmp_path / "t", evaluate_after=False, progress=False)
    config.distill.teacher = str(tmp_path / "t")
    with pytest.raises(KGDistillError, match="'train.gradient_cache_chunk': distillation has no gradient-cache step"):
        distill(config, tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()  # refused before anything ran


def test_gradient_cache_re_encodes_under_the_forwards_autocast(tiny_config):
    """backward() runs outside the trainer's autocast: the chunks it re-encodes must still run under the forward's."""
    objective, batch = _objective(tiny_config)
    objective.cache_chunk = 3
    seen = []
    encode = objective.model.encode_queries

    def spy(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return encode(*args, **kwargs)

    objective.model.encode_queries = spy
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = objective(batch)
    loss.backward()
    assert len(seen) == 6 and all(seen)  # 3 chunks in the forward, 3 re-encoded by backward()
    assert all(p.grad is not None for p in objective.model.hr_encoder.parameters() if p.requires_grad)
