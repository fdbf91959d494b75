"""One pipeline recipe run at several training seeds, read together: each model's mean and spread over the seeds, and
each student-control gap with an interval that covers the seeds' spread as well as the split's sampling.

A pipeline's report tells how one seed went; a claim such as "the student beats fine-tuning at equal compute" needs
the spread between seeds beside it. ``kgdistill report RUN_S42 RUN_S7 RUN_S1234`` reads the pipelines'
``report.json`` files (rows evaluated alike, one folder per seed; refused otherwise) and compares across them with
:func:`~kgdistill.evaluation.compare.compare`, drawing seeds and triples.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from ..config import load_config_file
from ..errors import KGDistillError
from ..evaluation.compare import compare
from ..evaluation.ranking import evaluation_mismatch
from ..io import read_json_object
from ..results import Result, figure_png
from ..runfolder import RunFolder
from .report import teacher_state


def _read_pipeline(folder: Path) -> tuple[dict, int]:
    """A finished pipeline folder's ``report.json`` and the seed its stages trained with (their ``config.yaml``)."""
    report = read_json_object(folder / f"{RunFolder.REPORT}.json")
    rows = report.get("rows")
    if not isinstance(rows, list) or len(rows) < 2:
        raise KGDistillError(f"{folder}: no {RunFolder.REPORT}.json with a teacher and students here (give the "
                             f"folders of finished kgdistill pipeline runs)")
    stage = folder / rows[1]["name"] / RunFolder.CONFIG
    if not stage.is_file():
        raise KGDistillError(f"{stage}: missing (the seed of pipeline {folder} is read from its stages' configs)")
    seed = load_config_file(stage).get("seed")
    if not isinstance(seed, int):
        raise KGDistillError(f"{stage}: 'seed' is {seed!r}, not an integer")
    return report, seed


def _spread(values: list[float]) -> dict:
    """Mean, range and the values themselves, in seed order: the range is what a reader checks a gap against."""
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "by_seed": values}


