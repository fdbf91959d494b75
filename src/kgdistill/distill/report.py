"""The ladder's report: one row per model, as JSON, Markdown and a plot of MRR against size and speed."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text


def _row(name: str, run_dir: Path) -> dict:
    from ..api import resolve_model_dir

    model_dir = resolve_model_dir(run_dir)
    meta = json.loads((model_dir / "model.json").read_text(encoding="utf-8"))
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    seconds = metrics.get("seconds", {})
    row = {
        "name": name, "run_dir": str(run_dir), "layers": meta["num_layers"],
        "parameters": meta["parameters"]["total"], "non_embedding_parameters": meta["parameters"]["non_embedding"],
        "size_mb": round((model_dir / "model.safetensors").stat().st_size / 2**20, 1),
        "entities_per_s": (metrics["num_entities"] / seconds["encode_entities"]) if seconds.get("encode_entities") else None,
        "encode_seconds": seconds.get("encode_entities"),
        "mask_rate": meta.get("info", {}).get("mask_rate"),
        "ablation": meta.get("info", {}).get("ablation", "none"),
    }
    for variant in ("no_rerank", "rerank"):
        if variant in metrics:
            both = metrics[variant]["both"]
            row[variant] = {k: both[k] for k in ("mrr", "hits@1", "hits@3", "hits@10", "mr")}
    return row


@dataclass
class Report:
    rows: list[dict]

    def markdown(self) -> str:
        teacher = self.rows[0]
        lines = ["| model | layers | params (M) | non-emb (M) | size (MB) | entities/s | MRR | H@1 | H@3 | H@10 | "
                 "MRR rerank | H@10 rerank | dMRR vs teacher |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            m, rr = r["no_rerank"], r.get("rerank", r["no_rerank"])
            delta = (m["mrr"] - teacher["no_rerank"]["mrr"]) * 100
            eps = f"{r['entities_per_s']:.0f}" if r["entities_per_s"] else "-"
            lines.append(f"| {r['name']} | {r['layers']} | {r['parameters'] / 1e6:.1f} | "
                         f"{r['non_embedding_parameters'] / 1e6:.1f} | {r['size_mb']} | {eps} | {m['mrr'] * 100:.2f} | "
                         f"{m['hits@1'] * 100:.2f} | {m['hits@3'] * 100:.2f} | {m['hits@10'] * 100:.2f} | "
                         f"{rr['mrr'] * 100:.2f} | {rr['hits@10'] * 100:.2f} | {delta:+.2f} |")
        return "\n".join(lines)

    def plot(self) -> bytes:
        import io

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        mrr = [r["no_rerank"]["mrr"] * 100 for r in self.rows]
        params = [r["parameters"] / 1e6 for r in self.rows]
        times = [r["encode_seconds"] or 0 for r in self.rows]
        for ax, xs, label in ((axes[0], params, "parameters (M, both encoders)"),
                              (axes[1], times, "time to encode all entities (s)")):
            ax.plot(xs, mrr, "o-")
            for x, y, r in zip(xs, mrr, self.rows):
                ax.annotate(f"{r['name'].split('-', 1)[-1]}", (x, y), textcoords="offset points", xytext=(4, 4),
                            fontsize=8)
            ax.set_xlabel(label)
            ax.set_ylabel("MRR (%), filtered, no re-rank")
            ax.grid(alpha=0.3)
        fig.suptitle("PMD ladder: quality against size and speed")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        return buffer.getvalue()

    def save(self, folder: Path) -> None:
        atomic_write_json(folder / "report.json", {"rows": self.rows})
        atomic_write_text(folder / "report.md", self.markdown() + "\n")
        atomic_write_bytes(folder / "report.png", self.plot())


def build_report(stages: list[tuple[str, Path]]) -> Report:
    return Report([_row(name, Path(run_dir)) for name, run_dir in stages])
