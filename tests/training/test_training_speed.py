"""Training-speed options: length bucketing (train.length_bucketing), torch.compile (train.compile), the head-alone
text skipped without self-negatives, and train_rate's options used by bench/train_speed.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny_kg, make_tiny_plm, tiny_overrides
from kgdistill.data.batching import BatchOrder
from kgdistill.errors import ConfigError, KGDistillError


@pytest.fixture()
def skewed(tiny_config, tmp_path):
    """The tiny KG with one entity in four carrying a long description (truncated at 24 tokens), the rest none."""
    from kgdistill.api import DataContext
    from kgdistill.models.plm import load_tokenizer, resolve_plm

    kg = make_tiny_kg(tmp_path / "skewed-kg")
    lines = (kg / "entities.tsv").read_text(encoding="utf-8").splitlines()
    rows = [lines[0]]
    for i, line in enumerate(lines[1:]):
        ident, name, _ = line.split("\t")
        rows.append(f"{ident}\t{name}\t{' '.join(['animal'] * 30) if i % 4 == 0 else ''}")
    (kg / "entities.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    config = tiny_config(data__dataset=str(kg), data__use_neighbors=False, train__length_bucketing=True,
                         train__bucket_pool=4)
    return config, DataContext(config, load_tokenizer(resolve_plm(config.model.plm))).train_set()


def test_padding_waste_counts_the_pad_tokens_of_real_batches(skewed):
    _, examples = skewed
    batches = np.arange(80).reshape(10, 8)
    pads = slots = 0
    for rows in batches:
        batch = examples.batch(rows)
        for inputs in (batch.hr, batch.tail, batch.head):
            pads += int((inputs.attention_mask == 0).sum())
            slots += inputs.attention_mask.numel()
    assert examples.padding_waste(batches, with_heads=True) == pytest.approx(pads / slots)
    assert examples.padding_waste(batches, with_heads=False) != pytest.approx(pads / slots)


def test_bucketing_keeps_each_epochs_examples_and_cuts_padding(skewed):
    config, examples = skewed
    bucketed = BatchOrder.for_training(examples, config.train, config.seed)
    config.train.length_bucketing = False
    plain = BatchOrder.for_training(examples, config.train, config.seed)
    assert bucketed.steps_per_epoch == plain.steps_per_epoch == len(examples) // 8
    waste = {"plain": [], "bucketed": []}
    for epoch in range(4):
        a, b = plain.epoch(epoch), bucketed.epoch(epoch)
        assert a.shape == b.shape == (plain.steps_per_epoch, 8)
        assert sorted(a.ravel()) == sorted(b.ravel())  # the same examples, each once
        assert len(set(b.ravel())) == b.size
        assert not np.array_equal(a, b)
        waste["plain"].append(examples.padding_waste(a, with_heads=True))
        waste["bucketed"].append(examples.padding_waste(b, with_heads=True))
    assert np.mean(waste["bucketed"]) < 0.7 * np.mean(waste["plain"]), waste


def test_bucketing_is_seeded_and_keeps_batches_random(skewed):
    config, examples = skewed
    lengths = np.stack(examples.encoder_lengths(with_heads=False), 1)
    order = BatchOrder(len(examples), 8, seed=3, lengths=lengths, pool=4)
    again = BatchOrder(len(examples), 8, seed=3, lengths=lengths, pool=4)
    other = BatchOrder(len(examples), 8, seed=4, lengths=lengths, pool=4)
    assert np.array_equal(order.epoch(0), again.epoch(0)) and np.array_equal(order.epoch(1), again.epoch(1))
    assert not np.array_equal(order.epoch(0), other.epoch(0))
    assert not np.array_equal(order.epoch(0), order.epoch(1))
    assert np.array_equal(order.rows(order.steps_per_epoch + 2), order.epoch(1)[2])
    means = lengths[order.epoch(0), 0].mean(1)
    assert not (np.all(np.diff(means) >= 0) or np.all(np.diff(means) <= 0))  # batch order shuffled, not by length


def test_trainer_draws_bucketed_batches(skewed, tmp_path):
    from kgdistill.api import build_model
    from kgdistill.losses.contrastive import InfoNCELoss
    from kgdistill.training.objectives import ContrastiveObjective
    from kgdistill.training.trainer import Trainer

    config, examples = skewed
    model, tokenizer = build_model(config)
    objective = ContrastiveObjective(model, InfoNCELoss(model, config.loss, None, 8))
    trainer = Trainer(tmp_path, config, objective, examples, None, tokenizer, progress=False)
    expected = BatchOrder.for_training(examples, config.train, config.seed)
    assert expected.lengths is not None
    for step in (0, 3, trainer.steps_per_epoch + 1):
        assert np.array_equal(trainer._rows(step), expected.rows(step))


@pytest.mark.parametrize("self_negative", [True, False])
def test_head_alone_text_is_encoded_only_for_self_negatives(tiny_config, tmp_path, monkeypatch, self_negative):
    from kgdistill.models.biencoder import BiEncoder

    calls = {"entities": 0}
    real = BiEncoder.encode_entities

    def counting(self, batch, hidden=False):
        calls["entities"] += 1
        return real(self, batch, hidden)

    monkeypatch.setattr(BiEncoder, "encode_entities", counting)
    trainer, _ = _two_steps(tiny_config(loss__self_negative=self_negative, train__max_steps=2), tmp_path / "run")
    assert trainer.objective.needs_heads is self_negative
    trainer.train()
    assert calls["entities"] == 2 * (2 if self_negative else 1)  # tails, and heads alone only for self-negatives


def test_train_rate_runs_the_trainers_batches_with_its_options(tiny_config):
    from kgdistill.api import DataContext
    from kgdistill.jobs.bench import train_rate
    from kgdistill.models.plm import load_tokenizer, resolve_plm

    config = tiny_config(loss__self_negative=False, train__length_bucketing=True, train__bucket_pool=2)
    data = DataContext(config, load_tokenizer(resolve_plm(config.model.plm)))
    times: list[float] = []
    rate = train_rate(config, 8, "bf16", repeats=3, data=data, warmup=2, times=times)
    assert len(times) == 5 and rate > 0
    assert rate == pytest.approx(8 / np.median(times[2:]), rel=0.5)


# ---------------------------------------------------------------------------------------------------- compile
def _compile_or_skip() -> None:
    from kgdistill.training.trainer import compile_encoders

    try:
        compile_encoders(torch.nn.Linear(1, 1))  # only the probe: no encoder inside
    except KGDistillError as exc:
        pytest.skip(f"torch.compile is unavailable here: {exc}")


def _two_steps(config, run_dir):
    from kgdistill.api import DataContext, build_model
    from kgdistill.losses.contrastive import InfoNCELoss
    from kgdistill.training.objectives import ContrastiveObjective
    from kgdistill.training.trainer import Trainer

    torch.manual_seed(0)
    model, tokenizer = build_model(config)
    data = DataContext(config, tokenizer)
    objective = ContrastiveObjective(model, InfoNCELoss(model, config.loss, data.known_train, 8))
    trainer = Trainer(run_dir, config, objective, data.train_set(), None, tokenizer, progress=False)
    return trainer, {k: v.clone() for k, v in model.state_dict().items()}


def _checkpoint(run_dir) -> dict[str, dict[str, torch.Tensor]]:
    folder = run_dir / "checkpoint-last"
    return {p.relative_to(folder).as_posix(): load_file(str(p)) for p in sorted(folder.rglob("*.safetensors"))}


@pytest.mark.slow
def test_compiled_training_saves_the_same_checkpoint_layout_and_resumes(tiny_config, tmp_path):
    _compile_or_skip()
    plm = str(make_tiny_plm(tmp_path / "plm", layers=1))  # compile time grows with depth
    eager, _ = _two_steps(tiny_config(train__max_steps=2, model__plm=plm), tmp_path / "eager")
    eager.train()
    config = tiny_config(train__max_steps=2, train__compile=True, model__plm=plm)
    compiled, initial = _two_steps(config, tmp_path / "compiled")
    model = compiled.objective.model
    assert model.hr_encoder._compiled_call_impl is not None and model.tail_encoder._compiled_call_impl is not None
    assert list(model.state_dict()) == list(initial)
    compiled.train()
    want, got = _checkpoint(tmp_path / "eager"), _checkpoint(tmp_path / "compiled")
    assert sorted(got) == sorted(want)
    for file, tensors in want.items():
        assert sorted(got[file]) == sorted(tensors), file
        assert all(got[file][k].shape == v.shape for k, v in tensors.items()), file
    weights = got["model.safetensors"]
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert not torch.equal(weights["hr_encoder.encoder.layer.0.attention.self.query.weight"],
                           initial["hr_encoder.encoder.layer.0.attention.self.query.weight"])
    again, _ = _two_steps(config, tmp_path / "compiled")  # resume loads into compiled modules (no step left to run)
    assert again.resume() and again.step == 2
    for key, value in again.objective.model.state_dict().items():
        assert torch.equal(value, weights[key]), key


def test_compile_failure_is_one_clear_line(tiny_config, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        def run(*a, **k):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nlong traceback")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(KGDistillError, match=r"^config key 'train.compile': torch.compile does not work on this "
                                             r"machine \(RuntimeError: InvalidCxxCompiler: No working C\+\+ compiler "
                                             r"found\); set train.compile=false$"):
        _two_steps(tiny_config(train__compile=True), tmp_path / "run")


# ---------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("key, value, message", [
    ("length_bucketing", "yes", "config key 'train.length_bucketing': expected true or false"),
    ("length_bucketing", 1, "config key 'train.length_bucketing': expected true or false"),
    ("bucket_pool", 0, "config key 'train.bucket_pool': must be > 0"),
    ("bucket_pool", -4, "config key 'train.bucket_pool': must be > 0"),
    ("bucket_pool", 2.5, "config key 'train.bucket_pool': expected an integer"),
    ("compile", "true-ish", "config key 'train.compile': expected true or false"),
])
def test_bad_speed_options_are_refused(tiny_config, key, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        tiny_config(**{f"train__{key}": value})


def test_train_rate_counts_flops_over_real_tokens_only(tiny_config):
    """train_vs_token_bound's denominator: 3 x forward FLOPs of every real (non-pad) token of the three sequences."""
    from kgdistill.api import DataContext
    from kgdistill.jobs.bench import encoder_flops, sequence_flops, train_rate
    from kgdistill.models.plm import load_encoder, load_tokenizer, resolve_plm

    config = tiny_config()
    data = DataContext(config, load_tokenizer(resolve_plm(config.model.plm)))
    flops: list[float] = []
    train_rate(config, 8, "fp32", repeats=1, data=data, warmup=0, flops=flops)
    plm = load_encoder(resolve_plm(config.model.plm)).config
    batch = data.train_set().batch(np.arange(8), with_heads=True)
    mask = batch.hr.attention_mask.clone()
    mask[:, -1] = 0  # a pad position counts nothing
    assert sequence_flops(plm, mask) == sum(encoder_flops(plm, int(n)) for n in mask.sum(1))
    assert len(flops) == 1 and flops[0] > 0
    padded = 3 * 3 * 8 * encoder_flops(plm, batch.hr.input_ids.shape[1])
    assert flops[0] < padded * 1.5  # same order as three padded passes, never counting pads of longer batches


