"""Compression measured as the paper measures it (issue 18): a teacher that finishes learning, choices made on the
validation split, students against controls of equal compute.

Every run evaluates on **valid** (``eval.split=valid``); the ``test`` phase evaluates every finished run on test,
once, into ``RUN/test/metrics.json``, after the choices (the teacher, frozen in ``decision.json``) were made on valid.
Every phase is resumable: a finished run is skipped, an interrupted one resumes from its last checkpoint, so the
script can be run again after a kill or in a later session.

    python bench/compression.py --out runs/compression-v2                  # phases in order
    python bench/compression.py --out runs/compression-v2 --phase teachers  # one phase
    python bench/compression.py --out runs/compression-v2 --summary        # tables of what has finished (+ JSON)

Phases: ``data`` (the small KG: ``kgdistill subgraph wn18rr --entities 3000 --seed 0 --max-expand 4 --heldout 500``),
``teachers`` (the ``quick`` teacher at ``--teacher-steps``, one run per learning rate; the best final valid MRR
teaches), ``students`` (pipelines from that teacher, in the order of ``STUDENTS``: one jump to 2 layers with its
controls over three seeds, the paper's ladder with pre-distillation and its 20/10/5/0 mask schedule, 3 layers, MGFD
at equal compute, the student's rate re-checked on valid), ``dropout`` (the teacher with fast and with torch dropout,
three seeds each), ``test`` (every finished run on test, once). Each student distils for ``--budget`` teacher-step
equivalents (default: the teacher's own steps). ``--deadline SECONDS`` starts no new run after that much wall time.

Students take their recipe from the presets of the code that runs them: since BENCHMARKS section 7r the ``quick``
one-jump students weigh the embedding term 4; the numbers of sections 7a-7q were measured at 1, which
``--set distill.embedding_weight=1`` reproduces.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

SUBGRAPH = {"size": 3000, "seed": 0, "max_expand": 4, "heldout": 500}
TEACHER_STEPS = 1080  # 6x the quick preset's 180: at 540 the lr-3e-4 teacher's valid MRR still rose 1.81 in its last quarter
TEACHER_LRS = (3e-4, 1e-4)
VALID = {"eval": {"split": "valid"}, "data": {"valid_limit": 500}, "train": {"valid_ranking": True}}
DROPOUT_SEEDS = (42, 7, 1234)

# name -> (preset, overrides): every student run is a pipeline from the chosen teacher, in priority order
STUDENTS: dict[str, tuple[str, dict]] = {
    # the quick recipe (one jump to 2 layers, no masking) with its same-init control at equal compute and the
    # query-only serving student, over three seeds; the first seed also at equal steps and from the PLM's layers
    "onejump-2L-s42": ("quick", {"distill": {"controls": ["direct", "direct-steps", "plm"], "serving_grade": True}}),
    "onejump-2L-s7": ("quick", {"seed": 7, "distill": {"controls": ["direct"], "serving_grade": True}}),
    "onejump-2L-s1234": ("quick", {"seed": 1234, "distill": {"controls": ["direct"], "serving_grade": True}}),
    # the paper's ladder scaled to 6 layers: pre-distillation at 20 % masking, then 5 / 3 / 2 layers at 10 / 5 / 0 %,
    # the same total budget as the one jump; every stage with its same-init control (the pre-distilled student's
    # control is the teacher trained on for the same compute)
    "ladder-s42": ("quick-ladder", {"distill": {"controls": ["direct"]}}),
    **{f"onejump-3L-s{seed}": ("quick", {"seed": seed,
                                          "distill": {"grades": [{"layers": 3, "mask_rate": 0.0, "lr": 4e-4}],
                                                      "controls": ["direct"]}}) for seed in (42, 7, 1234)},
    # MGFD on at equal compute: one jump with 20 % masking, and the ladder with its masks off
    "onejump-2L-mask20-s42": ("quick", {"distill": {"grades": [{"layers": 2, "mask_rate": 0.2, "lr": 9e-4}]}}),
    "ladder-nomask-s42": ("quick-ladder", {"distill": {"ablation": "no-mgfd"}}),
    # the serving student given the whole budget itself (a query-only step costs 0.44 teacher steps, the symmetric
    # student's 0.67, so equal compute buys 1.5x the steps the serving grade gets after the symmetric grade)
    **{f"query-2L-s{seed}": ("quick", {"seed": seed, "distill": {"student_side": "query"}}) for seed in (42, 7, 1234)},
    # the 2-layer student's rate (9e-4, chosen on test in BENCHMARKS section 3) re-checked on valid
    "onejump-2L-lr3e-4-s42": ("quick", {"distill": {"grades": [{"layers": 2, "mask_rate": 0.0, "lr": 3e-4}]}}),
    "onejump-2L-lr2e-3-s42": ("quick", {"distill": {"grades": [{"layers": 2, "mask_rate": 0.0, "lr": 2e-3}]}}),
}


class Protocol:
    """One protocol's settings and its output folder; ``deadline`` (a time.monotonic() value) stops new runs."""

    def __init__(self, out: Path, teacher_steps: int, budget: float | None, plm: str | None,
                 deadline: float | None, student_overrides: dict | None = None,
                 teacher_lrs: tuple[float, ...] = TEACHER_LRS) -> None:
        self.out, self.teacher_steps, self.plm, self.deadline = out, teacher_steps, plm, deadline
        self.teacher_lrs = teacher_lrs
        self.budget = budget or teacher_steps
        self.student_overrides = student_overrides or {}

    def time_left(self) -> bool:
        if self.deadline is not None and time.monotonic() > self.deadline:
            print("deadline reached: no new run", flush=True)
            return False
        return True

    def base(self, *parts: dict) -> dict:
        from kgdistill.config import merge_values

        out: dict = {"model": {"plm": self.plm}} if self.plm else {}
        for part in (VALID, *parts):
            out = merge_values(out, part)
        return out

    @property
    def data_dir(self) -> Path:
        return self.out / "data" / "wn18rr-sub3000"

    def phase_data(self) -> Path:
        from kgdistill.data.loading import subgraph_dataset

        folder = self.data_dir
        if not (folder / "PROVENANCE.json").is_file():
            kg = subgraph_dataset("wn18rr", folder, SUBGRAPH["size"], SUBGRAPH["seed"], SUBGRAPH["max_expand"],
                                  SUBGRAPH["heldout"])
            print(kg.summary(), flush=True)
        return folder

    def teacher_dir(self, lr: float, seed: int = 42, fast_dropout: bool = True) -> Path:
        suffix = ("" if seed == 42 else f"-s{seed}") + ("" if fast_dropout else "-torchdropout")
        return self.out / f"teacher-lr{lr:g}{suffix}"

    def train_teacher(self, lr: float, seed: int = 42, fast_dropout: bool = True) -> None:
        import kgdistill
        from kgdistill.config import build_config

        run = self.teacher_dir(lr, seed, fast_dropout)
        if (run / "metrics.json").is_file() or not self.time_left():
            return
        every = max(1, self.teacher_steps // 24)
        config = build_config("quick", overrides=self.base({
            "seed": seed, "data": {"dataset": str(self.phase_data().resolve())},
            "train": {"lr": lr, "max_steps": self.teacher_steps, "validate_every": every, "checkpoint_every": every,
                      "fast_dropout": fast_dropout}}))
        print(f"teacher lr {lr:g} seed {seed} fast_dropout {fast_dropout} -> {run}", flush=True)
        kgdistill.train(config, run, resume=(run / "checkpoint-last").exists())

    def phase_teachers(self) -> None:
        for lr in self.teacher_lrs:
            self.train_teacher(lr)

    def phase_dropout(self) -> None:
        """Fast dropout against torch dropout on the chosen teacher's recipe, three seeds each (only the dropout
        stream differs)."""
        from kgdistill.store.saved import load_run_config

        lr = load_run_config(self.chosen_teacher()).train.lr
        for seed in DROPOUT_SEEDS:
            for fast in (True, False):
                self.train_teacher(lr, seed, fast)

    def chosen_teacher(self, given: Path | None = None) -> Path:
        """The teacher the students learn from: ``given`` (``--teacher``: a finished teacher of another protocol
        folder, chosen there) or the best final valid MRR among this folder's finished teachers when the first
        student run starts; then frozen in ``decision.json``."""
        decision = self.out / "decision.json"
        if decision.is_file():
            return Path(json.loads(decision.read_text())["teacher"])
        if given is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            decision.write_text(json.dumps({"teacher": str(given), "given": True}, indent=1) + "\n")
            return given
        done = {lr: self.teacher_dir(lr) for lr in self.teacher_lrs
                if (self.teacher_dir(lr) / "metrics.json").is_file()}
        if not done:
            sys.exit("no finished teacher: run the teachers phase first")
        lr = max(done, key=lambda k: final_mrr(done[k]))
        decision.write_text(json.dumps({"teacher": str(done[lr]),
                                        "candidates": {str(p): final_mrr(p) for p in done.values()}}, indent=1) + "\n")
        return done[lr]

    def phase_students(self, only: list[str] | None, given: Path | None = None) -> None:
        import kgdistill
        from kgdistill.config import build_config

        teacher = self.chosen_teacher(given)
        print(f"teacher: {teacher} (valid MRR {final_mrr(teacher) * 100:.2f})", flush=True)
        for name, (preset, overrides) in STUDENTS.items():
            run = self.out / name
            if (only and name not in only) or (run / "report.json").is_file() or not self.time_left():
                continue
            config = build_config(preset, overrides=self.base(
                {"train": {"validate_every": max(1, self.teacher_steps // 8)}, "distill": {"budget": self.budget}},
                overrides, self.student_overrides))
            print(f"students {name} -> {run}", flush=True)
            config.distill.teacher = str(teacher)
            kgdistill.pipeline(config, run)

    def runs(self) -> list[Path]:
        """Every finished run: teachers first, then each student run's stages."""
        teachers = sorted({*(p.parent for p in self.out.glob("teacher-*/metrics.json")), self.chosen_teacher()})
        stages = sorted(p.parent for p in self.out.glob("*/*/metrics.json") if p.parent.parent.name in STUDENTS)
        return teachers + stages

    def phase_test(self) -> None:
        """Every finished run on test, once, into ``RUN/test/metrics.json`` (valid metrics stay where they are)."""
        import kgdistill
        from kgdistill.config import build_config

        for run in self.runs():
            if not (run / "test" / "metrics.json").is_file():
                kgdistill.evaluate(run, build_config(None, eval={"split": "test"}), output=run / "test",
                                   progress=False)

    def summary(self) -> dict:
        """Every finished run's valid (and, once evaluated, test) MRR, and its % of the chosen teacher; also written
        to ``summary.json``."""
        from kgdistill.pmd.report import teacher_status

        teacher = self.chosen_teacher()
        reference, test_reference = final_mrr(teacher), final_mrr(teacher, "test")
        rows = []
        for run in self.runs():
            both = json.loads((run / "metrics.json").read_text())["no_rerank"]["both"]
            train = json.loads((run / "train_summary.json").read_text())
            name = run.name if run.parent == self.out else f"{run.parent.name}/{run.name}"
            test = final_mrr(run, "test")
            rows.append({"run": name, "valid_mrr": both["mrr"], "valid_hits@1": both["hits@1"],
                         "valid_hits@10": both["hits@10"], "steps": train["steps"], "seconds": train["seconds"],
                         "valid_pct_of_teacher": both["mrr"] / reference * 100, "test_mrr": test,
                         "test_pct_of_teacher": test / test_reference * 100 if test and test_reference else None})
        result = {"teacher": teacher_status(teacher), "teacher_test_mrr": test_reference, "rows": rows}
        (self.out / "summary.json").write_text(json.dumps(result, indent=1) + "\n")
        return result


def final_mrr(run: Path, split: str = "valid") -> float | None:
    path = run / ("metrics.json" if split == "valid" else "test/metrics.json")
    return json.loads(path.read_text())["no_rerank"]["both"]["mrr"] if path.is_file() else None


def print_summary(result: dict) -> None:
    status = result["teacher"]
    print(f"teacher {status['run_dir']}: {status['status']} (valid MRR range over its last quarter "
          f"{status.get('valid_mrr_range_last_quarter', float('nan')) * 100:.2f})\n")
    print("| run | valid MRR | H@1 | H@10 | steps | s | % of teacher | test MRR | test % |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        test = (f"{r['test_mrr'] * 100:.2f} | {r['test_pct_of_teacher']:.1f} %" if r["test_pct_of_teacher"]
                else "- | -")
        print(f"| {r['run']} | {r['valid_mrr'] * 100:.2f} | {r['valid_hits@1'] * 100:.2f} | "
              f"{r['valid_hits@10'] * 100:.2f} | {r['steps']} | {r['seconds']:.0f} | "
              f"{r['valid_pct_of_teacher']:.1f} % | {test} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/compression-v2")
    parser.add_argument("--phase", choices=["data", "teachers", "students", "dropout", "test", "all"], default="all")
    parser.add_argument("--only", nargs="*", help="student runs to do (default: all, in order)")
    parser.add_argument("--teacher-steps", type=int, default=TEACHER_STEPS)
    parser.add_argument("--teacher-lrs", type=float, nargs="*", default=list(TEACHER_LRS))
    parser.add_argument("--budget", type=float, help="each student's distillation budget in teacher-step "
                                                     "equivalents (default: --teacher-steps)")
    parser.add_argument("--plm", help="model.plm for every run (default: the packaged MiniLM)")
    parser.add_argument("--deadline", type=float, help="start no new run after this many seconds")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides for every student run, e.g. distill.controls=[direct]")
    parser.add_argument("--teacher", type=Path, help="a finished teacher run to teach the students (instead of "
                                                     "the teachers phase's choice)")
    parser.add_argument("--summary", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.INFO)
    deadline = time.monotonic() + args.deadline if args.deadline else None
    from kgdistill.config import parse_overrides

    protocol = Protocol(Path(args.out), args.teacher_steps, args.budget, args.plm, deadline, parse_overrides(args.set),
                        tuple(args.teacher_lrs))
    if args.summary:
        print_summary(protocol.summary())
        return
    if args.phase in ("data", "all"):
        protocol.phase_data()
    if args.phase in ("teachers", "all"):
        protocol.phase_teachers()
    if args.phase in ("students", "all"):
        protocol.phase_students(args.only, args.teacher)
    if args.phase in ("dropout", "all"):
        protocol.phase_dropout()
    if args.phase in ("test", "all"):  # once, after every choice was made on valid
        protocol.phase_test()
        print_summary(protocol.summary())


if __name__ == "__main__":
    main()
