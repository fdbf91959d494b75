"""The pipeline report (``kgdistill.pmd.report``): the teacher's convergence read from its valid curve, rows evaluated
differently refused, each student's gap to its controls, and the rows as a DataFrame."""
from __future__ import annotations

import importlib.util
import json

import pytest

from kgdistill.pmd.report import Report


def test_teacher_status_reads_the_valid_curve(tmp_path):
    from kgdistill.pmd.report import teacher_state, teacher_status

    def write(values):
        lines = [json.dumps({"step": 10 * (i + 1), "valid_mrr": v}) for i, v in enumerate(values)]
        (tmp_path / "train_log.jsonl").write_text("\n".join(lines) + "\n")

    write([0.1, 0.3, 0.40, 0.401, 0.402, 0.403, 0.404, 0.404])  # steps 10..80; last quarter: steps >= 60
    assert teacher_status(tmp_path)["status"] == "converged"
    write([0.1, 0.2, 0.3, 0.35, 0.38, 0.40, 0.42, 0.44])
    status = teacher_status(tmp_path)
    assert status["status"] == "not converged" and status["valid_mrr_range_last_quarter"] == pytest.approx(0.04)
    write([0.39, 0.41, 0.40, 0.37, 0.36, 0.35, 0.34, 0.334])  # BENCHMARKS.md 7aa's overfitting teacher, in short
    status = teacher_status(tmp_path)
    assert status["status"] == "past its best" and (status["best_step"], status["valid_mrr"]) == (20, 0.334)
    assert "eval.checkpoint=best" in teacher_state(status)
    (tmp_path / "checkpoint-best").mkdir()
    early = teacher_status(tmp_path / "checkpoint-best")  # the same run, distilled from its best checkpoint
    assert early["status"] == "early-stopped" and early["valid_mrr"] == 0.41
    assert teacher_state(early) == "early-stopped: scored at its best valid MRR, 41.00 at step 20 of its 80 steps"
    (tmp_path / "config.yaml").write_text("eval:\n  checkpoint: best\n")  # a run evaluated at its best
    assert teacher_status(tmp_path)["status"] == "early-stopped"
    (tmp_path / "train_log.jsonl").write_text(json.dumps({"step": 5, "loss": 1.0}) + "\n")
    assert teacher_status(tmp_path)["status"].startswith("unknown")
    saved_earlier = {"run_dir": "t", "status": "converged", "steps": 80, "valid_mrr": 0.4,
                     "valid_mrr_range_last_quarter": 0.001}  # a report.json written before best_* were kept
    assert teacher_state(saved_earlier) == "converged: valid MRR moved 0.10 over the last quarter of its 80 steps"


def test_report_refuses_rows_evaluated_differently(tiny_config, tmp_path):
    from kgdistill.jobs.pipeline import pipeline
    from kgdistill.pmd.report import build_report
    from kgdistill.errors import KGDistillError
    from kgdistill.config import build_config
    from kgdistill.jobs.evaluate import evaluate

    config = tiny_config(train__max_steps=2, distill__stage_steps=2, distill__pre_distill=False,
                         distill__grades=[{"layers": 2, "mask_rate": 0.0}])
    report = pipeline(config, tmp_path / "p", progress=False)
    assert report.teacher["run_dir"].endswith("00-teacher") and "% of teacher: of" in report.markdown()
    stages = [("00-teacher", tmp_path / "p/00-teacher", "teacher"), ("02-grade1-2L", tmp_path / "p/02-grade1-2L")]
    assert "every row evaluated alike on test at fp32." in build_report(stages).markdown()  # alike: accepted
    student = tmp_path / "p/02-grade1-2L/metrics.json"
    metrics = json.loads(student.read_text())
    student.write_text(json.dumps({**metrics, "precision": "bf16"}))
    with pytest.raises(KGDistillError, match="02-grade1-2L.*precision 'bf16'.*'fp32'"):
        build_report(stages)
    student.write_text(json.dumps({key: value for key, value in metrics.items() if key != "precision"}))
    build_report(stages)  # written before the precision was recorded: not compared on it
    evaluate(tmp_path / "p/02-grade1-2L", build_config(None, eval={"split": "valid"}), progress=False)  # the student's metrics.json now on valid
    with pytest.raises(KGDistillError, match="02-grade1-2L.*split 'valid'.*'test'"):
        build_report(stages)


@pytest.mark.skipif(importlib.util.find_spec("pandas") is None, reason="to_df needs pandas")
def test_report_rows_as_a_dataframe():
    report = Report([{"name": "00-teacher", "kind": "teacher", "layers": 4, "no_rerank": {"mrr": 0.5, "hits@1": 0.25}},
                     {"name": "02-grade1-2L", "kind": "pmd", "layers": 2, "no_rerank": {"mrr": 0.4, "hits@1": 0.2}}])
    frame = report.to_df()
    assert frame["name"].tolist() == ["00-teacher", "02-grade1-2L"]
    assert frame["no_rerank.mrr"].tolist() == [0.5, 0.4]


