"""Two gloo processes on CPU: loss and gradients equal one process holding the same global batch."""
import os
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))

pytestmark = pytest.mark.slow  # two processes: ten seconds each

GLOBAL = 8


def _setup(plm, kg, cache, pre_batch):
    from kgdistill.api import DataContext, build_model
    from kgdistill.config import build_config
    from kgdistill.losses.contrastive import InfoNCELoss
    from kgdistill.training.objectives import ContrastiveObjective

    os.environ["KGDISTILL_CACHE"] = cache
    config = build_config(None, overrides={"data": {"dataset": kg, "max_tokens": 24},
                                           "model": {"plm": plm}, "loss": {"pre_batch": pre_batch}})
    torch.manual_seed(0)
    model, tokenizer = build_model(config)
    model.hr_encoder.eval()  # dropout off: the two set-ups must compute the same function
    model.tail_encoder.eval()
    data = DataContext(config, tokenizer)
    loss = InfoNCELoss(model, config.loss, data.known_train, GLOBAL)  # the queue holds K x the *global* batch
    objective = ContrastiveObjective(model, loss)
    objective.train()
    model.hr_encoder.eval()
    model.tail_encoder.eval()
    return objective, data.train_set()


def _grads(objective):
    return {n: p.grad.clone() for n, p in objective.named_parameters() if p.grad is not None}


def _worker(rank, world, plm, kg, cache, pre_batch, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    from torch.nn.parallel import DistributedDataParallel

    objective, examples = _setup(plm, kg, cache, pre_batch)
    ddp = DistributedDataParallel(objective, find_unused_parameters=True)
    share = GLOBAL // world
    losses = []
    for step, rows in enumerate([np.arange(GLOBAL), np.arange(GLOBAL, 2 * GLOBAL)]):  # 2 steps: the queue fills
        objective.zero_grad(set_to_none=True)
        loss, _ = ddp(examples.batch(rows[rank * share:(rank + 1) * share]))
        loss.backward()
        losses.append(loss.detach())
    mean_loss = torch.stack(losses)
    dist.all_reduce(mean_loss)
    if rank == 0:
        torch.save({"loss": mean_loss / world, "grads": _grads(objective)}, out)
    dist.destroy_process_group()


@pytest.mark.parametrize("pre_batch", [0, 1])
def test_two_processes_equal_one(tiny_plm, tiny_kg, tmp_path, pre_batch):
    cache = str(tmp_path / "cache")
    objective, examples = _setup(str(tiny_plm), str(tiny_kg), cache, pre_batch)
    single = []
    for rows in [np.arange(GLOBAL), np.arange(GLOBAL, 2 * GLOBAL)]:
        objective.zero_grad(set_to_none=True)
        loss, _ = objective(examples.batch(rows))
        loss.backward()
        single.append(loss.detach())
    reference = _grads(objective)
    out = tmp_path / "rank0.pt"
    port = 29500 + os.getpid() % 1000 + pre_batch
    mp.spawn(_worker, args=(2, str(tiny_plm), str(tiny_kg), cache, pre_batch, port, str(out)), nprocs=2, join=True)
    result = torch.load(out, weights_only=True)
    assert torch.allclose(result["loss"], torch.stack(single), rtol=1e-5, atol=1e-6)
    assert result["grads"].keys() == reference.keys()
    for name, grad in reference.items():
        # summation order differs (two partial sums, then all-reduce): allow float32 rounding at the gradient's scale
        scale = grad.abs().max().item()
        diff = (result["grads"][name] - grad).abs().max().item()
        assert diff <= 1e-5 * max(scale, 1e-3), f"{name}: max diff {diff:.3g} at scale {scale:.3g}"