@dataclass
class SeedsReport(Result):
    """What ``kgdistill report`` returns: per model, its MRR, Hits and "% of teacher" by seed with their mean and
    range; per student-control pair, the gap by seed and over seeds with its interval."""

    pipelines: list[str]
    seeds: list[int]
    teacher: dict  # the first pipeline's teacher status, and how many distinct teachers the pipelines had
    models: list[dict]
    gaps: list[dict]

    def to_dict(self) -> dict:
        return {"pipelines": self.pipelines, "seeds": self.seeds, "teacher": self.teacher, "models": self.models,
                "gaps": self.gaps}

    def table(self) -> str:
        return self.markdown()

    def markdown(self) -> str:
        """The models as a Markdown table (MRR and Hits in %, mean and range over seeds), then one line per gap."""
        t = self.teacher
        status = teacher_state(t)
        teachers = ("one teacher" if t["distinct"] == 1 else
                    f"{t['distinct']} different teachers: each seed's % is of its own teacher")
        seeds = ", ".join(map(str, self.seeds))
        lines = [f"{len(self.pipelines)} pipelines, seeds {seeds}; {teachers} (`{t.get('run_dir')}`, {status}); "
                 f"every row evaluated alike on {self.models[0]['split']}.", "",
                 "| model | kind | layers | seeds | MRR mean | MRR by seed | H@1 mean | H@10 mean | "
                 "% of teacher mean | % by seed |", "|---|---|---|---|---|---|---|---|---|---|"]
        for m in self.models:
            mrr, pct = m["mrr"], m["percent_of_teacher"]
            lines.append(f"| {m['name']} | {m['kind']} | {m['layers']} | {len(m['seeds'])} | {mrr['mean'] * 100:.2f} | "
                         f"{' / '.join(f'{v * 100:.2f}' for v in mrr['by_seed'])} | {m['hits@1']['mean'] * 100:.2f} | "
                         f"{m['hits@10']['mean'] * 100:.2f} | {pct['mean']:.1f} | "
                         f"{' / '.join(f'{v:.1f}' for v in pct['by_seed'])} |")
        for g in self.gaps:
            by_seed = " / ".join(f"{v * 100:+.2f}" for v in g["by_seed"])
            lines.append(f"\n{g['student']} minus {g['control']} (equal {g['equal']}), seeds "
                         f"{', '.join(map(str, g['seeds']))}: {by_seed}; {g['verdict']}.")
        return "\n".join(lines)

    def plot(self) -> bytes:
        """PNG: each model's MRR at every seed (dots) and its mean (bar)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(self.models)), 4))
        for x, m in enumerate(self.models):
            ax.bar(x, m["mrr"]["mean"] * 100, color="tab:blue", alpha=0.3)
            ax.plot([x] * len(m["seeds"]), [v * 100 for v in m["mrr"]["by_seed"]], "o", color="tab:blue")
        ax.set_xticks(range(len(self.models)), [m["name"] for m in self.models], rotation=20, ha="right",
                      fontsize=8)
        ax.set_ylabel(f"MRR (%), {self.models[0]['split']}, no re-rank")
        ax.set_title(f"Seeds {', '.join(map(str, self.seeds))}: each dot a seed, the bar their mean")
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        return figure_png(fig)

    def save(self, folder: str | Path) -> Path:
        """``seeds-report.json``, ``seeds-report.md`` and ``seeds-report.png``."""
        run = RunFolder(folder)
        run.write_json("seeds-report.json", self.to_dict())
        run.write_text("seeds-report.md", self.markdown() + "\n")
        run.write_bytes("seeds-report.png", self.plot())
        return Path(folder)


def seeds_report(pipelines: list[str | Path], resamples: int = 10_000, confidence: float = 0.95) -> SeedsReport:
    """Read finished pipeline folders of one recipe, one per training seed, and compare across them. Every row of
    every report must be evaluated as the first teacher was; two folders of the same seed are refused."""
    folders = [Path(p) for p in pipelines]
    if not folders:
        raise KGDistillError("kgdistill report: give at least one pipeline folder")
    reports, seeds = [], []
    for folder in folders:
        report, seed = _read_pipeline(folder)
        if seed in seeds:
            raise KGDistillError(f"{folder}: seed {seed} again (as {folders[seeds.index(seed)]}); give one folder "
                                 f"per seed")
        reports.append(report)
        seeds.append(seed)
    reference = reports[0]["rows"][0]["evaluation"]
    for folder, report in zip(folders, reports):
        for row in report["rows"]:
            key = evaluation_mismatch(reference, row["evaluation"])
            if key is not None:
                raise KGDistillError(f"{folder}: row '{row['name']}' evaluated with {key} "
                                     f"{row['evaluation'].get(key)!r} but {folders[0]}'s teacher with "
                                     f"{reference.get(key)!r}; compare pipelines evaluated alike")
    teacher_keys = {(r["rows"][0].get("run_dir"), r["rows"][0]["no_rerank"]["mrr"]) for r in reports}
    teacher = {**reports[0].get("teacher", {}), "distinct": len(teacher_keys)}

    names: list[str] = []
    for report in reports:
        names += [row["name"] for row in report["rows"] if row["name"] not in names]
    models = []
    for name in names:
        found = [(seed, report["rows"][0], row) for seed, report in zip(seeds, reports)
                 for row in report["rows"] if row["name"] == name]
        first = found[0][2]
        model = {"name": name, "kind": first.get("kind", "pmd"), "layers": first["layers"],
                 "split": first["evaluation"]["split"], "seeds": [seed for seed, _, _ in found],
                 "percent_of_teacher": _spread([100 * row["no_rerank"]["mrr"] / t["no_rerank"]["mrr"]
                                                for _, t, row in found])}
        for key in ("mrr", "hits@1", "hits@3", "hits@10"):
            model[key] = _spread([row["no_rerank"][key] for _, _, row in found])
        models.append(model)

    pairs: list[tuple[str, str, str]] = []
    for report in reports:
        pairs += [(g["student"], g["control"], g["equal"]) for g in report.get("control_gaps", [])
                  if (g["student"], g["control"], g["equal"]) not in pairs]
    rows_by_name = [{row["name"]: row for row in report["rows"]} for report in reports]
    gaps = []
    for student, control, equal in pairs:
        both = [(seed, folder, rows) for seed, folder, rows in zip(seeds, folders, rows_by_name)
                if student in rows and control in rows]
        by_seed = [rows[student]["no_rerank"]["mrr"] - rows[control]["no_rerank"]["mrr"] for _, _, rows in both]
        gap = {"student": student, "control": control, "equal": equal, "seeds": [seed for seed, _, _ in both],
               "by_seed": by_seed, "mean": statistics.fmean(by_seed), "low": None, "high": None}
        try:
            comparison = compare([folder / student for _, folder, _ in both],
                                 [folder / control for _, folder, _ in both], resamples=resamples,
                                 confidence=confidence)
        except KGDistillError as error:  # e.g. folders evaluated before per-query ranks were saved
            gap["verdict"] = f"mean {gap['mean'] * 100:+.2f} MRR; no interval ({error})"
        else:
            gap.update(low=comparison.metrics["mrr"]["low"], high=comparison.metrics["mrr"]["high"],
                       verdict=comparison.verdict())
        gaps.append(gap)
    return SeedsReport([str(f) for f in folders], seeds, teacher, models, gaps)
