"""Issue 10: fp32 scores under autocast, dataset inheritance, the distillation levers and the ladder's controls."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml


def _objective(config, teacher, student, mask_rate=0.0):
    from kgdistill.api import DataContext
    from kgdistill.training.distillation import DistillationObjective
    from kgdistill.losses.contrastive import InfoNCELoss

    data = DataContext(config, teacher_tokenizer(config))
    loss = InfoNCELoss(student, config.loss, data.known_train, config.train.batch_size)
    return DistillationObjective(student, teacher, loss, config.distill, mask_rate, 4), data


def teacher_tokenizer(config):
    from kgdistill.models.plm import load_tokenizer, resolve_plm

    return load_tokenizer(resolve_plm(config.model.plm))


def test_scores_are_fp32_under_bf16_autocast():
    from kgdistill.config import LossConfig
    from kgdistill.losses.contrastive import InfoNCELoss

    torch.manual_seed(0)
    hr = torch.nn.functional.normalize(torch.randn(8, 64), dim=-1)
    tail = torch.nn.functional.normalize(hr + 0.3 * torch.randn(8, 64), dim=-1)
    model = type("M", (), {"hidden_size": 64})()
    loss = InfoNCELoss(model, LossConfig(self_negative=False), None, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = loss.scores(hr, tail, None)
        plain = hr @ tail.T  # what the old code computed under autocast
    assert scores.in_batch.dtype == torch.float32
    assert torch.allclose(scores.in_batch, hr @ tail.T, atol=1e-6)
    assert plain.dtype == torch.bfloat16 and (plain.float() - hr @ tail.T).abs().max() > 1e-3


def test_auto_precision_follows_the_cpu_flags(monkeypatch):
    from kgdistill import runtime

    for flags, expected in ((["avx512f"], "fp32"), (["avx512f", "avx512_bf16"], "bf16"), (["amx_bf16"], "bf16")):
        runtime._resolve.cache_clear()
        runtime.cpu_native_bf16.cache_clear()
        monkeypatch.setattr(runtime, "cpu_info", lambda flags=flags: {"model": "test cpu", "flags": flags,
                                                                       "native_bf16": any(f in flags for f in runtime.NATIVE_BF16_FLAGS)})
        assert runtime.resolve_precision("auto", "cpu") == expected
        assert runtime.resolve_precision("fp32", "cpu") == "fp32"
        assert runtime.resolve_precision("bf16", "cpu") == "bf16"
        info = runtime.precision_info("auto", "cpu")
        assert info["chosen"] == expected and info["cpu"]["model"] == "test cpu"
    runtime._resolve.cache_clear()
    runtime.cpu_native_bf16.cache_clear()


def test_unreadable_flags_fall_back_to_a_cached_probe(monkeypatch, tmp_path):
    from kgdistill import runtime

    runtime._resolve.cache_clear()
    runtime.cpu_native_bf16.cache_clear()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(runtime, "cpu_info", lambda: {"model": "mystery", "flags": [], "native_bf16": None})
    calls = []
    monkeypatch.setattr(runtime, "probe_cpu_bf16", lambda: calls.append(1) or {"fp32_s": 1.0, "bf16_s": 2.0,
                                                                              "native_bf16": False})
    assert runtime.resolve_precision("auto", "cpu") == "fp32"
    runtime.cpu_native_bf16.cache_clear()
    runtime._resolve.cache_clear()
    assert runtime.resolve_precision("auto", "cpu") == "fp32"
    assert calls == [1]  # the second process-level lookup read the cache
    assert "mystery" in (tmp_path / "kgdistill/precision-probe.json").read_text()
    runtime._resolve.cache_clear()
    runtime.cpu_native_bf16.cache_clear()


def test_student_and_teacher_score_columns_align_with_self_negatives_and_pre_batch(tiny_config, tmp_path):
    """A student that is an exact copy of its teacher must produce the very same score matrix, column for column,
    in-batch, pre-batch and self-negative blocks included, over several steps (the queues fill)."""
    from kgdistill.api import load_model, train

    config = tiny_config(loss__pre_batch=1, loss__self_negative=True, distill__alpha=0.5, distill__beta=0.0)
    train(config, tmp_path / "t", evaluate_after=False, progress=False)
    teacher, _, _ = load_model(tmp_path / "t")
    student = copy.deepcopy(teacher)
    objective, data = _objective(config, teacher, student)
    objective.eval()
    examples = data.train_set()
    for step in range(3):
        batch = examples.batch(np.arange(step * 8, step * 8 + 8), with_heads=True)
        _, logs = objective(batch)
        assert logs["l_score"] < 1e-10, (step, logs)
    assert objective.loss.queue.entities.ge(0).all()


def test_distill_inherits_the_teachers_dataset_and_text_settings(tiny_config, tiny_plm, tmp_path):
    from kgdistill.api import train
    from kgdistill.config import build_config
    from kgdistill.jobs.distill import distill

    teacher_config = tiny_config(data__max_tokens=20)
    train(teacher_config, tmp_path / "t", evaluate_after=False, progress=False)
    # the student's config names no dataset: the default ('wn18rr') must not win over the teacher's tiny KG
    student_config = build_config(None, overrides={
        "model": {"plm": str(tiny_plm)},
        "train": {"batch_size": 8, "max_steps": 2, "warmup_steps": 1, "precision": "fp32", "device": "cpu"},
        "distill": {"stage_steps": 2}})
    assert student_config.data.dataset == "wn18rr"
    student_config.distill.teacher, student_config.model.num_layers = str(tmp_path / "t"), 2
    out = distill(student_config, tmp_path / "s", progress=False)
    saved = (tmp_path / "s/config.yaml").read_text()
    assert teacher_config.data.dataset in saved and "max_tokens: 20" in saved
    assert out.metrics["num_entities"] == 24  # the tiny KG, not WN18RR's 40,943


@pytest.mark.parametrize("overrides", [
    {"distill__embedding_weight": 0.5},
    {"distill__embedding_weight": 0.5, "distill__embedding_loss": "mse"},
    {"distill__student_input": "clean", "distill__mgfd": "pooled"},
    {"distill__student_side": "query", "distill__embedding_weight": 1.0},
    {"model__layer_choice": "top"},
])
def test_each_lever_trains_and_evaluates(tiny_config, tmp_path, overrides):
    from kgdistill.api import load_model, train
    from kgdistill.jobs.distill import distill

    train(tiny_config(), tmp_path / "t", evaluate_after=False, progress=False)
    config = tiny_config(model__init_from="teacher", **overrides)
    config.distill.teacher, config.model.num_layers, config.distill.mask_rate = str(tmp_path / "t"), 2, 0.2
    out = distill(config, tmp_path / "s", progress=False)
    assert 0 < out.metrics["no_rerank"]["both"]["mrr"] <= 1
    logs = [json.loads(line) for line in (tmp_path / "s/train_log.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "l_ce" in r]
    assert steps and all(np.isfinite(r["loss"]) for r in steps)
    if overrides.get("distill__embedding_weight"):
        assert steps[0]["l_embedding"] > 0
    student, _, _ = load_model(tmp_path / "s")
    teacher, _, _ = load_model(tmp_path / "t")
    if overrides.get("distill__student_side") == "query":
        assert student.num_layers == 2 and student.tail_encoder.config.num_hidden_layers == 4
        for key, value in teacher.tail_encoder.state_dict().items():  # frozen: the teacher's entity index stays valid
            assert torch.equal(student.tail_encoder.state_dict()[key], value)
    if overrides.get("model__layer_choice") == "top":
        assert student.info["layer_map"] == [2, 3]


def test_clean_student_input_scores_clean_text_on_both_sides(tiny_config, tmp_path):
    """With student_input=clean and a student identical to the teacher, L_SCORE is zero even at a high mask rate:
    both score the same clean text (the old code compared the student's clean scores with masked teacher scores)."""
    from kgdistill.api import load_model, train

    config = tiny_config(distill__student_input="clean", distill__mgfd="pooled")
    train(config, tmp_path / "t", evaluate_after=False, progress=False)
    teacher, _, _ = load_model(tmp_path / "t")
    objective, data = _objective(config, teacher, copy.deepcopy(teacher), mask_rate=0.5)
    objective.eval()
    _, logs = objective(data.train_set().batch(np.arange(8), with_heads=True))
    assert logs["l_score"] < 1e-10 and logs["l_mgfd"] < 1e-10


def test_no_mgfd_ablation_keeps_the_ce_weight(tiny_config):
    from kgdistill.pmd.plan import stage_config

    config, rate = stage_config(tiny_config(distill__alpha=0.1, distill__beta=0.1, distill__ablation="no-mgfd"), 0.2)
    assert rate == 0.0 and config.distill.alpha == 0.1 and config.distill.beta == 0.1  # CE weight stays 0.8


def test_budget_gives_cheap_grades_more_steps():
    from kgdistill.config import build_config
    from kgdistill.pmd.plan import plan

    config = build_config("quick-ladder", overrides={"distill": {"budget": 180,
                                                                 "controls": ["direct", "plm", "direct-steps"]}})
    stages = plan(config, 6)
    pmd = [s for s in stages if s.kind == "pmd"]
    assert [s.layers for s in pmd] == [6, 5, 3, 2]
    assert [s.steps for s in pmd] == sorted(s.steps for s in pmd)  # shallower -> more steps
    assert sum(s.steps * s.cost for s in pmd) == pytest.approx(180, rel=0.05)
    controls = [s for s in stages if s.kind in ("direct", "plm")]
    assert len(controls) == 3 * len(pmd)
    # clean input with MGFD on encodes the masked query and tail a second time (student and teacher): counted
    masked = plan(build_config("quick-ladder", overrides={"distill": {"budget": 180, "student_input": "masked"}}), 6)
    by_name = {s.name: s for s in masked}
    for stage in pmd:
        if stage.mask_rate:
            assert stage.cost > by_name[stage.name].cost and stage.steps < by_name[stage.name].steps
        else:  # no masking at 0 %: no extra passes
            assert stage.cost == by_name[stage.name].cost
    for control in controls:  # equal compute (more steps, no teacher to run) unless named '-steps'
        grade = next(s for s in pmd if control.name.startswith(s.name))
        assert control.teacher == grade.teacher
        if control.name.endswith("-steps"):
            assert control.steps == grade.steps
        else:
            assert control.steps > grade.steps
            assert control.steps * control.cost == pytest.approx(grade.steps * grade.cost, rel=0.05)


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


def test_lr_depth_power_sets_the_shallow_grades_and_their_controls():
    from kgdistill.config import build_config
    from kgdistill.pmd.plan import plan

    config = build_config("quick-ladder", overrides={"train": {"lr": 1e-4},
                                              "distill": {"lr_depth_power": 2.0, "controls": ["direct"],
                                                          "grades": [{"layers": 3, "mask_rate": 0.1},
                                                                     {"layers": 2, "mask_rate": 0.0, "lr": 5e-4}]}})
    lrs = {s.name: s.lr for s in plan(config, 6)}
    assert lrs == pytest.approx({"00-teacher": None, "01-pre-distilled": None, "01-pre-distilled-direct": None,
                                 "02-grade1-3L": 4e-4, "02-grade1-3L-direct": 4e-4, "03-grade2-2L": 5e-4,
                                 "03-grade2-2L-direct": 5e-4})
    config.distill.lr_depth_power = 0.0  # the paper: one rate everywhere
    assert {s.lr for s in plan(config, 6) if s.layers == 3} == {None}


def test_quick_preset_is_one_jump_and_quick_ladder_the_progressive_ladder():
    from kgdistill.config import build_config
    from kgdistill.pmd.plan import plan

    one_jump = [s for s in plan(build_config("quick"), 6) if s.kind == "pmd"]
    assert [(s.layers, s.steps, s.lr) for s in one_jump] == [(2, 270, 9e-4)]  # the whole budget at 2 layers
    assert build_config("quick").model.layer_choice == "ends"
    ladder = [s for s in plan(build_config("quick-ladder"), 6) if s.kind == "pmd"]
    assert [s.layers for s in ladder] == [6, 5, 3, 2] and build_config("quick-ladder").model.layer_choice == "even"


def test_a_data_key_the_user_set_is_kept_even_at_its_default_value(tiny_config, tmp_path):
    """Which keys the user set is recorded, not guessed from the values: data.max_tokens=50 (the default) given
    explicitly is not replaced by the teacher's 20."""
    from kgdistill.api import train
    from kgdistill.config import build_config
    from kgdistill.jobs.distill import inherit_teacher_data

    train(tiny_config(data__max_tokens=20), tmp_path / "t", evaluate_after=False, progress=False)
    set_by_user = build_config(None, overrides={"data": {"max_tokens": 50}})
    inherit_teacher_data(set_by_user, tmp_path / "t", {})
    assert set_by_user.data.max_tokens == 50 and set_by_user.data.dataset == tiny_config().data.dataset
    left_unset = build_config(None, overrides={"train": {"lr": 1e-3}})
    inherit_teacher_data(left_unset, tmp_path / "t", {})
    assert left_unset.data.max_tokens == 20
