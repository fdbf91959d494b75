"""Compression measured as the paper measures it (issue 18): a teacher that finishes learning, choices made on the
validation split, students against controls of equal compute.

Every run evaluates on **valid** (``eval.split=valid``); ``--test`` evaluates the finished final recipes on test,
once, into ``metrics-test.json`` beside each run. Every phase is resumable: a finished run is skipped, an
interrupted one resumes from its last checkpoint, so the script can be run again after a kill or in a later session.

    python bench/compression.py --out runs/compression                  # phases in order, as far as time allows
    python bench/compression.py --out runs/compression --phase teachers  # one phase
    python bench/compression.py --out runs/compression --summary        # tables of what has finished (valid)

Phases: ``data`` (the small KG: ``kgdistill subgraph wn18rr --entities 3000 --seed 0 --max-expand 4 --heldout 500``),
``teachers`` (the ``quick`` teacher at 3x its steps, one run per learning rate; the best final valid MRR teaches),
``students`` (one jump to 2 layers with the ``quick`` recipe and its controls, MGFD at equal compute, the teacher's
temperature, more seeds, 3 layers, the ladder), ``test`` (``--only RUN ...``: the final recipes on test, once).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

SUBGRAPH = {"size": 3000, "seed": 0, "max_expand": 4, "heldout": 500}
TEACHER_STEPS = 540  # 3x the quick preset's 180: the held-out check's "finished" teacher
TEACHER_LRS = (3e-4, 1e-4)
VALID = {"eval": {"split": "valid"}, "data": {"valid_limit": 500}, "train": {"valid_ranking": True}}

# name -> (preset, overrides): every student run is a pipeline from the chosen teacher
STUDENTS: dict[str, tuple[str, dict]] = {
    # the quick recipe (one jump to 2 layers, no masking) with controls at equal compute and equal steps, and the
    # query-only serving student
    "onejump-2L-s42": ("quick", {"distill": {"controls": ["direct", "direct-steps", "plm"], "serving_grade": True}}),
    # MGFD on (the paper's first rate, 20 %) at the same compute (fewer steps: masked passes cost)
    "onejump-2L-mask20-s42": ("quick", {"distill": {"grades": [{"layers": 2, "mask_rate": 0.2, "lr": 9e-4}]}}),
    "onejump-2L-s7": ("quick", {"seed": 7, "distill": {"controls": ["direct"]}}),
    "onejump-3L-s42": ("quick", {"distill": {"grades": [{"layers": 3, "mask_rate": 0.0, "lr": 4e-4}],
                                             "controls": ["direct"]}}),
    "ladder-s42": ("quick-ladder", {"distill": {"controls": ["direct"]}}),
    "onejump-2L-s1234": ("quick", {"seed": 1234, "distill": {"controls": ["direct"], "serving_grade": True}}),
}


def merge(*parts: dict) -> dict:
    from kgdistill.config import merge_values

    out: dict = {}
    for part in parts:
        out = merge_values(out, part)
    return out


def data_dir(out: Path) -> Path:
    return out / "data" / "wn18rr-sub3000"


def phase_data(out: Path) -> Path:
    from kgdistill.data.loading import subgraph_dataset

    folder = data_dir(out)
    if not (folder / "PROVENANCE.json").is_file():
        kg = subgraph_dataset("wn18rr", folder, SUBGRAPH["size"], SUBGRAPH["seed"], SUBGRAPH["max_expand"],
                              SUBGRAPH["heldout"])
        print(kg.summary(), flush=True)
    return folder


def teacher_dir(out: Path, lr: float) -> Path:
    return out / f"teacher-lr{lr:g}"


def phase_teachers(out: Path, lrs: tuple[float, ...] = TEACHER_LRS) -> None:
    import kgdistill
    from kgdistill.config import build_config

    folder = phase_data(out)
    for lr in lrs:
        run = teacher_dir(out, lr)
        if (run / "metrics.json").is_file():
            continue
        config = build_config("quick", overrides=merge(VALID, {
            "data": {"dataset": str(folder.resolve())},
            "train": {"lr": lr, "max_steps": TEACHER_STEPS, "validate_every": 45, "checkpoint_every": 45}}))
        print(f"teacher lr {lr:g} -> {run}", flush=True)
        kgdistill.train(config, run, resume=(run / "checkpoint-last").exists())


def final_valid(run: Path) -> float:
    return json.loads((run / "metrics.json").read_text())["no_rerank"]["both"]["mrr"]


def chosen_teacher(out: Path) -> Path:
    """The teacher the students learn from: the best final valid MRR among the finished teachers when the first
    student run starts, then frozen in ``decision.json`` (a teacher finishing later is compared in the summary)."""
    decision = out / "decision.json"
    if decision.is_file():
        return Path(json.loads(decision.read_text())["teacher"])
    done = [teacher_dir(out, lr) for lr in TEACHER_LRS if (teacher_dir(out, lr) / "metrics.json").is_file()]
    if not done:
        sys.exit("no finished teacher: run the teachers phase first")
    best = max(done, key=final_valid)
    decision.write_text(json.dumps({"teacher": str(best), "candidates": {str(p): final_valid(p) for p in done}},
                                   indent=1) + "\n")
    return best


def phase_students(out: Path, only: list[str] | None) -> None:
    import kgdistill
    from kgdistill.config import build_config

    teacher = chosen_teacher(out)
    print(f"teacher: {teacher} (valid MRR {final_valid(teacher) * 100:.2f})", flush=True)
    for name, (preset, overrides) in STUDENTS.items():
        if only and name not in only:
            continue
        run = out / name
        if (run / "report.json").is_file():
            continue
        config = build_config(preset, overrides=merge(VALID, {"train": {"validate_every": 90}}, overrides))
        print(f"students {name} -> {run}", flush=True)
        config.distill.teacher = str(teacher)
        kgdistill.pipeline(config, run)


def phase_test(out: Path, names: list[str]) -> None:
    """The final recipes on test, once: the chosen teacher and every stage of the named student runs, each into
    ``RUN/test/metrics.json`` (their valid metrics stay where they are)."""
    import kgdistill
    from kgdistill.config import build_config

    teacher = chosen_teacher(out)
    runs = [teacher] + [stage for name in names for stage in sorted((out / name).iterdir())
                        if (stage / "checkpoint-last").is_dir()]
    for run in runs:
        if not (run / "test" / "metrics.json").is_file():
            kgdistill.evaluate(run, build_config(None, eval={"split": "test"}), output=run / "test", progress=False)


def summary(out: Path) -> None:
    """Every finished run's valid MRR, and each student's % of the chosen teacher."""
    teacher = chosen_teacher(out)
    reference = final_valid(teacher)
    test_reference = (json.loads((teacher / "test" / "metrics.json").read_text())["no_rerank"]["both"]["mrr"]
                      if (teacher / "test" / "metrics.json").is_file() else None)
    print(f"| run | valid MRR | H@1 | H@10 | steps | % of teacher ({teacher.name}) | test MRR | test % |\n"
          "|---|---|---|---|---|---|---|---|")
    runs = [teacher_dir(out, lr) for lr in TEACHER_LRS]
    runs += sorted(p.parent for p in out.glob("*/*/metrics.json") if p.parent.parent.name in STUDENTS)
    for run in runs:
        if not (run / "metrics.json").is_file():
            continue
        both = json.loads((run / "metrics.json").read_text())["no_rerank"]["both"]
        steps = json.loads((run / "train_summary.json").read_text())["steps"]
        name = run.name if run.parent == out else f"{run.parent.name}/{run.name}"
        test = ""
        if (run / "test" / "metrics.json").is_file() and test_reference:
            mrr = json.loads((run / "test" / "metrics.json").read_text())["no_rerank"]["both"]["mrr"]
            test = f"{mrr * 100:.2f} | {mrr / test_reference * 100:.1f} %"
        print(f"| {name} | {both['mrr'] * 100:.2f} | {both['hits@1'] * 100:.2f} | {both['hits@10'] * 100:.2f} | "
              f"{steps} | {both['mrr'] / reference * 100:.1f} % | {test or '- | -'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/compression")
    parser.add_argument("--phase", choices=["data", "teachers", "students", "test", "all"], default="all")
    parser.add_argument("--only", nargs="*", help="student runs to do (default: all, in order)")
    parser.add_argument("--summary", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.INFO)
    out = Path(args.out)
    if args.summary:
        summary(out)
        return
    if args.phase in ("data", "all"):
        phase_data(out)
    if args.phase == "teachers":
        phase_teachers(out)
    if args.phase == "students":
        phase_students(out, args.only)
    if args.phase == "test":  # once, for the final recipes named by --only
        phase_test(out, args.only or [])
    if args.phase == "all":  # the first teacher, its main student run, then the other teacher and the rest
        phase_teachers(out, TEACHER_LRS[:1])
        phase_students(out, [next(iter(STUDENTS))])
        phase_teachers(out)
        phase_students(out, args.only)


if __name__ == "__main__":
    main()
