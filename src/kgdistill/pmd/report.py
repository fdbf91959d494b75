"""The ladder's report: one row per model, as JSON, Markdown and a plot of MRR against size and speed."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import RunConfig, control_parts
from ..errors import KGDistillError
from ..evaluation.compare import compare
from ..evaluation.ranking import EVALUATION_KEYS, evaluation_mismatch
from ..runfolder import RunFolder
from ..store.saved import chosen_checkpoint, load_run_config, read_run_files, resolve_model_dir, run_dir_of
from ..results import Result, figure_png
from ..training.distillation import stage_terms
from .plan import CONTROL_KINDS, STUDENT_KINDS


# A student above this share of its teacher's MRR points at an unfinished (or overfitted) teacher (issue 18).
ABOVE_TEACHER = 1.02
# What the report tells a user whose teacher is unfinished or past its best.
FIX_TEACHER = "train it longer, or early-stop it with eval.checkpoint=best"


def _row(name: str, run_dir: Path, kind: str = "pmd") -> dict:
    files = read_run_files(run_dir)
    meta, metrics, info = files.meta, files.metrics, files.info
    row = {
        "name": name, "kind": kind, "run_dir": str(run_dir), "layers": meta["num_layers"],
        "entity_layers": meta["tail_config"]["num_hidden_layers"], "student_side": info.get("student_side", "both"),
        "parameters": meta["parameters"]["total"], "non_embedding_parameters": meta["parameters"]["non_embedding"],
        "size_mb": files.size_mb, "entities_per_s": files.entities_per_s, "queries_per_s": files.queries_per_s,
        "encode_seconds": (metrics.get("seconds") or {}).get("encode_entities"),
        "mask_rate": info.get("mask_rate"), "ablation": info.get("ablation", "none"),
        "initialised_from": info.get("initialised_from"), "layer_map": info.get("layer_map"),
        "steps": files.summary.get("steps"), "train_seconds": files.summary.get("seconds"),
    }
    for variant in ("no_rerank", "rerank"):
        if variant in metrics:
            both = metrics[variant]["both"]
            row[variant] = {k: both[k] for k in ("mrr", "hits@1", "hits@3", "hits@10", "mr")}
    row["evaluation"] = {key: metrics.get(key) for key in EVALUATION_KEYS}
    row["objective"] = objective_of(run_dir, kind)
    return row


def objective_of(run_dir: Path, kind: str) -> str:
    """What a row was trained with, by name: the teacher's and the controls' InfoNCE, or a student's weighted
    distillation terms (so a student without MGFD is not taken for PMD's full objective)."""
    if kind == "teacher" or kind in CONTROL_KINDS:
        return "ce"
    config = load_run_config(resolve_model_dir(run_dir))
    if config is None:
        return "?"
    d = config.distill
    return " + ".join(f"{weight:g} {name}" for name, weight in stage_terms(d, d.mask_rate or 0.0)[1])




def check_comparable(rows: list[dict]) -> None:
    """Refuse a report whose rows were not evaluated as the teacher was: a "% of teacher" across different splits,
    candidate sets, filters, tie policies or re-ranking would compare nothing."""
    reference = rows[0]["evaluation"]
    for row in rows[1:]:
        key = evaluation_mismatch(reference, row["evaluation"])
        if key is not None:
            raise KGDistillError(f"report row '{row['name']}' ({row['run_dir']}): evaluated with {key} "
                                 f"{row['evaluation'][key]!r} but the teacher with {reference[key]!r}; "
                                 f"re-evaluate it alike (kgdistill evaluate --split ...)")


def teacher_status(path: Path, window: float = 0.25, tolerance: float = 0.005) -> dict:
    """Whether the teacher finished learning, from its own valid-MRR curve (``train.valid_ranking``): converged when
    valid MRR moved less than ``tolerance`` over the last ``window`` of its steps; past its best when the model
    scored (its last checkpoint) is ``tolerance`` or more below the curve's best, i.e. it overfits; early-stopped
    when the model scored is its best valid checkpoint (``checkpoint-best``, or a run with ``eval.checkpoint=best``).
    ``path`` is a run folder or one of its checkpoints."""
    path = Path(path)
    run_dir = run_dir_of(path)
    if path.name == RunFolder.BEST:
        checkpoint = "best"
    elif path == run_dir:  # a run folder (or a bare model folder): the checkpoint its own metrics scored
        checkpoint = chosen_checkpoint(run_dir, RunConfig())
    else:
        checkpoint = "last"
    log_path = run_dir / RunFolder.LOG
    curve = []
    if log_path.is_file():
        for line in log_path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line) if line.strip() else {}
            if "valid_mrr" in record:
                curve.append((record["step"], record["valid_mrr"]))
    if len(curve) < 2:
        return {"run_dir": str(path), "status": "unknown (no valid-MRR curve: train with train.valid_ranking=true)"}
    last_step, last_mrr = curve[-1]
    best_step, best_mrr = max(curve, key=lambda point: (point[1], -point[0]))  # the earliest of equal bests
    tail = [mrr for step, mrr in curve if step >= last_step * (1 - window)]
    moved = max(tail) - min(tail)
    if checkpoint == "best":
        status = "early-stopped"
    elif best_mrr - last_mrr >= tolerance:
        status = "past its best"
    else:
        status = "converged" if moved < tolerance else "not converged"
    return {"run_dir": str(path), "status": status, "steps": last_step,
            "valid_mrr": best_mrr if checkpoint == "best" else last_mrr, "valid_mrr_range_last_quarter": moved,
            "best_valid_mrr": best_mrr, "best_step": best_step}


