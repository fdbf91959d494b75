"""``kgdistill tune``: Optuna trials on the tiny fixtures that only ever evaluate on valid, prune, resume after a kill
and leave a best config that re-trains to the same valid MRR."""
from __future__ import annotations

import json

import pytest
import yaml

from conftest import tiny_overrides

optuna = pytest.importorskip("optuna")

from kgdistill.cli import main  # noqa: E402
from kgdistill.errors import ConfigError  # noqa: E402
from kgdistill.evaluation.ranking import Evaluator  # noqa: E402
from kgdistill.jobs.train import train  # noqa: E402
from kgdistill.jobs.tune import check_space, train_trial, trial_config, tune  # noqa: E402

SPACE = {"train.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
         "train.max_steps": {"type": "categorical", "choices": [4, 6]},
         "loss.margin": {"type": "float", "low": 0.0, "high": 0.05}}


@pytest.fixture()
def splits_evaluated(monkeypatch) -> list[str]:
    """Every split any evaluator ranks (the final evaluations and the valid ranker alike)."""
    seen = []
    original = Evaluator.evaluate

    def spy(self, model, split=None, *args, **kwargs):
        seen.append(split or self.config.split)
        return original(self, model, split, *args, **kwargs)

    monkeypatch.setattr(Evaluator, "evaluate", spy)
    return seen


def counting(calls: list):
    def job(config, run_dir, callbacks):
        calls.append(run_dir.name)
        return train_trial(config, run_dir, callbacks)
    return job


