"""The pipeline job (``kgdistill.jobs.pipeline``): teacher, grades and controls end to end with the report, the
serving grade, a model card for every grade, no finished stage redone, and a stage run alone equal to the same
stage in a pipeline."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml


def test_pipeline_end_to_end_writes_report(tiny_config, tmp_path):
    from kgdistill.jobs.pipeline import pipeline

    config = tiny_config(train__max_steps=3, distill__stage_steps=2)
    report = pipeline(config, tmp_path / "p", progress=False)
    assert [r["layers"] for r in report.rows] == [4, 4, 3, 2, 1]
    for name in ("report.json", "report.md", "report.png"):
        assert (tmp_path / "p" / name).stat().st_size > 0
    assert (tmp_path / "p" / "report.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "p/report.json").read_text())
    rows = saved["rows"]
    assert report.to_dict() == saved and saved["teacher"]["status"].startswith("unknown") and report.table() == (tmp_path / "p/report.md").read_text().rstrip("\n")
    assert rows[1]["mask_rate"] == 0.2 and rows[-1]["mask_rate"] == 0.0
    assert rows[0]["parameters"] > rows[-1]["parameters"]
    # a second call finds every stage finished and redoes none
    mtime = (tmp_path / "p/02-grade1-3L/checkpoint-last/model.safetensors").stat().st_mtime
    pipeline(config, tmp_path / "p", progress=False)
    assert (tmp_path / "p/02-grade1-3L/checkpoint-last/model.safetensors").stat().st_mtime == mtime


def test_pipeline_with_controls_and_one_jump(tiny_config, tmp_path):
    from kgdistill.jobs.pipeline import pipeline

    config = tiny_config(train__max_steps=3, distill__stage_steps=2, distill__pre_distill=False,
                         distill__grades=[{"layers": 2, "mask_rate": 0.0}], distill__controls=["direct", "plm"],
                         model__init_from="teacher", distill__lr_depth_power=1.0)
    report = pipeline(config, tmp_path / "p", progress=False)
    assert [(r["kind"], r["layers"]) for r in report.rows] == [("teacher", 4), ("pmd", 2), ("direct", 2), ("plm", 2)]
    for row in report.rows[1:]:  # 4 -> 2 layers at power 1: twice the rate, saved as the stage's own train.lr
        saved = yaml.safe_load((Path(row["run_dir"]) / "config.yaml").read_text(encoding="utf-8"))
        assert saved["train"]["lr"] == pytest.approx(2 * config.train.lr)
    rows = {r["kind"]: r for r in report.rows}
    assert rows["direct"]["initialised_from"] == "teacher" and rows["plm"]["initialised_from"] == "plm"
    assert rows["pmd"]["steps"] == 2 and rows["direct"]["steps"] == rows["plm"]["steps"] == 3  # equal compute
    assert "| direct | ce |" in report.markdown()
    # the student trained at a 0 % mask rate: its objective has no MGFD term, and the report says so
    assert rows["pmd"]["objective"] == "0.8 ce + 0.1 score" and rows["teacher"]["objective"] == "ce"


def test_a_best_control_is_early_stopped_on_valid_and_evaluate_scores_the_same_checkpoint(tiny_config, tmp_path):
    """'direct-best' validates by valid MRR and is scored at checkpoint-best; ``evaluate`` on its folder, with no
    eval.checkpoint given, scores that checkpoint too (an explicit one wins)."""
    from kgdistill.config import RunConfig
    from kgdistill.jobs.evaluate import evaluate
    from kgdistill.jobs.pipeline import pipeline
    from kgdistill.store.saved import chosen_checkpoint

    config = tiny_config(train__max_steps=3, train__validate_every=1, distill__stage_steps=2, distill__pre_distill=False,
                         distill__grades=[{"layers": 2, "mask_rate": 0.0}], distill__controls=["direct-best"],
                         model__init_from="teacher")
    report = pipeline(config, tmp_path / "p", progress=False)
    control = tmp_path / "p/02-grade1-2L-direct-best"
    saved = yaml.safe_load((control / "config.yaml").read_text(encoding="utf-8"))
    assert saved["train"]["valid_ranking"] and saved["eval"]["checkpoint"] == "best"
    assert (control / "checkpoint-best/model.json").is_file()
    assert [r["kind"] for r in report.rows] == ["teacher", "pmd", "direct"] and report.rows[2]["steps"] == 3
    assert "direct control at equal compute, at its best valid checkpoint (02-grade1-2L-direct-best)" in report.markdown()
    assert chosen_checkpoint(control, RunConfig()) == "best"
    assert chosen_checkpoint(tmp_path / "p/02-grade1-2L", RunConfig()) == "last"
    explicit = RunConfig()
    explicit.mark_explicit({"eval.checkpoint"})
    assert chosen_checkpoint(control, explicit) == "last"
    in_run = json.loads((control / "metrics.json").read_text())["no_rerank"]["both"]
    # the run's own precision (fp32), not the machine's default (bf16 autocast where the CPU has it)
    again = evaluate(control, config, output=tmp_path / "e", progress=False).to_dict()["no_rerank"]["both"]
    best = evaluate(control / "checkpoint-best", config, output=tmp_path / "b", progress=False)
    best = best.to_dict()["no_rerank"]["both"]
    assert in_run == again == best
    last = evaluate(control, explicit, output=tmp_path / "l", progress=False).to_dict()["no_rerank"]["both"]
    assert last != best  # at this seed the best valid checkpoint is not the last one: the choice is seen
    # a checkpoint folder evaluated in place keeps its metrics: the run's own (of checkpoint-best) are not replaced
    run_metrics = (control / "metrics.json").read_bytes()
    evaluate(control / "checkpoint-last", progress=False)
    assert (control / "metrics.json").read_bytes() == run_metrics
    in_last = json.loads((control / "checkpoint-last/metrics.json").read_text())["no_rerank"]["both"]
    assert in_last == last


def test_early_stopped_students_are_scored_and_teach_at_their_best_checkpoint(tiny_config, tmp_path):
    """With ``eval.checkpoint=best`` every grade is scored at its best valid checkpoint, and the grade below learns
    from that checkpoint, not from the last one."""
    from kgdistill.jobs.evaluate import evaluate
    from kgdistill.jobs.pipeline import pipeline
    from kgdistill.store.saved import load_model

    config = tiny_config(train__max_steps=3, train__validate_every=1, train__checkpoint_every=1,
                         train__valid_ranking=True, eval__checkpoint="best", train__lr=5e-2, distill__stage_steps=4,
                         distill__pre_distill=False, model__init_from="teacher",
                         distill__grades=[{"layers": 3, "mask_rate": 0.0}, {"layers": 2, "mask_rate": 0.0}])
    pipeline(config, tmp_path / "p", progress=False)
    upper = tmp_path / "p/02-grade1-3L"
    best, _, _ = load_model(upper, "best")
    last, _, _ = load_model(upper, "last")
    # the two checkpoints differ at this seed, so what the grade below learned from shows
    assert float(best.log_inv_t.detach()) != pytest.approx(float(last.log_inv_t.detach()))
    in_run = json.loads((upper / "metrics.json").read_text())["no_rerank"]["both"]
    at_best = evaluate(upper / "checkpoint-best", config, output=tmp_path / "b", progress=False).to_dict()
    at_last = evaluate(upper / "checkpoint-last", config, output=tmp_path / "l", progress=False).to_dict()
    assert in_run == at_best["no_rerank"]["both"] != at_last["no_rerank"]["both"]
    lower, _, _ = load_model(tmp_path / "p/03-grade2-2L")
    assert lower.info["teacher"] == str(upper / "checkpoint-best")


def test_pipeline_serving_grade_keeps_the_teachers_entity_encoder(tiny_config, tmp_path):
    from kgdistill.jobs.pipeline import pipeline
    from kgdistill.store.saved import load_model

    config = tiny_config(train__max_steps=3, distill__stage_steps=2, distill__pre_distill=False,
                         distill__grades=[{"layers": 2, "mask_rate": 0.0}], distill__serving_grade=True,
                         model__init_from="teacher")
    report = pipeline(config, tmp_path / "p", progress=False)
    assert [(r["kind"], r["layers"], r["entity_layers"]) for r in report.rows] == [
        ("teacher", 4, 4), ("pmd", 2, 2), ("query", 2, 4)]
    serving, _, _ = load_model(tmp_path / "p/03-serving-query-2L")
    teacher, _, _ = load_model(tmp_path / "p/00-teacher")
    assert all(torch.equal(serving.tail_encoder.state_dict()[k], v) for k, v in teacher.tail_encoder.state_dict().items())
    assert report.rows[2]["steps"] == report.rows[1]["steps"]


def test_every_pipeline_grade_gets_a_model_card_matching_its_metrics(tiny_config, tmp_path):
    from kgdistill.jobs.pipeline import pipeline
    from kgdistill.store.model_card import front_matter

    config = tiny_config(train__max_steps=2, distill__stage_steps=2, distill__grades=[{"layers": 2, "mask_rate": 0.0}])
    pipeline(config, tmp_path / "p", progress=False)
    for stage in ("00-teacher", "01-pre-distilled", "02-grade1-2L"):
        card = front_matter((tmp_path / "p" / stage / "README.md").read_text(encoding="utf-8"))
        metrics = json.loads((tmp_path / "p" / stage / "metrics.json").read_text())
        first = card["model-index"][0]["results"][0]  # without re-ranking
        assert {m["type"]: m["value"] for m in first["metrics"]}["mrr"] == metrics["no_rerank"]["both"]["mrr"], stage


def test_a_stage_run_alone_equals_the_same_stage_in_a_pipeline(tiny_config, tmp_path):
    from kgdistill.cli.app import main
    from kgdistill.jobs.pipeline import pipeline
    from kgdistill.store.saved import load_model

    config = tiny_config(train__max_steps=2, distill__pre_distill=False, model__init_from="teacher",
                         distill__grades=[{"layers": 2, "mask_rate": 0.2, "steps": 3}],
                         distill__embedding_weight=1.0, distill__transfer_queries=4)  # its draw is seeded too
    pipeline(config, tmp_path / "p", progress=False)
    torch.manual_seed(1234)  # whatever ran before, the stage reseeds
    # from the stage's saved config alone, as a user would
    assert main(["distill", "--config", str(tmp_path / "p/02-grade1-2L/config.yaml"), "--output-dir",
                 str(tmp_path / "alone")]) == 0
    in_pipeline, _, _ = load_model(tmp_path / "p/02-grade1-2L")
    alone, _, _ = load_model(tmp_path / "alone")
    for key, value in in_pipeline.state_dict().items():
        assert torch.equal(value, alone.state_dict()[key]), key
    assert json.loads((tmp_path / "alone/metrics.json").read_text())["no_rerank"] == \
        json.loads((tmp_path / "p/02-grade1-2L/metrics.json").read_text())["no_rerank"]


def test_a_pipeline_from_a_trained_teacher_spends_the_teachers_own_steps(tiny_config, tmp_path):
    """``distill.budget_ratio`` reads the steps the given teacher trained (its run folder, or the run above its
    checkpoint), not this config's train.max_steps; a bare model folder has none, and the error names the key."""
    import shutil

    from kgdistill.errors import ConfigError
    from kgdistill.jobs.pipeline import pipeline
    from kgdistill.jobs.train import train
    from kgdistill.pmd.plan import step_cost
    from kgdistill.store.saved import trained_steps

    train(tiny_config(train__max_steps=5), tmp_path / "teacher", progress=False)
    config = tiny_config(train__max_steps=2, distill__stage_steps=None, distill__budget_ratio=1.0,
                         distill__pre_distill=False, distill__grades=[{"layers": 2, "mask_rate": 0.0}],
                         model__init_from="teacher")
    config.distill.teacher = str(tmp_path / "teacher")
    report = pipeline(config, tmp_path / "p", progress=False)
    assert [r["steps"] for r in report.rows] == [5, round(5 / step_cost(2, 4, 4))]
    assert trained_steps(tmp_path / "teacher/checkpoint-last") == 5
    shutil.copytree(tmp_path / "teacher/checkpoint-last", tmp_path / "bare")
    shutil.copy(tmp_path / "teacher/metrics.json", tmp_path / "bare")
    config.distill.teacher = str(tmp_path / "bare")
    with pytest.raises(ConfigError, match="distill.budget_ratio"):
        pipeline(config, tmp_path / "p-bare", progress=False)