def teacher_state(status: dict) -> str:
    """:func:`teacher_status` in words: whether the teacher converged, and how far its valid MRR moved."""
    if "valid_mrr_range_last_quarter" not in status:
        return status.get("status", "unknown")
    if status["status"] in ("early-stopped", "past its best"):  # reports saved before these had no best_* keys
        best = f"{status['best_valid_mrr'] * 100:.2f} at step {status['best_step']}"
        if status["status"] == "early-stopped":
            return f"early-stopped: scored at its best valid MRR, {best} of its {status['steps']} steps"
        return (f"past its best: valid MRR {status['valid_mrr'] * 100:.2f} at its last step {status['steps']} against "
                f"{best}; train it with eval.checkpoint=best to distil from its best")
    return (f"{status['status']}: valid MRR moved {status['valid_mrr_range_last_quarter'] * 100:.2f} over the last "
            f"quarter of its {status['steps']} steps")


def _gap_interval(student_dir: str | None, control_dir: str | None) -> list[float] | None:
    """The 95 % paired-bootstrap interval of student minus control MRR (:func:`~kgdistill.evaluation.compare.compare`);
    None for rows without a folder or evaluations saved without per-query ranks."""
    if student_dir is None or control_dir is None:
        return None
    try:
        mrr = compare(student_dir, control_dir, resamples=2000).metrics["mrr"]
    except KGDistillError:
        return None
    return [mrr["low"], mrr["high"]]


