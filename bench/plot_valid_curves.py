"""Valid-MRR curves of several runs on one plot (runs trained with ``train.valid_ranking=true``): how a teacher's
validation MRR levels off, and where the last quarter of its steps lies.

    python bench/plot_valid_curves.py docs/figures/subgraph-teachers.png runs/compression/teacher-lr0.0003 \\
        runs/compression/teacher-lr0.0001
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def curve(run_dir: str) -> list[tuple[int, float]]:
    lines = Path(run_dir, "train_log.jsonl").read_text(encoding="utf-8").splitlines()
    return [(r["step"], r["valid_mrr"] * 100) for r in map(json.loads, filter(None, lines)) if "valid_mrr" in r]


def main(out: str, runs: list[str]) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        points = curve(run)
        ax.plot([s for s, _ in points], [m for _, m in points], "o-", label=Path(run).name)
        if points:
            last = points[-1][0]
            ax.axvspan(0.75 * last, last, color="grey", alpha=0.08)
    ax.set_xlabel("training step")
    ax.set_ylabel("valid MRR (%), filtered, both directions")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("valid MRR during training (shaded: last quarter of the steps)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    with open(Path(out).with_suffix(".json"), "w", encoding="utf-8") as handle:
        json.dump({run: curve(run) for run in runs}, handle, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
