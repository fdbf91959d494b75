"""Measure this machine's limits and kgdistill against them, in one run (``kgdistill bench``).

Reports matmul peak, encoder forward GFLOP/s (analytic FLOP count), teacher and student training samples/s,
entity-encoding speed-up of the smallest student, and (unless ``--quick``) a full WN18RR test evaluation split into
encoding and ranking. Medians of several repeats; ratios are measured side by side in the same process.
"""
from __future__ import annotations

import json
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from .config import build_config
from .evaluation.ranking import autocast


def _median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    seconds = _median_time(lambda: a @ b, repeats)
    return 2 * n**3 / seconds / 1e9


def encoder_flops(config, tokens: int) -> float:
    """Forward FLOPs of one sequence: projections, feed-forward and attention of every layer."""
    h, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    return layers * (8 * tokens * h * h + 4 * tokens * h * f + 4 * tokens * tokens * h)


def encode_rate(encoder, batch: int, tokens: int, precision: str, repeats: int) -> float:
    ids = torch.randint(1000, 20000, (batch, tokens))
    mask = torch.ones_like(ids)
    encoder.eval()

    def run():
        with torch.no_grad(), autocast(torch.device("cpu"), precision):
            encoder(input_ids=ids, attention_mask=mask)

    return batch / _median_time(run, repeats)


def train_rate(config, batch_size: int, precision: str, repeats: int, layers: int | None = None) -> float:
    """Samples/s of full teacher (or student) steps on real WN18RR batches."""
    from .api import DataContext, build_model
    from .losses.contrastive import InfoNCELoss
    from .training.objectives import ContrastiveObjective

    config.train.batch_size, config.train.precision = batch_size, precision
    config.model.num_layers = layers
    model, tokenizer = build_model(config)
    data = DataContext(config, tokenizer)
    objective = ContrastiveObjective(model, InfoNCELoss(model, config.loss, data.known_train, batch_size)).train()
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=1e-5, foreach=True)
    examples = data.train_set()
    rng = np.random.default_rng(0)

    def step():
        batch = examples.batch(rng.choice(len(examples), batch_size, replace=False))
        with autocast(torch.device("cpu"), precision):
            loss, _ = objective(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return batch_size / _median_time(step, repeats)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(quick: bool = False, model_dir: str | None = None, repeats: int = 3) -> dict:
    from .models.plm import build_student_encoder, even_layer_map, load_encoder, resolve_plm

    torch.manual_seed(0)
    results: dict = {"machine": {"platform": platform.platform(), "torch": torch.__version__,
                                 "threads": torch.get_num_threads(), "cpu": platform.processor() or "unknown"}}
    results["matmul_peak_gflops_fp32"] = matmul_peak(torch.float32, repeats=repeats)
    results["matmul_peak_gflops"] = matmul_peak(torch.bfloat16, repeats=repeats)
    plm = load_encoder(resolve_plm("default"))
    tokens, batch = 50, 128
    flops = encoder_flops(plm.config, tokens)
    for precision, key in (("fp32", "fp32"), ("bf16", "bf16")):
        rate = encode_rate(plm, batch, tokens, precision, repeats)
        results[f"encode_seq_per_s_{key}"] = rate
        results[f"encode_gflops_{key}"] = rate * flops / 1e9
    results["encode_gflops"] = results["encode_gflops_bf16"]
    results["matmul_peak_gflops_bf16"] = results["matmul_peak_gflops"]
    results["encode_vs_peak"] = results["encode_gflops_bf16"] / results["matmul_peak_gflops"]
    results["encode_vs_peak_fp32"] = results["encode_gflops_fp32"] / results["matmul_peak_gflops_fp32"]
    student = build_student_encoder(plm, even_layer_map(plm.config.num_hidden_layers, 2))
    student_rate = encode_rate(student, batch, tokens, "bf16", repeats)
    results["student_encode_speedup"] = student_rate / results["encode_seq_per_s_bf16"]
    config = build_config("quick")
    sizes = [128] if quick else [128, 256]
    precisions = ["bf16"] if quick else ["fp32", "bf16"]
    results["train"] = {}
    for size in sizes:
        for precision in precisions:
            results["train"][f"teacher_b{size}_{precision}"] = train_rate(config, size, precision, max(2, repeats - 1))
    results["train"]["student2L_b128_bf16"] = train_rate(config, 128, "bf16", max(2, repeats - 1), layers=2)
    results["train_samples_per_s"] = results["train"]["teacher_b128_bf16"]
    if not quick:
        results["evaluation"] = evaluation_split(model_dir, results["encode_seq_per_s_bf16"])
        results["eval_vs_encode_bound"] = results["evaluation"]["vs_encode_bound"]
    results["peak_rss_mb"] = peak_rss_mb()
    return results


def evaluation_split(model_dir: str | None, encode_rate_bf16: float) -> dict:
    """Full WN18RR test evaluation: time encoding vs ranking, against an encode-only bound at the measured rate."""
    from .api import DataContext, build_model, load_model

    config = build_config("quick")
    if model_dir:
        model, tokenizer, _ = load_model(model_dir)
    else:
        model, tokenizer = build_model(config)
    data = DataContext(config, tokenizer)
    result = data.evaluator(torch.device("cpu")).evaluate(model, "test", progress=False)
    s = result.seconds
    entity_tokens = int(data.evaluator().entity_store().lengths().sum())
    sequences = data.kg.num_entities + 2 * len(data.kg.splits["test"])
    # encode-only bound: the same number of sequences at the measured 50-token rate (padding-free texts are shorter)
    bound = sequences / encode_rate_bf16
    return {"seconds": s, "encode_share": (s["encode_entities"] + s["encode_queries"]) / s["total"],
            "sequences": sequences, "mean_entity_tokens": entity_tokens / data.kg.num_entities,
            "encode_only_bound_s_at_50_tokens": bound, "vs_encode_bound": s["total"] / bound,
            "mrr": result.metrics["no_rerank"]["both"]["mrr"], "peak_rss_mb": peak_rss_mb()}


def append_markdown(results: dict, path: Path, command: str) -> None:
    lines = [f"\n### bench run {time.strftime('%Y-%m-%d %H:%M')} — `{command}`\n",
             f"machine: {results['machine']}\n", "```json", json.dumps(results, indent=1), "```\n"]
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("\n".join(lines))
