"""The experiment trackers against the real packages: what a tiny training logged, read back by MLflow's client and
TensorBoard's event reader, equals the JSONL log (skipped when a package is missing)."""
from __future__ import annotations

import json

import pytest

from conftest import make_tiny_config

from kgdistill.jobs.train import train


def trained_with(tracker: str, tiny_kg, tiny_plm, run_dir) -> tuple[dict, dict]:
    """Train with ``tracker``; the JSONL log's training losses and validations, by step."""
    config = make_tiny_config(tiny_kg, tiny_plm, train__validate_every=2, train__valid_ranking=True)
    train(config, run_dir, evaluate_after=False, progress=False, tracker=tracker)
    records = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in records if "loss" in r}
    valid = {r["step"]: r for r in records if "valid_mrr" in r}
    return losses, valid


def test_mlflow_store_holds_the_logged_metrics_and_config(tiny_kg, tiny_plm, cache_dir, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "run"
    losses, valid = trained_with("mlflow", tiny_kg, tiny_plm, run_dir)
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{(run_dir / 'mlflow.db').resolve()}")
    runs = client.search_runs([client.get_experiment_by_name("kgdistill").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["train.lr"] == "0.001" and run.data.params["data.dataset"] == str(tiny_kg)
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert {m.step: m.value for m in history} == pytest.approx(losses)
    mrr = client.get_metric_history(run.info.run_id, "valid/valid_mrr")
    assert {m.step: m.value for m in mrr} == pytest.approx({s: r["valid_mrr"] for s, r in valid.items()})
    assert sorted(valid) == [2, 4, 6]
    assert {"valid/valid_acc_at_1", "valid/valid_hits_at_10", "train/lr"} <= set(run.data.metrics)  # MLflow refuses @


def test_tensorboard_event_file_holds_the_logged_scalars(tiny_kg, tiny_plm, cache_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    losses, valid = trained_with("tensorboard", tiny_kg, tiny_plm, run_dir)
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "valid/valid_loss", "valid/valid_acc@1", "valid/valid_mrr"} <= scalars
    assert {e.step: e.value for e in events.Scalars("train/loss")} == pytest.approx(losses, rel=1e-6)
    assert {e.step: e.value for e in events.Scalars("valid/valid_mrr")} == pytest.approx(
        {s: r["valid_mrr"] for s, r in valid.items()}, rel=1e-6)
