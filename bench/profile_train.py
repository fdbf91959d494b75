"""Where a teacher training step spends its time: torch.profiler over a few real WN18RR steps, grouped by kind.

    python bench/profile_train.py --steps 3 --batch-size 128 [--precision auto] [key=value ...] --json-out runs/profile.json
    python bench/profile_train.py --teacher runs/teacher --mask-rate 0.2 --json-out runs/profile-pmd.json  # a PMD step

Groups (self CPU time of each operator, summed): matmuls (linear/addmm/bmm/matmul), attention (softmax and
scaled-dot-product kernels), norms/activations (layer_norm, gelu, dropout), element-wise and copies, optimiser
(AdamW's kernels), data (batch drawing and padding, outside the model) and the rest. Run it with nothing else
on the CPU.
"""
from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

from torch.profiler import ProfilerActivity, profile, record_function

from kgdistill.api import DataContext, build_model
from kgdistill.store.saved import load_teacher
from kgdistill.jobs.bench import machine_info
from kgdistill.config import build_config, parse_overrides
from kgdistill.training.distillation import DistillationObjective
from kgdistill.losses.contrastive import InfoNCELoss
from kgdistill.runtime import resolve_precision
from kgdistill.training.objectives import ContrastiveObjective
from kgdistill.training.trainer import Trainer

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


def build_objective(config, teacher: str | None, mask_rate: float, layers: int | None):
    """The objective a run would train: SimKGC's for a teacher, or one PMD stage from a trained ``teacher``."""
    if teacher is None:
        model, tokenizer = build_model(config)
        data = DataContext(config, tokenizer)
        return ContrastiveObjective(model, InfoNCELoss(model, config.loss, data.known_train,
                                                       config.train.batch_size)), data, tokenizer
    teacher_model, tokenizer, _ = load_teacher(teacher)
    config.model.num_layers = layers or teacher_model.num_layers
    student, tokenizer = build_model(config, teacher=teacher_model)
    data = DataContext(config, tokenizer)
    loss = InfoNCELoss(student, config.loss, data.known_train, config.train.batch_size)
    return DistillationObjective(student, teacher_model, loss, config.distill, mask_rate,
                                 tokenizer.mask_token_id), data, tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--teacher", help="a trained run: profile a PMD distillation step from it instead")
    parser.add_argument("--layers", type=int, help="student depth with --teacher (default: the teacher's)")
    parser.add_argument("--mask-rate", type=float, default=0.2, help="MGFD mask rate with --teacher")
    parser.add_argument("--json-out", type=Path, required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    config = build_config("quick", overrides=parse_overrides(args.overrides))
    config.train.batch_size, config.train.precision, config.train.device = args.batch_size, args.precision, "cpu"
    precision = resolve_precision(args.precision, "cpu")
    objective, data, tokenizer = build_objective(config, args.teacher, args.mask_rate, args.layers)
    examples = data.train_set()
    # the trainer's own step: precision, packing, fast dropout and the optimiser exactly as a run has them
    trainer = Trainer(tempfile.gettempdir(), config, objective, examples, None, tokenizer, progress=False)
    objective.train()
    counter = itertools.count()

    def step() -> None:
        with record_function("data"):
            batch = trainer.batch(next(counter))
        trainer.train_step(batch)

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
        if event.key.startswith("ProfilerStep"):
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
              "fast_dropout": config.train.fast_dropout, "teacher": args.teacher, "mask_rate": args.mask_rate,
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