@dataclass
class Report(Result):
    """What ``pipeline`` returns: one row per model of the ladder (the teacher first) with its size, speed and
    metrics; ``table()`` is the Markdown table of ``report.md``."""

    rows: list[dict]
    teacher: dict = field(default_factory=dict)  # which teacher "% of teacher" refers to, and whether it converged
    _gaps: list[dict] | None = field(default=None, init=False, repr=False, compare=False)  # bootstrapped once

    def to_dict(self) -> dict:
        """What ``report.json`` holds."""
        return {"teacher": self.teacher, "rows": self.rows, "control_gaps": self.control_gaps(),
                "students_above_teacher": self.students_above_teacher(),
                "controls_above_teacher": self.controls_above_teacher()}

    def students_above_teacher(self, ratio: float = ABOVE_TEACHER) -> list[str]:
        """The distilled students scoring above ``ratio`` times their teacher's MRR: the sign of a teacher that has
        not finished learning (or is past its best), not of a good student (issue 18's 102 % rule)."""
        return self._above_teacher(STUDENT_KINDS, ratio)

    def controls_above_teacher(self, ratio: float = ABOVE_TEACHER) -> list[str]:
        """The controls (trained without the teacher) scoring above ``ratio`` times its MRR: the same sign, shown
        even when every student stays under the teacher by inheriting its decline (BENCHMARKS.md §7aa)."""
        return self._above_teacher(CONTROL_KINDS, ratio)

    def _above_teacher(self, kinds: tuple[str, ...], ratio: float) -> list[str]:
        reference = self.rows[0]["no_rerank"]["mrr"]
        return [r["name"] for r in self.rows[1:]
                if r.get("kind") in kinds and r["no_rerank"]["mrr"] > ratio * reference]

    def control_gaps(self) -> list[dict]:
        """Each distilled student's MRR minus its controls' (``distill.controls``), at equal compute or equal steps:
        what the teacher added over training without it (negative: the control is ahead)."""
        if self._gaps is None:
            self._gaps = self._compute_gaps()
        return self._gaps

    def _compute_gaps(self) -> list[dict]:
        students = [r for r in self.rows if r.get("kind") == "pmd"]
        gaps = []
        for control in (r for r in self.rows if r.get("kind") in CONTROL_KINDS):
            student = next((s for s in students if control["name"].startswith(s["name"] + "-")), None)
            if student is not None:
                variant = control_parts(control["name"][len(student["name"]) + 1:])[1]
                gaps.append({"student": student["name"], "control": control["name"], "kind": control["kind"],
                             "equal": "steps" if variant == "steps" else "compute",
                             "checkpoint": "best valid" if variant == "best" else "last",
                             "mrr_gap": student["no_rerank"]["mrr"] - control["no_rerank"]["mrr"],
                             "mrr_gap_interval": _gap_interval(student.get("run_dir"), control.get("run_dir"))})
        return gaps

    def to_df(self):
        """The rows as a pandas DataFrame, one per model, nested fields flattened (``no_rerank.mrr``); needs pandas."""
        import pandas as pd

        return pd.json_normalize(self.rows)

    def table(self) -> str:
        return self.markdown()

    def markdown(self) -> str:
        """The rows as a Markdown table, MRR and Hits in %, with the change against the teacher."""
        teacher = self.rows[0]
        lines = [self.teacher_line(), ""] if self.teacher else []
        lines += ["| model | kind | objective | layers (query/entity) | steps | train s | params (M) | non-emb (M) | size (MB) | "
                 "entities/s | queries/s | MRR | H@1 | H@3 | H@10 | MRR rerank | H@10 rerank | dMRR vs teacher | "
                 "% of teacher |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            m, rr = r["no_rerank"], r.get("rerank", r["no_rerank"])
            delta = (m["mrr"] - teacher["no_rerank"]["mrr"]) * 100
            eps = f"{r['entities_per_s']:.0f}" if r["entities_per_s"] else "-"
            qps = f"{r['queries_per_s']:.0f}" if r.get("queries_per_s") else "-"
            secs = f"{r['train_seconds']:.0f}" if r.get("train_seconds") else "-"
            lines.append(f"| {r['name']} | {r.get('kind', 'pmd')} | {r.get('objective', '?')} | {r['layers']}/{r.get('entity_layers', r['layers'])} | "
                         f"{r.get('steps') or '-'} | {secs} | {r['parameters'] / 1e6:.1f} | "
                         f"{r['non_embedding_parameters'] / 1e6:.1f} | {r['size_mb']} | {eps} | {qps} | {m['mrr'] * 100:.2f} | "
                         f"{m['hits@1'] * 100:.2f} | {m['hits@3'] * 100:.2f} | {m['hits@10'] * 100:.2f} | "
                         f"{rr['mrr'] * 100:.2f} | {rr['hits@10'] * 100:.2f} | {delta:+.2f} | "
                         f"{100 * m['mrr'] / teacher['no_rerank']['mrr']:.1f} |")
        for gap in self.control_gaps():
            verdict = ("the student is ahead" if gap["mrr_gap"] >= 0.01 else
                       "the control is ahead (an unfinished teacher?)" if gap["mrr_gap"] <= -0.01 else
                       "within 1 MRR: compare the seed spread")
            interval = gap.get("mrr_gap_interval")
            sampling = (f" (95 % paired-bootstrap interval over the split's triples {interval[0] * 100:+.2f} to "
                        f"{interval[1] * 100:+.2f}: evaluation noise, not seed spread)" if interval else "")
            at_best = ", at its best valid checkpoint" if gap.get("checkpoint") == "best valid" else ""
            lines.append(f"\n{gap['student']} against its {gap['kind']} control at equal {gap['equal']}{at_best} "
                         f"({gap['control']}): {gap['mrr_gap'] * 100:+.2f} MRR{sampling}; {verdict}.")
        above = self.students_above_teacher()
        if above:
            lines.append(f"\nAbove {ABOVE_TEACHER * 100:.0f} % of the teacher: {', '.join(above)}. A student that "
                         f"beats its teacher says the teacher is unfinished or past its best: fix the teacher "
                         f"({FIX_TEACHER}) before reading % of teacher.")
        controls = self.controls_above_teacher()
        if controls:
            lines.append(f"\nControls above {ABOVE_TEACHER * 100:.0f} % of the teacher without it: "
                         f"{', '.join(controls)}. "
                         f"Its own layers trained without it beat it, so the teacher is unfinished or past its best: "
                         f"read % of teacher from a finished teacher ({FIX_TEACHER}).")
        return "\n".join(lines)

    def teacher_line(self) -> str:
        """The sentence above the table: what "% of teacher" is a percentage of."""
        t, evaluation = self.teacher, self.rows[0]["evaluation"]
        at = f" at {evaluation['precision']}" if evaluation.get("precision") else ""
        return (f"% of teacher: of `{t['run_dir']}` ({teacher_state(t)}); every row evaluated alike on "
                f"{evaluation['split']}{at}.")

    def plot(self) -> bytes:
        """PNG: MRR against parameters and against entity encoding speed, per kind of stage."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        styles = {"teacher": ("*", "k"), "pmd": ("o", "tab:blue"), "direct": ("s", "tab:orange"),
                  "plm": ("^", "tab:red"), "query": ("D", "tab:green")}
        for kind, (marker, colour) in styles.items():
            rows = [r for r in self.rows if r.get("kind", "pmd") == kind]
            if not rows:
                continue
            mrr = [r["no_rerank"]["mrr"] * 100 for r in rows]
            for ax, key, scale in ((axes[0], "parameters", 1e-6), (axes[1], "entities_per_s", 1.0)):
                xs = [(r[key] or 0) * scale for r in rows]
                ax.plot(xs, mrr, marker=marker, color=colour, linestyle="-" if kind == "pmd" else "none",
                        label={"pmd": "PMD students", "direct": "direct (same init, L_CE)",
                               "plm": "direct (PLM init)", "teacher": "teacher",
                               "query": "query-only student (teacher's entity index)"}[kind])
                for x, y, r in zip(xs, mrr, rows):
                    ax.annotate(f"{r['layers']}L", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        for ax, label in ((axes[0], "parameters (M, both encoders)"),
                          (axes[1], "entity encoding speed (entities/s)")):
            ax.set_xlabel(label)
            ax.set_ylabel("MRR (%), filtered, no re-rank")
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=8)
        fig.suptitle("PMD students and their controls: quality against size and speed")
        fig.tight_layout()
        return figure_png(fig, dpi=110)

    def save(self, folder: str | Path) -> Path:
        """``report.json``, ``report.md`` and ``report.png``."""
        folder = Path(folder)
        run = RunFolder(folder)
        run.write_json(f"{RunFolder.REPORT}.json", self.to_dict())
        run.write_text(f"{RunFolder.REPORT}.md", self.markdown() + "\n")
        run.write_bytes(f"{RunFolder.REPORT}.png", self.plot())
        return folder


def build_report(stages: list[tuple[str, Path] | tuple[str, Path, str]]) -> Report:
    """``(name, run folder[, kind])`` per stage, the teacher first; refused unless every row was evaluated as the
    teacher was (:func:`check_comparable`)."""
    rows = [_row(*stage[:1], Path(stage[1]), *stage[2:]) for stage in stages]
    check_comparable(rows)
    return Report(rows, teacher_status(Path(stages[0][1])))
