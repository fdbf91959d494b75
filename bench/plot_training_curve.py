"""Plot a run's training curve (loss, 1/tau, validation accuracy) from its train_log.jsonl."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(run_dir: str, out: str) -> None:
    records = [json.loads(line) for line in Path(run_dir, "train_log.jsonl").read_text().splitlines() if line]
    train = [r for r in records if "loss" in r]
    valid = [r for r in records if "valid_loss" in r]
    fig, ax = plt.subplots(1, 3, figsize=(14, 3.6))
    ax[0].plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss (InfoNCE, both terms)")
    if valid:
        ax[0].plot([r["step"] for r in valid], [r["valid_loss"] for r in valid], "o", label="valid loss")
    ax[0].set_xlabel("step")
    ax[0].legend()
    ax[0].grid(alpha=0.3)
    ax[1].plot([r["step"] for r in train], [r["samples_per_s"] for r in train], label="samples/s")
    ax[1].set_xlabel("step")
    ax[1].legend()
    ax[1].grid(alpha=0.3)
    if valid and "valid_acc@1" in valid[0]:
        ax[2].plot([r["step"] for r in valid], [r["valid_acc@1"] for r in valid], "o-",
                   label="valid in-batch accuracy@1")
    ax[2].set_xlabel("step")
    ax[2].legend()
    ax[2].grid(alpha=0.3)
    fig.suptitle(f"training curve: {run_dir}")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
