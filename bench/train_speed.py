"""Training-speed ablation, side by side in one process: each option against the same baseline on the same batches.

    python bench/train_speed.py --steps 8 --batch-size 128 --json-out runs/train-speed.json

Baseline: precision=auto (bf16 autocast only on a CPU with native bf16, else fp32), foreach AdamW, torch's dropout,
self-negatives on, padded batches (``train.packing=false``), no length bucketing, no torch.compile, all threads
(the defaults before packing, fast dropout and fused AdamW; ``default`` is today's defaults together). Each
variant changes one thing; samples/s is the median over ``--steps`` teacher steps after ``--warmup`` steps
(:func:`kgdistill.jobs.bench.train_rate`). For compile, the extra warm-up seconds and the steps needed to earn them
back are given; for bucketing, the epoch's padding waste (fraction of pad tokens) with and without. Bucketed steps
vary in length, so their mean rate (also given) is the one a run sees, and more steps make it steadier. Run it with
nothing else using the CPU; ``--plm``/``--dataset`` point it at other models and KGs (tests use tiny ones).
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

import torch

from kgdistill.api import DataContext
from kgdistill.jobs.bench import machine_info, train_rate
from kgdistill.config import build_config
from kgdistill.data.batching import BatchOrder
from kgdistill.errors import KGDistillError
from kgdistill.models.plm import load_tokenizer, resolve_plm
from kgdistill.runtime import precision_info
from kgdistill.training.trainer import make_adamw

VARIANTS = {  # name -> (what it changes, settings over the baseline)
    "baseline": ("precision auto, foreach AdamW, torch dropout, self-negatives, padded batches (no packing), "
                 "no bucketing, no compile, all threads", {}),
    "default": ("the defaults: packing, fast dropout and fused AdamW together",
                {"packing": True, "fast_dropout": True, "fused": True}),
    "packing": ("train.packing=true: padding-free rows, block-diagonal attention", {"packing": True}),
    "packing+fast-dropout": ("packing and train.fast_dropout=true", {"packing": True, "fast_dropout": True}),
    "fast-dropout": ("train.fast_dropout=true: dropout masks from 16 random bits an element", {"fast_dropout": True}),
    "packing-fp32": ("train.packing=true with train.precision=fp32", {"packing": True, "precision": "fp32"}),
    "fp32": ("train.precision=fp32 (no autocast)", {"precision": "fp32"}),
    "bf16": ("train.precision=bf16 (autocast, emulated where the CPU has no native bf16)", {"precision": "bf16"}),
    "bucketing": ("train.length_bucketing=true", {"bucketing": True}),
    "no-self-negatives": ("loss.self_negative=false: the head-alone text is not encoded", {"self_negative": False}),
    "fused-adamw": ("fused AdamW instead of foreach", {"fused": True}),
    "compile": ("train.compile=true", {"compile": True}),
    "1-thread": ("torch.set_num_threads(1)", {"threads": 1}),
}


def fused_adamw_on_cpu() -> bool:
    """Whether the trainer's optimiser (``make_adamw``) gets a fused AdamW kernel for CPU tensors."""
    return bool(make_adamw([torch.nn.Parameter(torch.zeros(2))], 1e-3, 0.0, fused=True).defaults.get("fused"))


def measure(base, data: DataContext, settings: dict, args) -> dict:
    """One variant: its samples/s and every step's seconds (warm-up first)."""
    config = copy.deepcopy(base)
    config.train.length_bucketing = settings.get("bucketing", False)
    config.train.packing = settings.get("packing", False)
    config.train.compile = settings.get("compile", False)
    config.train.fast_dropout = settings.get("fast_dropout", False)
    config.train.fused_optimizer = settings.get("fused", False)
    config.loss.self_negative = settings.get("self_negative", True)
    torch.set_num_threads(settings.get("threads", args.threads))
    torch.manual_seed(0)
    times: list[float] = []
    try:
        rate = train_rate(config, args.batch_size, settings.get("precision", "auto"), args.steps, data=data,
                          warmup=args.warmup, times=times)
    finally:
        torch.set_num_threads(args.threads)
    measured = times[args.warmup:]
    return {"samples_per_s": rate, "samples_per_s_mean": args.batch_size * len(measured) / sum(measured),
            "step_s": statistics.median(measured), "times": times}


