"""Valid-MRR curves of several runs on one plot (runs trained with ``train.valid_ranking=true``): how a teacher's
validation MRR levels off, and where the last quarter of its steps lies.

    python bench/plot_valid_curves.py docs/figures/subgraph-teachers.png runs/compression/teacher-lr0.0003 \\
        runs/compression/teacher-lr0.0001

``--compute`` puts the runs on one axis of compute instead of steps: each pipeline stage's steps times its cost in
teacher steps (``stage.json``; a teacher's step costs 1), so students and controls of equal compute end together.
``--include OLD.json`` adds the curves an earlier ``--compute`` figure saved beside it (runs whose folders are gone).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def curve(run_dir: str) -> list[tuple[int, float]]:
    lines = Path(run_dir, "train_log.jsonl").read_text(encoding="utf-8").splitlines()
    return [(r["step"], r["valid_mrr"] * 100) for r in map(json.loads, filter(None, lines)) if "valid_mrr" in r]


def step_cost(run_dir: str) -> float:
    """One step's compute in teacher steps: the pipeline stage's planned cost, 1 for a run outside a pipeline."""
    stage = Path(run_dir, "stage.json")
    return json.loads(stage.read_text(encoding="utf-8"))["stage"]["cost"] if stage.is_file() else 1.0


def label(run_dir: str) -> str:
    """The folder's name, with its parent's for a pipeline stage (the pipeline says which seed or recipe)."""
    path = Path(run_dir)
    return f"{path.parent.name}/{path.name}" if (path / "stage.json").is_file() else path.name


def main(out: str, runs: list[str], compute: bool = False, include: str | None = None) -> None:
    series = {}  # label -> (one step's cost in teacher steps, [(step, valid MRR %)])
    if include:
        if not compute:
            raise SystemExit("--include needs --compute: it reads a --compute figure's data")
        series = {name: (entry["cost_per_step"], [tuple(point) for point in entry["curve"]])
                  for name, entry in json.loads(Path(include).read_text(encoding="utf-8")).items()}
    series.update({label(run): (step_cost(run), curve(run)) for run in runs})
    fig, ax = plt.subplots(figsize=(8, 4.5) if compute else (7, 4))
    if len(series) > 10:  # matplotlib's default cycle repeats after ten colours
        ax.set_prop_cycle(color=plt.cm.tab20.colors)
    for name, (cost, steps) in series.items():
        scale = cost if compute else 1.0
        points = [(step * scale, mrr) for step, mrr in steps]
        ax.plot([s for s, _ in points], [m for _, m in points], "o-", markersize=3, label=name)
        if points and not compute:
            last = points[-1][0]
            ax.axvspan(0.75 * last, last, color="grey", alpha=0.08)
    ax.set_xlabel("compute (teacher-step equivalents)" if compute else "training step")
    ax.set_ylabel("valid MRR (%), filtered, both directions")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("valid MRR against compute" if compute else
                 "valid MRR during training (shaded: last quarter of the steps)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    with open(Path(out).with_suffix(".json"), "w", encoding="utf-8") as handle:
        json.dump({name: {"cost_per_step": cost, "curve": steps} if compute else steps
                   for name, (cost, steps) in series.items()}, handle, indent=1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the figure (.png); its data goes beside it as .json")
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--compute", action="store_true", help="x axis: compute in teacher steps, not steps")
    parser.add_argument("--include", help="also plot the curves an earlier --compute figure saved (its .json)")
    args = parser.parse_args()
    main(args.out, args.runs, args.compute, args.include)
