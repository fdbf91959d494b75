"""The CUDA path: training, distillation, evaluation, the gradient cache and the Predictor on a GPU give what the CPU
gives. Skipped without CUDA (CI has none); run on a GPU machine with ``pytest -m gpu``."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from conftest import train_tiny

# KGDISTILL_TEST_DEVICE=cpu runs the same tests on the CPU, to check them where no GPU is at hand
DEVICE = os.environ.get("KGDISTILL_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                                  reason="needs CUDA")]


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory, tiny_plm, tiny_kg):
    """A tiny teacher trained on the GPU with precision auto (bf16 autocast where the GPU supports it)."""
    root = tmp_path_factory.mktemp(DEVICE)
    return train_tiny(root / "run", tiny_kg, tiny_plm, data__cache_dir=str(root / "cache"), train__device=DEVICE,
                      train__precision="auto", train__max_steps=12)


def test_training_on_cuda_learns_in_bf16_and_saves_portable_weights(cuda_run):
    from kgdistill.api import load_model

    info = json.loads((cuda_run / "run.json").read_text())
    precision = info["precision"]
    assert precision["device"] == DEVICE
    if DEVICE == "cuda":
        assert precision["gpu"] == torch.cuda.get_device_name()
        assert precision["chosen"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    losses = [json.loads(line)["loss"] for line in (cuda_run / "train_log.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < np.mean(losses[:4])  # it learns
    model, _, _ = load_model(cuda_run)  # saved from the GPU, loaded on the CPU
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())


def test_cuda_evaluation_equals_cpu_evaluation(cuda_run):
    from kgdistill.api import DataContext, load_model, load_run_config

    model, tokenizer, folder = load_model(cuda_run)
    config = load_run_config(folder)
    data = DataContext(config, tokenizer)
    results = {}
    for device in ("cpu", DEVICE):
        config.train.device, config.train.precision = device, "fp32"
        results[device] = data.evaluator(torch.device(device)).evaluate(model.to(device), "test", progress=False)
    cpu, gpu = results["cpu"].metrics["no_rerank"]["both"], results[DEVICE].metrics["no_rerank"]["both"]
    assert gpu["mrr"] == pytest.approx(cpu["mrr"], abs=1e-3)
    assert gpu["hits@10"] == pytest.approx(cpu["hits@10"], abs=1e-3)


def test_distillation_stage_with_mgfd_and_packing_runs_on_cuda(cuda_run, tiny_config, tmp_path):
    from kgdistill.api import distill

    config = tiny_config(train__device=DEVICE, train__precision="auto", train__packing=True)
    config.distill.teacher, config.distill.mask_rate, config.model.num_layers = str(cuda_run), 0.2, 2
    config.distill.embedding_weight = 1.0
    outcome = distill(config, tmp_path / "student")
    assert outcome.train.steps == config.distill.stage_steps and np.isfinite(outcome.train.final_loss)
    log = [json.loads(line) for line in (tmp_path / "student" / "train_log.jsonl").read_text().splitlines()]
    mgfd = [r["l_mgfd"] for r in log if "l_mgfd" in r]
    assert mgfd and all(np.isfinite(mgfd)) and max(mgfd) > 0  # the masked-feature term is live on the GPU


def test_gradient_cache_matches_full_batch_on_cuda(tiny_config):
    from kgdistill.api import DataContext, build_model
    from kgdistill.losses.contrastive import InfoNCELoss
    from kgdistill.training.objectives import ContrastiveObjective

    config = tiny_config(train__device=DEVICE)
    torch.manual_seed(0)
    model, tokenizer = build_model(config)
    data = DataContext(config, tokenizer)
    objective = ContrastiveObjective(model.to(DEVICE), InfoNCELoss(model, config.loss, data.known_train, 8)).train()
    model.hr_encoder.eval()  # dropout off: chunks draw other masks than the full batch
    model.tail_encoder.eval()
    batch = data.train_set().batch(np.arange(8)).to(torch.device(DEVICE))
    loss, _ = objective(batch)
    loss.backward()
    full = {n: p.grad.clone() for n, p in objective.named_parameters() if p.grad is not None}
    objective.zero_grad(set_to_none=True)
    objective.cache_chunk = 3
    cached_loss, _ = objective(batch)
    cached_loss.backward()
    assert cached_loss.item() == pytest.approx(loss.item(), rel=1e-4)
    for name, grad in full.items():
        assert torch.allclose(objective.get_parameter(name).grad, grad, atol=1e-5, rtol=1e-3), name


def test_predictor_on_cuda_ranks_as_on_cpu(cuda_run):
    from kgdistill.inference.predictor import Predictor

    cpu, gpu = Predictor.from_pretrained(cuda_run, device="cpu"), Predictor.from_pretrained(cuda_run, device=DEVICE)
    for head, relation in [("E0", "hypernym"), ("E3", "has part"), ("E5", "similar to")]:
        a, b = cpu.predict_tails(head, relation, k=5).results, gpu.predict_tails(head, relation, k=5).results
        assert [p.score for p in b] == pytest.approx([p.score for p in a], abs=1e-4)
