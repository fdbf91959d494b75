"""Where a teacher training step spends its time: torch.profiler over a few real WN18RR steps, grouped by kind.

    python bench/profile_train.py --steps 3 --batch-size 128 [--precision auto] [key=value ...] --json-out runs/profile.json

Groups (self CPU time of each operator, summed): matmuls (linear/addmm/bmm/matmul), attention (softmax and
scaled-dot-product kernels), norms/activations (layer_norm, gelu, dropout), element-wise and copies, optimiser
(AdamW's foreach kernels), data (batch drawing and padding, outside the model) and the rest. Run it with nothing else
on the CPU.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from kgdistill.api import DataContext, build_model
from kgdistill.benchmark import machine_info
from kgdistill.config import build_config, parse_overrides
from kgdistill.data.batching import BatchOrder
from kgdistill.losses.contrastive import InfoNCELoss
from kgdistill.runtime import autocast, resolve_precision
from kgdistill.training.objectives import ContrastiveObjective

GROUPS = (  # (group, substrings of operator names), first match wins
    ("matmuls", ("addmm", "mm", "bmm", "matmul", "linear")),
    ("attention", ("softmax", "scaled_dot_product", "flash_attention", "_efficient_attention")),
    ("norms/activations", ("layer_norm", "gelu", "dropout", "tanh")),
    ("optimiser", ("_foreach", "adam", "lerp", "addcdiv", "addcmul")),
    ("embeddings", ("embedding",)),
    ("element-wise/copies", ("add", "mul", "div", "sub", "copy_", "to", "clone", "cat", "masked_fill", "where",
                             "contiguous", "fill_", "zero_", "sum", "mean", "norm", "exp", "pow", "sqrt", "index")),
)


def group_of(name: str) -> str:
    lowered = name.lower()
    for group, keys in GROUPS:
        if any(key in lowered for key in keys):
            return group
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--json-out", type=Path, required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    config = build_config("quick", overrides=parse_overrides(args.overrides))
    config.train.batch_size = args.batch_size
    precision = resolve_precision(args.precision, "cpu")
    model, tokenizer = build_model(config)
    model.packing = config.train.packing  # as the trainer sets it
    data = DataContext(config, tokenizer)
    objective = ContrastiveObjective(model, InfoNCELoss(model, config.loss, data.known_train, args.batch_size)).train()
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=1e-5, foreach=True)
    examples = data.train_set()
    order = BatchOrder.for_training(examples, config.train, config.seed)
    counter = itertools.count()

    def step() -> None:
        with record_function("data"):
            batch = examples.batch(order.rows(next(counter)), with_heads=objective.needs_heads)
        with autocast(torch.device("cpu"), precision):
            loss, _ = objective(batch)
        optimizer.zero_grad()
        loss.backward()
        with record_function("optimiser_step"):
            optimizer.step()

    step()  # warm-up
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    wall = time.perf_counter() - t0
    totals: dict[str, float] = {}
    data_us = 0.0
    for event in prof.key_averages():
        if event.key == "data":
            data_us = event.cpu_time_total
            continue
        if event.key == "optimiser_step" or event.key.startswith("ProfilerStep"):
            continue
        totals[group_of(event.key)] = totals.get(group_of(event.key), 0.0) + event.self_cpu_time_total
    # data work is mostly Python (tokens are cached); its own ops were counted above under their kinds
    self_total = sum(totals.values())
    rows = sorted(totals.items(), key=lambda kv: -kv[1])
    table = ["| group | self CPU s / step | share |", "|---|---|---|"]
    for group, us in rows:
        table.append(f"| {group} | {us / 1e6 / args.steps:.3f} | {us / self_total:.0%} |")
    table.append(f"| data (batch drawing, inclusive) | {data_us / 1e6 / args.steps:.3f} | - |")
    top = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    result = {"machine": machine_info(), "precision": precision, "packing": config.train.packing,
              "batch_size": args.batch_size, "steps": args.steps,
              "wall_s_per_step": wall / args.steps, "samples_per_s_under_profiler": args.batch_size * args.steps / wall,
              "groups_s_per_step": {g: us / 1e6 / args.steps for g, us in rows},
              "data_s_per_step": data_us / 1e6 / args.steps, "table": "\n".join(table), "top_ops": top}
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(f"{precision}, packing {config.train.packing}, batch {args.batch_size}, {wall / args.steps:.2f} s/step "
          "under the profiler\n")
    print("\n".join(table))
    print(top)


if __name__ == "__main__":
    main()