def test_tune_resumes_after_a_kill_never_reads_test_and_its_best_config_retrains_alike(tiny_config, tmp_path,
                                                                                         splits_evaluated):
    base = tiny_config(train__valid_ranking=True)
    out = tmp_path / "study"
    calls: list[str] = []
    first = tune(base, SPACE, out, 2, job=counting(calls), pruner=optuna.pruners.NopPruner())
    assert [t["state"] for t in first.trials] == ["complete", "complete"] and len(calls) == 2

    # a process killed in the middle of a trial leaves it RUNNING in study.db: the next call runs its parameters again
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'study.db'}")
    study = optuna.load_study(study_name="kgdistill-tune", storage=storage)
    study.enqueue_trial({"train.lr": 1e-3, "train.max_steps": 4, "loss.margin": 0.01})
    killed = study.ask({key: optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True) if key == "train.lr" else
                        optuna.distributions.CategoricalDistribution([4, 6]) if key == "train.max_steps" else
                        optuna.distributions.FloatDistribution(0.0, 0.05) for key in SPACE})
    result = tune(base, SPACE, out, 3, job=counting(calls), pruner=optuna.pruners.NopPruner())
    assert len(calls) == 3, "only one new trial runs"
    states = {t["number"]: t["state"] for t in result.trials}
    assert states[killed.number] == "fail" and sum(s == "complete" for s in states.values()) == 3
    assert result.trials[-1]["params"] == killed.params
    result = tune(base, SPACE, out, 4, job=counting(calls), pruner=optuna.pruners.NopPruner())
    assert len(calls) == 4 and result.trials[-1]["params"] not in [t["params"] for t in result.trials[:-1]], \
        "a resumed study samples anew"

    assert set(splits_evaluated) == {"valid"}, "a trial never evaluates the test split"
    for row in result.trials:
        if row["state"] == "complete":
            assert json.loads((tmp_path / row["run_dir"] / "metrics.json").read_text())["split"] == "valid"
    assert (out / "trials.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((out / "trials.json").read_text())["best"]["number"] == result.best["number"]
    assert f"| {result.best['number']} | complete |" in (out / "trials.md").read_text()

    # the best config, as `kgdistill train --config` takes it, re-trains to the same valid MRR
    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best["eval"]["split"] == base.eval.split
    assert best["train"]["lr"] == pytest.approx(result.best["params"]["train.lr"])
    rerun = tmp_path / "rerun"
    assert main(["train", "--config", str(out / "best_config.yaml"), "--output-dir", str(rerun),
                 "eval.split=valid"]) == 0
    metrics = json.loads((rerun / "metrics.json").read_text())
    assert metrics["split"] == "valid"
    assert metrics["no_rerank"]["both"]["mrr"] == pytest.approx(result.best["value"], abs=1e-9)


def test_a_pruned_trial_leaves_a_resumable_run(tiny_config, tmp_path):
    base = tiny_config(train__validate_every=2, train__checkpoint_every=4)
    out = tmp_path / "study"
    # in-batch accuracy is at most 1: a threshold of 2 prunes every trial at its first validation (step 2)
    result = tune(base, {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-3}}, out, 2,
                  pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    assert [t["state"] for t in result.trials] == ["pruned", "pruned"]
    assert result.best is None and not (out / "best_config.yaml").exists()
    row = result.trials[0]
    run_dir = tmp_path / row["run_dir"]
    info = json.loads((run_dir / "trial.json").read_text())
    assert info["state"] == "pruned" and list(info["reported"]) == ["2"] and row["last_step"] == 2
    assert not (run_dir / "metrics.json").exists()
    steps = [json.loads(line)["step"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert max(steps) == 2
    resumed = train(trial_config(base, row["params"]), run_dir, resume=True, evaluate_after=False, progress=False)
    assert resumed.train.steps == base.train.max_steps


def test_the_search_space_is_checked_against_the_base_config(tiny_config):
    base = tiny_config()
    for space, message in (
            ({"train.lrr": {"type": "float", "low": 1, "high": 2}}, "unknown config key 'train.lrr'"),
            ({"distill.grades[0].lr": {"type": "float", "low": 1e-4, "high": 1e-3}}, "has no item 0"),
            ({"train": {"type": "float", "low": 1, "high": 2}}, "a section"),
            ({"train.lr": {"type": "float", "low": 1e-3, "high": 1e-4}}, "above 'high'"),
            ({"train.lr": {"type": "float", "low": 0, "high": 1, "log": True}}, "log scale"),
            ({"train.batch_size": {"type": "int", "low": 2.5, "high": 8}}, "an integer"),
            ({"train.batch_size": {"type": "categorical", "choices": []}}, "non-empty list"),
            ({"train.lr": {"type": "uniform"}}, "type: float|int|categorical"),
            ({"train.lr": {"type": "float", "low": 1e-4, "high": 1e-3, "scale": 2}}, "unknown field 'scale'")):
        with pytest.raises(ConfigError, match=message):
            check_space(space, base)
    ladder = tiny_config(distill__grades=[{"layers": 2, "mask_rate": 0.0}])
    check_space({"distill.grades[0].lr": {"type": "float", "low": 1e-4, "high": 1e-3}}, ladder)
    assert trial_config(ladder, {"distill.grades[0].lr": 5e-4}).distill.grades[0].lr == 5e-4
    with pytest.raises(ConfigError, match="distill.alpha"):  # a sampled value is validated like any config value
        trial_config(base, {"distill.alpha": 1.5})


def test_cli_tune_pipeline_job(tiny_plm, tiny_kg, cache_dir, tmp_path, splits_evaluated):
    space = tmp_path / "space.yaml"
    space.write_text("distill:\n  pre_distill: false\n  grades: [{layers: 2, mask_rate: 0.0}]\n"
                     "search:\n  distill.grades[0].lr: {type: float, low: 1.0e-4, high: 1.0e-3, log: true}\n")
    out = tmp_path / "study"
    argv = ["tune", "--config", str(space), "--output-dir", str(out), "--trials", "1", "--job", "pipeline",
            "--preset", "paper", "--plm", str(tiny_plm), "--dataset", str(tiny_kg), *tiny_overrides()]
    assert main(argv) == 0
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert [t["state"] for t in trials] == ["complete"]
    report = json.loads((tmp_path / trials[0]["run_dir"] / "report.json").read_text())
    assert [r["evaluation"]["split"] for r in report["rows"]] == ["valid", "valid"]
    assert set(splits_evaluated) == {"valid"}
    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best["distill"]["grades"][0]["lr"] == pytest.approx(trials[0]["params"]["distill.grades[0].lr"])
    assert main(argv[:-len(tiny_overrides())] + tiny_overrides(train__lr=0.5)) == 2  # another base: refused