# ---------------------------------------------------------------------------------------------------- stage cost
def test_stage_costs_time_each_planned_stage_beside_the_teachers_own_step(run_dir):
    from kgdistill.config import build_config, parse_overrides
    from kgdistill.jobs.bench import stage_costs
    from kgdistill.jobs.pipeline import plan_inputs
    from kgdistill.pmd.plan import plan

    base = tiny_overrides(distill__stage_steps=None) + ["distill.budget_ratio=1", "train.max_steps=6",
                                                         "distill.embedding_weight=1", "distill.pre_distill=false"]
    variants = {"2L": base + ["distill.grades=[{layers: 2, mask_rate: 0}]"],
                "query": base + ["distill.grades=[{layers: 2, mask_rate: 0}]", "distill.student_side=query"],
                "query+transfer": base + ["distill.grades=[{layers: 2, mask_rate: 0}]", "distill.student_side=query",
                                          "distill.transfer_queries=8"]}
    result = stage_costs(run_dir, variants, rounds=3, warmup=1, preset=None)
    rows = {row["name"]: row for row in result["rows"]}
    assert list(rows) == ["teacher", "2L", "query", "query+transfer"]
    assert all(len(times) == 3 for times in result["times"].values())
    for name, overrides in variants.items():  # the planned side is the pipeline's own plan of that config
        config = build_config(None, overrides=parse_overrides([f"distill.teacher={run_dir}", *overrides]))
        depth, lengths = plan_inputs(config)
        stage = next(s for s in plan(config, depth, 6, lengths) if s.kind == "pmd")
        assert (rows[name]["planned_cost"], rows[name]["steps"], rows[name]["layers"]) == (stage.cost, stage.steps, 2)
        assert rows[name]["measured_cost"] == pytest.approx(
            np.median(result["times"][name]) / np.median(result["times"]["teacher"]))
        ratios = np.array(result["times"][name]) / np.array(result["times"]["teacher"])
        low, middle, high = rows[name]["round_ratio_quartiles"]
        assert ratios.min() <= low <= middle <= high <= ratios.max() and middle == pytest.approx(np.median(ratios))
        lower, upper = rows[name]["measured_cost_interval"]
        assert lower <= rows[name]["measured_cost"] <= upper
    assert rows["query+transfer"]["planned_cost"] > rows["query"]["planned_cost"]  # transfer passes are charged
    assert rows["teacher"]["steps"] == 6


