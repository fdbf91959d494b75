"""The experiment trackers (``kgdistill.training.trackers``): TensorBoard and MLflow mirror the JSONL log, first
through fakes of both packages, then through the real packages read back by their own readers (skipped when a
package is missing); a missing tracker package is one line before any model loads."""
from __future__ import annotations

import json

import pytest

from conftest import make_tiny_config
from kgdistill.jobs.train import train


# ---------------------------------------------------------------------------------------------------- fakes
class FakeWriter:
    instances: list = []

    def __init__(self, log_dir):
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        FakeWriter.instances.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def _fake_mlflow():
    import types

    calls = []
    module = types.ModuleType("mlflow")
    for name in ("set_tracking_uri", "set_experiment", "start_run", "log_params", "log_metrics", "end_run"):
        setattr(module, name, lambda *args, _name=name, **kwargs: calls.append((_name, args, kwargs)))
    return module, calls


def _log(run):
    return [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]


def test_trackers_mirror_the_jsonl_log(tiny_config, tmp_path, monkeypatch):
    import sys
    import types

    from kgdistill.api import train

    board = types.ModuleType("torch.utils.tensorboard")
    board.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", board)
    FakeWriter.instances.clear()
    config = tiny_config(train__max_steps=4, train__log_every=2, train__validate_every=2)
    train(config, tmp_path / "tb", evaluate_after=False, progress=False, tracker="tensorboard")
    (writer,) = FakeWriter.instances
    assert writer.log_dir == str(tmp_path / "tb" / "tensorboard") and writer.closed
    expected = [(f"{'train' if 'loss' in r else 'valid'}/{k}", float(v), r["step"])
                for r in _log(tmp_path / "tb") for k, v in r.items() if k != "step"]
    assert writer.scalars == expected and any(tag == "valid/valid_acc@1" for tag, _, _ in expected)

    mlflow, calls = _fake_mlflow()
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    train(config, tmp_path / "ml", evaluate_after=False, progress=False, tracker="mlflow")
    names = [c[0] for c in calls]
    assert names[:4] == ["set_tracking_uri", "set_experiment", "start_run", "log_params"] and names[-1] == "end_run"
    assert calls[0][1][0] == f"sqlite:///{(tmp_path / 'ml' / 'mlflow.db').resolve()}"  # a local store by default
    assert calls[3][1][0]["train.lr"] == "0.001" and calls[-1][2] == {"status": "FINISHED"}
    logged = [(c[1][0], c[2]["step"]) for c in calls if c[0] == "log_metrics"]
    assert logged == [({f"{'train' if 'loss' in r else 'valid'}/{k.replace('@', '_at_')}": float(v)
                        for k, v in r.items() if k != "step"},
                       r["step"]) for r in _log(tmp_path / "ml")]


def test_a_missing_tracker_package_is_one_line_before_any_model_loads(tiny_plm, tiny_kg, tmp_path, cache_dir,
                                                                     monkeypatch, capsys):
    import sys

    from conftest import tiny_overrides
    from kgdistill.cli import main

    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    monkeypatch.setattr("kgdistill.jobs.train.build_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    rc = main(["train", "--preset", "", "--dataset", str(tiny_kg), "--plm", str(tiny_plm), "--output-dir",
               str(tmp_path / "run"), "--tracker", "mlflow", *tiny_overrides()])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("kgdistill: error: tracker 'mlflow': needs the package mlflow")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------- real packages
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