def test_the_pipeline_plans_a_query_only_stage_by_its_datas_token_lengths(tiny_config, tmp_path):
    """plan.json's cost of a query-only stage with transfer queries is step_cost over the mean lengths of the data the
    stage trains on (the teacher's), and its steps spend the teacher's own steps."""
    from kgdistill.jobs.pipeline import pipeline, plan_inputs
    from kgdistill.jobs.train import train
    from kgdistill.pmd.plan import step_cost

    train(tiny_config(train__max_steps=5), tmp_path / "teacher", progress=False, evaluate_after=True)
    config = tiny_config(train__max_steps=2, distill__stage_steps=None, distill__budget_ratio=1.0,
                         distill__pre_distill=False, distill__grades=[{"layers": 2, "mask_rate": 0.0}],
                         distill__student_side="query", distill__embedding_weight=1.0, distill__transfer_queries=4)
    config.distill.teacher = str(tmp_path / "teacher")
    depth, lengths = plan_inputs(config)
    pipeline(config, tmp_path / "p", progress=False)
    saved = json.loads((tmp_path / "p/plan.json").read_text(encoding="utf-8"))
    assert saved["mean_tokens"] == dataclasses.asdict(lengths)  # the plan says what its costs were weighed by
    stage = saved["stages"][1]
    expected = step_cost(2, 4, 4, query_only=True, transfer=4 / 8, lengths=lengths)
    assert depth == 4 and stage["cost"] == pytest.approx(expected)
    assert stage["cost"] != pytest.approx(step_cost(2, 4, 4, query_only=True, transfer=4 / 8))
    assert stage["steps"] == round(5 / expected)