def _row(name, kind, mrr):
    """A report row with what ``Report.markdown`` reads, at the given MRR."""
    return {"name": name, "kind": kind, "layers": 2, "entity_layers": 2, "parameters": 1e6,
            "non_embedding_parameters": 1e5, "size_mb": 1, "entities_per_s": None,
            "no_rerank": {"mrr": mrr, "hits@1": 0, "hits@3": 0, "hits@10": 0}}


def test_report_states_each_students_gap_to_its_controls():
    """A student that loses to plain fine-tuning of its layers says so under the table (BENCHMARKS.md 7k)."""
    report = Report([_row("00-teacher", "teacher", 0.25), _row("02-grade1-2L", "pmd", 0.24),
                     _row("02-grade1-2L-direct", "direct", 0.31), _row("02-grade1-2L-direct-steps", "direct", 0.22)])
    gaps = {g["control"]: g for g in report.to_dict()["control_gaps"]}
    assert gaps["02-grade1-2L-direct"]["equal"] == "compute"
    assert gaps["02-grade1-2L-direct"]["mrr_gap"] == pytest.approx(-0.07)
    assert gaps["02-grade1-2L-direct-steps"]["equal"] == "steps"
    assert gaps["02-grade1-2L-direct-steps"]["mrr_gap"] == pytest.approx(0.02)
    text = report.markdown()
    assert "direct control at equal compute (02-grade1-2L-direct): -7.00 MRR; the control is ahead" in text
    assert "at equal steps (02-grade1-2L-direct-steps): +2.00 MRR; the student is ahead" in text
    assert report.students_above_teacher() == [] and "Above 102 %" not in text
    # the equal-compute control at 124 % of the teacher says the teacher is unfinished, though no student does
    assert report.controls_above_teacher() == ["02-grade1-2L-direct"]
    assert "Controls above 102 % of the teacher without it: 02-grade1-2L-direct. Its own layers" in text


def test_report_names_students_above_102_percent_of_their_teacher():
    """Issue 18: a student above 102 % of its teacher says the teacher is unfinished; controls are not students."""
    report = Report([_row("00-teacher", "teacher", 0.30), _row("02-grade1-2L", "pmd", 0.305),
                     _row("02-grade1-2L-direct", "direct", 0.40), _row("03-serving-2L", "query", 0.31)])
    assert report.students_above_teacher() == ["03-serving-2L"]  # 103.3 %; 101.7 % is not above
    assert report.to_dict()["students_above_teacher"] == ["03-serving-2L"]
    assert "Above 102 % of the teacher: 03-serving-2L. A student that beats its teacher" in report.markdown()
    assert report.to_dict()["controls_above_teacher"] == ["02-grade1-2L-direct"]  # 133 %
    quiet = Report([_row("00-teacher", "teacher", 0.30), _row("02-grade1-2L-direct", "direct", 0.305)])
    assert quiet.controls_above_teacher() == [] and "Controls above" not in quiet.markdown()  # 101.7 %


def test_control_gaps_carry_the_splits_sampling_interval(tiny_config, tmp_path):
    """A pipeline with a control: its gap comes with the paired-bootstrap interval of ``kgdistill compare``."""
    from kgdistill.evaluation.compare import compare
    from kgdistill.jobs.pipeline import pipeline

    config = tiny_config(train__max_steps=2, distill__stage_steps=2, distill__pre_distill=False,
                         distill__grades=[{"layers": 2, "mask_rate": 0.0}], distill__controls=["direct"])
    report = pipeline(config, tmp_path / "p", progress=False)
    (gap,) = report.to_dict()["control_gaps"]
    expected = compare(tmp_path / "p/02-grade1-2L", tmp_path / "p/02-grade1-2L-direct", resamples=2000).metrics["mrr"]
    assert gap["mrr_gap_interval"] == [expected["low"], expected["high"]]
    assert expected["low"] <= gap["mrr_gap"] <= expected["high"]
    assert "paired-bootstrap interval over the split's triples" in report.markdown()
    (tmp_path / "p/02-grade1-2L-direct/ranks.npz").unlink()  # an evaluation saved before ranks were: no interval
    assert report.control_gaps()[0]["mrr_gap_interval"] == gap["mrr_gap_interval"]  # bootstrapped once per report
    assert Report(report.rows, report.teacher).control_gaps()[0]["mrr_gap_interval"] is None
