"""PMD's plan (``kgdistill.pmd.plan``): each stage's steps from the budget (cheap grades get more, controls equal
compute), the shallow grades' rates, and every preset planning within its budget."""
from __future__ import annotations

import pytest


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


def test_step_cost_weighs_each_pass_by_its_sequences_tokens():
    """Where student and teacher encode the same sequences (symmetric students, direct controls) lengths cancel; the
    query-only student's trained pass is over queries while the teacher's entity passes are over entities, and each
    transfer query costs its own length: there tokens decide (BENCHMARKS.md section 7u)."""
    from kgdistill.pmd.plan import SequenceLengths, step_cost

    lengths = SequenceLengths(query=31.6, entity=26.8, transfer=29.8)
    for kwargs in ({}, {"direct": True}):
        assert step_cost(2, 6, 6, **kwargs, lengths=lengths) == pytest.approx(step_cost(2, 6, 6, **kwargs))
    teacher_step = 3 * 6 * (31.6 + 2 * 26.8)
    assert step_cost(2, 6, 6, query_only=True, lengths=lengths) == pytest.approx(
        (3 * 2 * 31.6 + 6 * 31.6 + 2 * 6 * 26.8) / teacher_step)
    assert step_cost(2, 6, 6, query_only=True, transfer=1.0, lengths=lengths) == pytest.approx(
        step_cost(2, 6, 6, query_only=True, lengths=lengths) + (3 * 2 + 6) * 29.8 / teacher_step)
    # longer queries than entities: the query-only student costs more than the sequence count says
    assert step_cost(2, 6, 6, query_only=True, lengths=lengths) > step_cost(2, 6, 6, query_only=True)


def test_sequence_lengths_are_the_training_sets_and_a_fixed_transfer_draws(tiny_config):
    from kgdistill.data.batching import TransferQueries
    from kgdistill.models.plm import load_tokenizer, resolve_plm
    from kgdistill.pmd.plan import sequence_lengths
    from kgdistill.store.context import DataContext

    config = tiny_config()
    data = DataContext(config, load_tokenizer(resolve_plm(config.model.plm)))
    lengths = sequence_lengths(data, sample=64)
    query, tail, head = data.train_set().encoder_lengths(with_heads=True)
    assert lengths.query == pytest.approx(query.mean())
    assert lengths.entity == pytest.approx((tail.mean() + head.mean()) / 2)
    assert lengths.query > lengths.entity  # a query is its head's text plus the relation's
    drawn = TransferQueries(data.texts, data.tokenized, 64, seed=0).batch(0).attention_mask.sum(1).float().mean()
    assert lengths.transfer == pytest.approx(float(drawn)) and lengths == sequence_lengths(data, sample=64)


def test_transfer_queries_are_charged_to_the_budget():
    """Each transfer query costs a trained student query pass and a teacher one: at the same budget a stage with
    transfer queries (and the serving grade) takes fewer steps; its controls, which run none, keep equal compute."""
    from kgdistill.config import build_config
    from kgdistill.pmd.plan import plan, step_cost

    def stages(transfer: int, query_transfer: int | None = None) -> dict:
        config = build_config("quick", overrides={"distill": {
            "budget": 960, "serving_grade": True, "transfer_queries": transfer,
            "query_transfer_queries": query_transfer, "controls": ["direct"]}})
        return {s.kind: s for s in plan(config, 6)}

    plain, more = stages(0, 0), stages(64)  # quick's batch is 128: half a query more per example
    for kind in ("pmd", "query"):
        assert more[kind].cost > plain[kind].cost and more[kind].steps <= plain[kind].steps
    assert more["pmd"].cost == pytest.approx(step_cost(2, 6, 6, entity_layers=6) + 0.5 * (3 * 2 + 6) / 54)
    assert more["pmd"].steps * more["pmd"].cost == pytest.approx(960, rel=0.01)
    assert more["direct"].cost == plain["direct"].cost
    assert more["direct"].steps * more["direct"].cost == pytest.approx(960, rel=0.01)
    serving_only = stages(0, 64)  # the serving student's own set: the grade pays nothing
    assert serving_only["pmd"].cost == plain["pmd"].cost and serving_only["query"].cost == more["query"].cost


def test_lr_depth_power_sets_the_shallow_grades_and_their_controls():
    """Grades scale the students' rate distill.lr by depth (a grade's own lr wins); the teacher keeps train.lr."""
    from kgdistill.config import build_config
    from kgdistill.pmd.plan import plan, stage_run_config

    config = build_config("quick-ladder", overrides={"train": {"lr": 3e-4},
                                              "distill": {"lr": 1e-4, "lr_depth_power": 2.0, "controls": ["direct"],
                                                          "grades": [{"layers": 3, "mask_rate": 0.1},
                                                                     {"layers": 2, "mask_rate": 0.0, "lr": 5e-4}]}})
    stages = plan(config, 6)
    lrs = {s.name: s.lr for s in stages}
    assert lrs == pytest.approx({"00-teacher": None, "01-pre-distilled": 1e-4, "01-pre-distilled-direct": 1e-4,
                                 "02-grade1-3L": 4e-4, "02-grade1-3L-direct": 4e-4, "03-grade2-2L": 5e-4,
                                 "03-grade2-2L-direct": 5e-4})
    grade = stage_run_config(config, stages[3], teacher="T")  # the stage's job trains at its stage's rate
    assert grade.train.lr == grade.distill.lr == pytest.approx(4e-4)
    config.distill.lr_depth_power = 0.0  # the paper: one rate everywhere
    assert {s.lr for s in plan(config, 6) if s.layers == 3} == {1e-4}
    config.distill.lr, config.distill.lr_depth_power = None, 2.0  # no students' rate: the teacher's is the base
    lrs = {s.name: s.lr for s in plan(config, 6)}
    assert lrs["01-pre-distilled"] is None and lrs["02-grade1-3L"] == pytest.approx(1.2e-3)


