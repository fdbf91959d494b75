"""The distill job (``kgdistill.jobs.distill``, issue 10): a student inherits its teacher's dataset and text settings
but keeps the data keys its user set, each distillation lever trains and evaluates, and the student starts at its
teacher's temperature, from the checkpoint the teacher's metrics scored."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch


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
    resolved = build_config(None, file=tmp_path / "s/config.yaml")  # no students' rate set: the job's is train.lr
    assert resolved.distill.lr is None and resolved.train.lr == pytest.approx(student_config.train.lr)


def test_distill_trains_at_the_students_rate(tiny_config, tmp_path):
    """distill.lr, when set, is the job's rate (saved as its train.lr, so the saved config repeats the run)."""
    from kgdistill.api import train
    from kgdistill.config import build_config
    from kgdistill.jobs.distill import distill

    train(tiny_config(train__max_steps=2), tmp_path / "t", evaluate_after=False, progress=False)
    config = tiny_config(train__lr=5e-2, distill__lr=2e-3, distill__teacher=str(tmp_path / "t"), distill__stage_steps=2)
    distill(config, tmp_path / "s", progress=False)
    saved = build_config(None, file=tmp_path / "s/config.yaml")
    assert saved.train.lr == saved.distill.lr == pytest.approx(2e-3)


@pytest.mark.parametrize("overrides", [
    {"distill__embedding_weight": 0.5},
    {"distill__embedding_weight": 0.5, "distill__embedding_loss": "mse"},
    {"distill__student_input": "clean", "distill__mgfd": "pooled"},
    {"distill__student_side": "query", "distill__embedding_weight": 1.0},
    {"distill__student_side": "query", "distill__embedding_weight": 1.0, "distill__query_transfer_queries": 4},
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
        assert ("l_transfer" in steps[0]) == bool(overrides.get("distill__query_transfer_queries"))
    student, _, _ = load_model(tmp_path / "s")
    teacher, _, _ = load_model(tmp_path / "t")
    if overrides.get("distill__student_side") == "query":
        assert student.num_layers == 2 and student.tail_encoder.config.num_hidden_layers == 4
        for key, value in teacher.tail_encoder.state_dict().items():  # frozen: the teacher's entity index stays valid
            assert torch.equal(student.tail_encoder.state_dict()[key], value)
    if overrides.get("model__layer_choice") == "top":
        assert student.info["layer_map"] == [2, 3]


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


@pytest.mark.parametrize("copy", [True, False])
def test_student_starts_at_the_teachers_temperature(tiny_config, tmp_path, copy):
    from kgdistill.jobs.distill import distill
    from kgdistill.store.saved import load_model
    from kgdistill.jobs.train import train

    teacher_config = tiny_config(train__max_steps=3, loss__init_temperature=0.2, train__lr=5e-2)
    train(teacher_config, tmp_path / "t", evaluate_after=False, progress=False)
    teacher, _, _ = load_model(tmp_path / "t")
    assert float(teacher.log_inv_t.detach()) != pytest.approx(float(torch.log(torch.tensor(5.0))))  # it learned
    config = tiny_config(model__init_from="teacher", distill__copy_temperature=copy, train__lr=1e-12,
                         loss__init_temperature=0.2)
    config.distill.teacher, config.model.num_layers = str(tmp_path / "t"), 2
    config.distill.mask_rate, config.distill.stage_steps = 0.0, 1
    distill(config, tmp_path / "s", progress=False)
    student, _, _ = load_model(tmp_path / "s")
    expected = float(teacher.log_inv_t.detach()) if copy else float(torch.log(torch.tensor(5.0)))
    assert float(student.log_inv_t.detach()) == pytest.approx(expected, abs=1e-6)


def test_a_student_learns_from_the_checkpoint_its_teachers_metrics_scored(tiny_config, tmp_path):
    """A teacher trained with eval.checkpoint=best reports checkpoint-best's metrics, so its students are distilled
    from checkpoint-best, not from the last one (whose temperature, copied into the student, differs)."""
    from kgdistill.jobs.distill import distill
    from kgdistill.jobs.train import train
    from kgdistill.store.saved import load_model

    teacher_config = tiny_config(train__max_steps=4, train__validate_every=1, train__checkpoint_every=1,
                                 train__valid_ranking=True, eval__checkpoint="best", train__lr=5e-2,
                                 loss__init_temperature=0.2)
    train(teacher_config, tmp_path / "t", progress=False)
    best, _, _ = load_model(tmp_path / "t", "best")
    last, _, _ = load_model(tmp_path / "t", "last")
    # the two checkpoints differ here, so the student shows which one it came from
    assert float(best.log_inv_t.detach()) != pytest.approx(float(last.log_inv_t.detach()))
    config = tiny_config(model__init_from="teacher", train__lr=1e-12, loss__init_temperature=0.2)
    config.distill.teacher, config.model.num_layers = str(tmp_path / "t"), 2
    config.distill.mask_rate, config.distill.stage_steps = 0.0, 1
    distill(config, tmp_path / "s", progress=False)
    student, _, _ = load_model(tmp_path / "s")
    assert student.info["teacher"] == str(tmp_path / "t" / "checkpoint-best")
    assert float(student.log_inv_t.detach()) == pytest.approx(float(best.log_inv_t.detach()), abs=1e-6)