def padding(base, data: DataContext, args) -> dict:
    """Padding waste over one whole epoch and over the measured steps, without and with bucketing."""
    examples = data.train_set()
    out = {}
    for name, bucketing in (("off", False), ("on", True)):
        config = copy.deepcopy(base)
        config.train.batch_size, config.train.length_bucketing = args.batch_size, bucketing
        order = BatchOrder.for_training(examples, config.train, config.seed)
        out[name] = {"epoch": examples.padding_waste(order.epoch(0), with_heads=True),
                     "measured": examples.padding_waste(order.epoch(0)[:args.warmup + args.steps], with_heads=True)}
    return out


def notes(name: str, result: dict, waste: dict) -> str:
    if "error" in result:
        return result["error"]
    if name == "bucketing":
        return (f"padding waste {waste['off']['epoch']:.0%} -> {waste['on']['epoch']:.0%} over an epoch "
                f"({waste['off']['measured']:.0%} -> {waste['on']['measured']:.0%} in the measured batches)")
    if name == "compile":
        if result["break_even_steps"] is None:
            return f"compile and warm-up +{result['compile_overhead_s']:.0f} s; no faster per step: never pays"
        return (f"compile and warm-up +{result['compile_overhead_s']:.0f} s; pays after "
                f"{result['break_even_steps']:.0f} steps")
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="measured steps per variant (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="steps before measuring (compilation happens here)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads of every variant "
                        "but 1-thread (default: torch's, all cores)")
    parser.add_argument("--plm", default="default", help="PLM folder (default: the packaged MiniLM)")
    parser.add_argument("--dataset", default="wn18rr", help="dataset name or KG folder")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of: "
                        + ", ".join(VARIANTS))
    parser.add_argument("--json-out", type=Path, required=True)
    args = parser.parse_args()
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown} (known: {', '.join(VARIANTS)})")
    if "baseline" not in names:
        names.insert(0, "baseline")

    torch.set_num_threads(args.threads)
    base = build_config("quick", overrides={"data": {"dataset": args.dataset}, "model": {"plm": args.plm}})
    data = DataContext(base, load_tokenizer(resolve_plm(args.plm)))
    waste = padding(base, data, args)
    fused_ok = fused_adamw_on_cpu()
    results: dict[str, dict] = {}
    for name in names:
        settings = VARIANTS[name][1]
        if settings.get("fused") and not fused_ok:
            results[name] = {"error": f"fused AdamW is not supported on CPU by torch {torch.__version__}"}
            continue
        print(f"[{name}] {VARIANTS[name][0]}", flush=True)
        try:
            results[name] = measure(base, data, settings, args)
        except KGDistillError as exc:  # train.compile on a machine that cannot compile
            results[name] = {"error": str(exc)}
    baseline = results["baseline"]
    for name, result in results.items():
        if "error" in result:
            continue
        result["vs_baseline"] = result["samples_per_s"] / baseline["samples_per_s"]
        if name == "compile":
            overhead = sum(result["times"][:args.warmup]) - sum(baseline["times"][:args.warmup])
            gain = baseline["step_s"] - result["step_s"]
            result["compile_overhead_s"] = overhead
            result["break_even_steps"] = max(overhead, 0.0) / gain if gain > 0 else None

    rows = ["| variant | samples/s | vs baseline | mean samples/s | median step s | notes |", "|---" * 6 + "|"]
    for name, result in results.items():
        if "error" in result:
            rows.append(f"| {name} | - | - | - | - | {notes(name, result, waste)} |")
        else:
            rows.append(f"| {name} | {result['samples_per_s']:.1f} | {result['vs_baseline']:.2f}x | "
                        f"{result['samples_per_s_mean']:.1f} | {result['step_s']:.3f} | {notes(name, result, waste)} |")
    table = "\n".join(rows)
    print(f"\nbatch {args.batch_size}, {args.steps} steps after {args.warmup} warm-up, {args.threads} threads, "
          f"plm {args.plm}, dataset {args.dataset}\n\n{table}")
    report = {"machine": {**machine_info(), "threads": args.threads,
                          "auto_precision": precision_info("auto", "cpu")["chosen"]},
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "variants": {name: {"changes": VARIANTS[name][0], **result} for name, result in results.items()},
              "padding_waste": waste, "fused_adamw_on_cpu": fused_ok, "table": table}
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