def test_quick_presets_share_the_teacher_rate_and_keep_the_measured_student_rates():
    """The teacher's 3e-4 (BENCHMARKS.md 7i) did not move the students' rates measured at 1e-4 (sections 2-3)."""
    from kgdistill.config import build_config
    from kgdistill.pmd.plan import plan

    for name, expected in (("quick", {"02-grade1-2L": 9e-4}),
                           ("quick-ladder", {"01-pre-distilled": 1e-4, "02-grade1-5L": 1.44e-4, "03-grade2-3L": 4e-4,
                                             "04-grade3-2L": 9e-4})):
        config = build_config(name)
        assert config.train.lr == pytest.approx(3e-4), name
        assert {s.name: s.lr for s in plan(config, 6) if s.kind == "pmd"} == pytest.approx(expected), name


def test_every_preset_is_a_valid_config_that_plans_within_its_budget(tmp_path):
    """What must hold of every preset, rather than what one says (config.py says that): it builds, its config.yaml
    reads back as the same config, its ladder never gets deeper, and where it sets a budget the distillation stages
    spend that budget in teacher-step equivalents, one jump or several grades."""
    from kgdistill.config import PRESETS, build_config
    from kgdistill.pmd.plan import distill_budget, plan

    assert PRESETS
    for name in PRESETS:
        config = build_config(name)
        config.save(tmp_path / f"{name}.yaml")
        assert build_config(None, file=tmp_path / f"{name}.yaml").to_dict() == config.to_dict(), name
        layers = [s.layers for s in plan(config, 6) if s.kind == "pmd"]
        assert layers and layers == sorted(layers, reverse=True) and layers[-1] < 6, (name, layers)
        budget = distill_budget(config, config.train.max_steps)
        if budget:
            spent = sum(s.steps * s.cost for s in plan(config, 6) if s.kind == "pmd")
            assert spent == pytest.approx(budget, rel=0.05), name


def test_budget_ratio_gives_a_longer_trained_teacher_a_longer_distillation():
    """``quick`` spends the teacher's own steps: 180 for the teacher it trains, 540 from a teacher trained for 540
    (BENCHMARKS.md 7e: a third of that lost to fine-tuning at equal compute); a budget in steps wins over the ratio,
    and a ratio without the teacher's steps is refused naming the key."""
    from kgdistill.config import build_config
    from kgdistill.errors import ConfigError
    from kgdistill.pmd.plan import distill_budget, plan

    config = build_config("quick")
    assert config.distill.budget is None and config.distill.budget_ratio == 1.0

    def spent(stages):
        return sum(s.steps * s.cost for s in stages if s.kind == "pmd")

    assert spent(plan(config, 6)) == pytest.approx(180, rel=0.01)
    longer = plan(config, 6, teacher_steps=540)
    assert spent(longer) == pytest.approx(540, rel=0.01)
    assert longer[1].steps == 3 * plan(config, 6)[1].steps == 810
    config.distill.budget_ratio = 0.5
    assert spent(plan(config, 6, teacher_steps=540)) == pytest.approx(270, rel=0.01)
    config.distill.budget = 300.0
    assert distill_budget(config, 540) == 300.0
    config.distill.budget, config.train.max_steps, config.train.epochs = None, None, 3
    with pytest.raises(ConfigError, match="distill.budget_ratio"):
        plan(config, 6)
    config.distill.budget_ratio = None  # neither: every stage trains distill.stage_steps
    assert {s.steps for s in plan(config, 6) if s.kind == "pmd"} == {config.distill.stage_steps}
    with pytest.raises(ConfigError, match="distill.budget_ratio"):
        build_config("quick", overrides={"distill": {"budget_ratio": 0}})


def test_a_best_control_has_the_grades_compute_and_is_scored_at_its_best_valid_checkpoint():
    from kgdistill.config import build_config
    from kgdistill.pmd.plan import plan, stage_run_config

    config = build_config("quick", overrides={"distill": {"budget": 180, "controls": ["direct", "direct-best"]}})
    stages = {s.name: s for s in plan(config, 6)}
    grade, last, best = (stages[n] for n in ("02-grade1-2L", "02-grade1-2L-direct", "02-grade1-2L-direct-best"))
    assert best.kind == "direct" and best.steps == last.steps > grade.steps and best.cost == last.cost
    assert (best.checkpoint, last.checkpoint, grade.checkpoint) == ("best", "last", "last")
    job = stage_run_config(config, best, teacher="T")
    assert job.train.valid_ranking and job.eval.checkpoint == "best" and job.distill.ablation == "direct"
    plain = stage_run_config(config, last, teacher="T")
    assert not plain.train.valid_ranking and plain.eval.checkpoint == "last"
