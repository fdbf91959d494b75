"""The plan's cost of a distillation stage against its measured step time, side by side with the teacher's step.

    python bench/stage_cost.py --teacher runs/sub2k/teacher-960-lr1e-4 --rounds 20 --json-out runs/stage-cost.json \
        --variant "2L=" --variant "query=distill.student_side=query" \
        --variant "query+transfer128=distill.student_side=query distill.transfer_queries=128"
    python bench/stage_cost.py --teacher runs/sub2k/teacher-960-lr1e-4 --preset quick-ladder --all-stages \
        --json-out runs/ladder-cost.json --variant "ladder='distill.controls=[]' distill.serving_grade=false"

The pipeline plans every stage's steps from its cost in teacher training steps (``pmd.plan.step_cost``: encoder layer
passes), so "the distillation within the teacher's own training time" holds only as far as that cost model does. Each
``--variant NAME=OVERRIDES`` is a pipeline config (``--preset``, default ``quick``, plus the overrides, with
``--teacher``) whose first distillation stage is timed (``--all-stages``: every stage, a ladder's later grades taught
by the grade above it at that grade's depth, and each variant's whole distillation against the teacher's time). One
round takes one step of the teacher's own training (its saved config, a fresh model, as ``kgdistill train`` runs it)
and one of each variant's stage (as ``kgdistill distill`` runs it), in a rotating order, so drift of the machine's
speed hits all alike; the medians over ``--rounds`` rounds after ``--warmup`` give the measured cost (stage step /
teacher step) beside the planned one, and the stage's planned steps times its step beside the teacher's. Run it with
nothing else on the CPU.
"""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from kgdistill.jobs.bench import stage_costs


def table(result: dict) -> str:
    """The rows as a Markdown table; wall times are planned steps times the measured median step."""
    rows = result["rows"]
    lines = ["| stage | layers | steps | planned cost | measured cost (95 % interval) | round ratios, quartiles | "
             "measured / planned | s/step | steps x s/step | of the teacher's |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        quartiles, interval = r.get("round_ratio_quartiles"), r.get("measured_cost_interval")
        spread = f"{quartiles[0]:.3f} / {quartiles[1]:.3f} / {quartiles[2]:.3f}" if quartiles else "-"
        bounds = f" ({interval[0]:.3f}-{interval[1]:.3f})" if interval else ""
        lines.append(f"| {r['name']} | {r['layers']} | {r['steps']} | {r['planned_cost']:.3f} | "
                     f"{r['measured_cost']:.3f}{bounds} | {spread} | {r['measured_cost'] / r['planned_cost']:.2f} | "
                     f"{r['s_per_step']:.3f} | {r['wall_s']:.0f} | {r['wall_s'] / rows[0]['wall_s']:.0%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="a trained teacher run (its saved config is timed too)")
    parser.add_argument("--variant", action="append", required=True, metavar="NAME=OVERRIDES",
                        help="a pipeline config: the preset plus key=value overrides, split as a shell splits them")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json-out", type=Path, required=True)
    parser.add_argument("--all-stages", action="store_true", help="time every stage of each plan, not only the first")
    parser.add_argument("--preset", default="quick", help="the variants' preset (quick-ladder: PMD's ladder)")
    args = parser.parse_args()
    variants = {name: shlex.split(overrides) for name, _, overrides in (v.partition("=") for v in args.variant)}
    result = stage_costs(args.teacher, variants, args.rounds, args.warmup, args.preset, progress=True,
                         all_stages=args.all_stages)
    result["table"] = table(result)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(f"{result['machine']['cpu']}, {result['machine']['threads']} threads, {args.rounds} rounds")
    print(result["table"])
    for name, share in result["totals"].items():
        print(f"{name}: the distillation's planned steps x measured s/step = {share:.0%} of the teacher's")


if __name__ == "__main__":
    main()
