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
    cached_loss, _ = objective.cached_step(batch, chunk)
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


def test_an_objective_without_a_cached_step_refuses_the_key_instead_of_ignoring_it(tiny_config, tmp_path):
    from kgdistill.api import DataContext, train
    from kgdistill.distill.ladder import distill
    from kgdistill.errors import KGDistillError
    from kgdistill.models.plm import load_tokenizer, resolve_plm
    from kgdistill.training.objectives import ContrastiveObjective
    from kgdistill.training.trainer import Trainer

    class NoCache(ContrastiveObjective):
        cached_step = None

    objective, _ = _objective(tiny_config)
    config = tiny_config(train__gradient_cache_chunk=4)
    examples = DataContext(config, load_tokenizer(resolve_plm(config.model.plm))).train_set()
    with pytest.raises(KGDistillError, match="'train.gradient_cache_chunk': NoCache has no gradient-cache step"):
        Trainer(tmp_path / "run", config, NoCache(objective.model, objective.loss), examples, None, None)
    train(tiny_config(train__max_steps=2), tmp_path / "t", evaluate_after=False, progress=False)
    with pytest.raises(KGDistillError, match="'train.gradient_cache_chunk': distillation has no gradient-cache step"):
        distill(config, tmp_path / "t", tmp_path / "s", layers=2, progress=False)
    assert not (tmp_path / "s").exists()  # refused before anything ran