def test_a_teacher_not_evaluated_on_the_pipelines_split_is_refused_before_any_training(tiny_config, tmp_path):
    """The report compares every row with the teacher's evaluation: a teacher evaluated elsewhere (or not at all)
    is refused up front with one line saying what to run, not after every stage has trained."""
    from kgdistill.errors import ConfigError
    from kgdistill.jobs.evaluate import evaluate
    from kgdistill.jobs.pipeline import pipeline
    from kgdistill.jobs.train import train

    train(tiny_config(train__max_steps=2), tmp_path / "teacher", progress=False)
    config = tiny_config(distill__teacher=str(tmp_path / "teacher"), distill__stage_steps=1, eval__split="valid",
                         distill__pre_distill=False, distill__grades=[{"layers": 2, "mask_rate": 0.0}])
    for teacher, found in ((tmp_path / "teacher", "was evaluated on 'test'"),
                           (tmp_path / "teacher/checkpoint-last", "has no metrics.json")):
        config.distill.teacher = str(teacher)
        with pytest.raises(ConfigError, match=found) as error:
            pipeline(config, tmp_path / "p", progress=False)
        assert "\n" not in str(error.value) and "--split valid" in str(error.value)
        assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())
    evaluate(tmp_path / "teacher", config, progress=False)  # on valid, into the run folder: now accepted
    config.distill.teacher = str(tmp_path / "teacher")
    config.train.precision = "bf16"  # the teacher was evaluated at fp32, its own precision
    with pytest.raises(ConfigError, match="at precision 'fp32' but this pipeline evaluates at 'bf16'") as error:
        pipeline(config, tmp_path / "p", progress=False)
    assert "train.precision=bf16" in str(error.value) and not any((tmp_path / "p").iterdir())
    config.train.precision = "fp32"
    assert [r["evaluation"]["split"] for r in pipeline(config, tmp_path / "p", progress=False).rows] == ["valid"] * 2