def test_stage_costs_of_every_stage_time_each_grade_beside_its_own_teacher(run_dir):
    """A ladder's later grades are taught by the grade above at that grade's depth; the total charges the
    distillation's stages, not its controls, against the teacher's steps."""
    from kgdistill.jobs.bench import stage_costs

    ladder = tiny_overrides(distill__stage_steps=None) + [
        "distill.budget_ratio=1", "train.max_steps=6", "distill.pre_distill=true", "distill.controls=[direct]",
        "distill.grades=[{layers: 3, mask_rate: 0.1}, {layers: 2, mask_rate: 0}]"]
    result = stage_costs(run_dir, {"L": ladder}, rounds=2, warmup=0, preset=None, all_stages=True)
    rows = {row["name"]: row for row in result["rows"]}
    assert list(rows) == ["teacher", "L/01-pre-distilled", "L/01-pre-distilled-direct", "L/02-grade1-3L",
                          "L/02-grade1-3L-direct", "L/03-grade2-2L", "L/03-grade2-2L-direct"]
    assert [(rows[n]["layers"], rows[n]["teacher_layers"]) for n in list(rows)[1:]] == [
        (4, 4), (4, None), (3, 4), (3, None), (2, 3), (2, None)]
    planned = [rows[n] for n in ("L/01-pre-distilled", "L/02-grade1-3L", "L/03-grade2-2L")]
    for r in planned:  # the teacher's 6 steps split evenly over three stages, each rounded to whole steps
        assert abs(r["steps"] * r["planned_cost"] - 2) <= r["planned_cost"] / 2
    assert result["totals"]["L"] == pytest.approx(sum(r["wall_s"] for r in planned) / rows["teacher"]["wall_s"])


def test_stage_costs_remove_their_scratch_folder_also_when_a_step_raises(run_dir, tmp_path, monkeypatch):
    import tempfile

    from kgdistill.jobs import bench

    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_root))

    def failing_step(trainer):
        assert list(scratch_root.glob("stage-cost-*"))  # the stages were built there
        raise RuntimeError("step failed")

    monkeypatch.setattr(bench, "timed_step", failing_step)
    variants = {"2L": tiny_overrides() + ["distill.grades=[{layers: 2, mask_rate: 0}]", "distill.pre_distill=false"]}
    with pytest.raises(RuntimeError, match="step failed"):
        bench.stage_costs(run_dir, variants, rounds=1, warmup=0, preset=None)
    assert not list(scratch_root.glob("stage-cost-*"))
