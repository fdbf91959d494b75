"""The trainer's callbacks: the order of the hooks, and the JSONL log, progress bar and checkpoints they carry."""
from __future__ import annotations

import json

from kgdistill.training.callbacks import Callback
from kgdistill.runfolder import RunFolder


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_train_begin(self, trainer):
        self.events.append(("begin", trainer.step))

    def on_validate(self, trainer, metrics):
        self.events.append(("validate", trainer.step, sorted(metrics)))

    def on_step_end(self, trainer, step):
        self.events.append(("step", step.step, step.done, step.left, step.record is not None,
                            step.validation is not None))

    def on_save(self, trainer, name, folder):
        assert (folder / "model.json").is_file()
        self.events.append(("save", trainer.step, name))

    def on_train_end(self, trainer, result):
        self.events.append(("end", None if result is None else result.steps))


def test_hooks_come_in_order_and_the_log_stays_the_source_of_truth(tiny_config, tmp_path):
    from kgdistill.api import train

    recorder = Recorder()
    config = tiny_config(train__max_steps=4, train__checkpoint_every=2, train__log_every=2, train__validate_every=2)
    train(config, tmp_path / "run", evaluate_after=False, progress=False, callbacks=[recorder])
    events = recorder.events
    assert events[0] == ("begin", 0) and events[-1] == ("end", 4)
    assert [e[1:4] for e in events if e[0] == "step"] == [(1, 1, 3), (2, 2, 2), (3, 3, 1), (4, 4, 0)]
    validated = [e[1] for e in events if e[0] == "step" and e[5]]
    assert validated == [2, 4] and [e[1] for e in events if e[0] == "validate"] == [2, 4]
    for step in validated:  # a validation comes before the end of its step, the best checkpoint with it
        assert events.index(("validate", step, ["valid_acc@1", "valid_loss"])) < \
            events.index(next(e for e in events if e[0] == "step" and e[1] == step))
    saves = [e[1:] for e in events if e[0] == "save"]
    assert (2, RunFolder.LAST) in saves and (4, RunFolder.LAST) in saves and (2, RunFolder.BEST) in saves
    # checkpoint-last records that step's validation
    assert saves.index((2, RunFolder.BEST)) < saves.index((2, RunFolder.LAST))
    lines = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [(x["step"], "loss" in x) for x in lines] == [(2, True), (2, False), (4, True), (4, False)]
    assert [e[1] for e in events if e[0] == "step" and e[4]] == [2, 4]  # a record exactly where the log has one


def test_the_end_hook_runs_when_training_fails(tiny_config, tmp_path, monkeypatch):
    import pytest

    from kgdistill.api import train
    from kgdistill.training import trainer as trainer_module

    def fail(self, batch):
        raise RuntimeError("boom")

    monkeypatch.setattr(trainer_module.Trainer, "train_step", fail)
    recorder = Recorder()
    with pytest.raises(RuntimeError, match="boom"):
        train(tiny_config(), tmp_path / "run", evaluate_after=False, progress=False, callbacks=[recorder])
    assert recorder.events == [("begin", 0), ("end", None)]


def test_early_stopping_ends_the_run_on_a_checkpoint_when_valid_stops_improving(tiny_config, tmp_path, monkeypatch):
    from kgdistill.jobs.train import train
    from kgdistill.training.trainer import Trainer

    scores = iter([0.30, 0.50, 0.45, 0.44, 0.43, 0.42, 0.41, 0.40])  # best at the 2nd validation, then worse

    def validate(self):
        return {"valid_loss": 1.0, "valid_acc@1": next(scores)}

    monkeypatch.setattr(Trainer, "validate", validate)
    config = tiny_config(train__max_steps=8, train__validate_every=1, train__checkpoint_every=100,
                         train__early_stopping_patience=2)
    outcome = train(config, tmp_path / "run", evaluate_after=False, progress=False)
    assert outcome.train.steps == 4 and outcome.train.best_valid == 0.50  # two validations without improvement
    state = json.loads((tmp_path / "run/checkpoint-last/trainer_state/state.json").read_text())
    assert state["progress"]["step"] == 4  # the stop ended on a checkpoint that records it
    assert (tmp_path / "run/checkpoint-best").is_dir()
