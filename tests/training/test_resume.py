"""Resume determinism and fault injection (issue 6).

(a) A run interrupted in-process (an exception right after a checkpoint, or in the middle of a step between
    checkpoints) and resumed with ``resume=True`` ends bit-identical to an uninterrupted run: weights, optimiser and
    objective state, best checkpoint, metrics.
(b) ``python -m kgdistill train`` SIGKILLed at seeded random moments (after checkpoints exist, possibly in the middle
    of writing one) and resumed with ``--resume`` each time ends with the same weights and metrics.json as the
    uninterrupted run. After each kill the last checkpoint on disk passes its manifest check.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny_kg, make_tiny_plm, tiny_overrides
from kgdistill.config import build_config, parse_overrides
from kgdistill.errors import CheckpointError, KGDistillError
from kgdistill.io import verify_manifest
from kgdistill.training.objectives import ContrastiveObjective
from kgdistill.training.trainer import Trainer
from kgdistill.runfolder import RunFolder


TOTAL_STEPS = 12  # the tiny KG has 84 training queries: 10 steps an epoch, so the run crosses an epoch boundary
ARGS = tiny_overrides(train__max_steps=TOTAL_STEPS, train__warmup_steps=2, train__checkpoint_every=1,
                      train__num_threads=1, distill__stage_steps=None)
VARIANTS = {"default": [], "pre-batch": ["loss.pre_batch=2"],  # pre-batch: a negative queue in the objective state
            "bucketing": ["train.length_bucketing=true", "train.bucket_pool=3"]}  # batch order from lengths


class Crash(Exception):
    """Stands in for a crash of the training process."""


def crash_after_checkpoint(mp: pytest.MonkeyPatch, step: int) -> None:
    """Make the trainer raise :class:`Crash` right after it has written checkpoint-last at ``step``."""
    real_save = Trainer.save

    def save(self, name=RunFolder.LAST):
        real_save(self, name)
        if name == RunFolder.LAST and self.step == step:
            raise Crash(f"after checkpoint {self.step}")

    mp.setattr(Trainer, "save", save)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    cache = tmp_path_factory.mktemp("resume-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KGDISTILL_CACHE", str(cache))
        yield {"plm": make_tiny_plm(tmp_path_factory.mktemp("resume-plm")),
               "kg": make_tiny_kg(tmp_path_factory.mktemp("resume-kg")), "cache": cache,
               "root": tmp_path_factory.mktemp("resume-runs")}


def overrides(variant: str = "default", *extra: str) -> list[str]:
    return [*ARGS, *VARIANTS[variant], *extra]


def make_config(env: dict, variant: str = "default", *extra: str):
    items = [*overrides(variant, *extra), f"data.dataset={env['kg']}", f"model.plm={env['plm']}"]
    return build_config(None, overrides=parse_overrides(items))


@pytest.fixture(scope="module")
def baseline(env):
    """Uninterrupted runs, one per variant, trained on first use."""
    from kgdistill.api import train

    runs: dict[str, Path] = {}

    def get(variant: str = "default") -> Path:
        if variant not in runs:
            run = env["root"] / f"baseline-{variant}"
            train(make_config(env, variant), run, progress=False)
            runs[variant] = run
        return runs[variant]

    return get


def _tensors(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.relative_to(folder).as_posix(): load_file(str(p)) for p in sorted(folder.rglob("*.safetensors"))}


def _metrics(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    metrics.pop("seconds")  # wall-clock timings
    return metrics


def assert_same_run(expected: Path, got: Path, optimizer_state: bool = True) -> None:
    for name in (RunFolder.LAST, RunFolder.BEST):
        want, have = _tensors(expected / name), _tensors(got / name)
        if not optimizer_state:
            want, have = ({k: v for k, v in d.items() if not k.startswith("trainer_state/")} for d in (want, have))
        assert sorted(have) == sorted(want), name
        for file, tensors in want.items():
            assert sorted(have[file]) == sorted(tensors), f"{name}/{file}"
            for key, value in tensors.items():
                assert torch.equal(have[file][key], value), f"{name}/{file}: tensor {key} differs"
    assert _metrics(got) == _metrics(expected)
    summary = [json.loads((run / "train_summary.json").read_text(encoding="utf-8")) for run in (expected, got)]
    for key in ("steps", "final_loss", "best_valid", "skipped_batches"):
        assert summary[1][key] == summary[0][key], key


# ---------------------------------------------------------------------------------------------------- (a) in-process
@pytest.mark.parametrize("variant, checkpoint_every, crash_step, where", [
    pytest.param("default", 1, 5, "after-save", id="after-checkpoint-5"),
    # killed after the final checkpoint, before train_summary.json: the resumed run trains no step, and must still
    # report the final step's loss (the subprocess SIGKILL test below lands here by chance)
    pytest.param("default", 1, TOTAL_STEPS, "after-save", id="after-the-final-checkpoint"),
    pytest.param("default", 4, 6, "mid-step", id="mid-step-7-last-checkpoint-4"),
    pytest.param("default", 3, 10, "mid-step", id="after-epoch-boundary-and-validation"),
    pytest.param("pre-batch", 2, 7, "mid-step", id="pre-batch-queue", marks=pytest.mark.slow),  # own baselines
    pytest.param("bucketing", 3, 10, "mid-step", id="length-bucketing-after-epoch-boundary", marks=pytest.mark.slow),
])
def test_interrupted_run_resumes_to_identical_weights(variant, checkpoint_every, crash_step, where, env, baseline):
    """``crash_step``: after-save -> right after the checkpoint of step ``crash_step``; mid-step -> inside the forward
    pass of step index ``crash_step`` (steps after the last checkpoint are redone on resume)."""
    from kgdistill.api import train

    expected = baseline(variant)
    run = env["root"] / f"interrupted-{variant}-{checkpoint_every}-{crash_step}-{where}"
    config = make_config(env, variant, f"train.checkpoint_every={checkpoint_every}")
    with pytest.MonkeyPatch.context() as mp:
        if where == "after-save":
            crash_after_checkpoint(mp, crash_step)
        else:
            real_forward = ContrastiveObjective.forward

            def forward(self, batch, step=0):
                if step == crash_step:
                    raise Crash(f"in step {step}")
                return real_forward(self, batch, step=step)

            mp.setattr(ContrastiveObjective, "forward", forward)
        with pytest.raises(Crash):
            train(config, run, progress=False)
    saved = json.loads((run / RunFolder.LAST / "trainer_state" / "state.json").read_text(encoding="utf-8"))["progress"]
    expected_step = crash_step if where == "after-save" else (crash_step // checkpoint_every) * checkpoint_every
    assert saved["step"] == expected_step
    assert not (run / "metrics.json").exists()

    with pytest.raises(KGDistillError, match="resume=True"):  # an existing run is never overwritten by accident
        train(config, run, progress=False)
    outcome = train(make_config(env, variant, f"train.checkpoint_every={checkpoint_every}"), run, resume=True,
                    progress=False)
    assert outcome.train.steps == TOTAL_STEPS
    assert_same_run(expected, run)


def test_query_only_stage_with_transfer_queries_resumes_to_identical_weights(env, baseline):
    """The serving student's stage: its transfer queries are drawn by step, so a stage interrupted after a checkpoint
    and resumed ends equal to one run through."""
    from kgdistill.api import distill

    stage = [f"distill.teacher={baseline('default')}", "model.num_layers=1", "distill.student_side=query",
             "distill.query_transfer_queries=8", "distill.query_embedding_weight=4",
             "distill.stage_steps=6", "train.checkpoint_every=2"]
    expected = env["root"] / "query-stage"
    distill(make_config(env, "default", *stage), expected, progress=False)
    run = env["root"] / "query-stage-interrupted"
    with pytest.MonkeyPatch.context() as mp:
        crash_after_checkpoint(mp, 4)
        with pytest.raises(Crash):
            distill(make_config(env, "default", *stage), run, progress=False)
    distill(make_config(env, "default", *stage), run, resume=True, progress=False)
    assert_same_run(expected, run)


def test_resume_with_a_different_schedule_is_refused(env, baseline):
    from kgdistill.api import train

    run = env["root"] / "changed-schedule"
    shutil.copytree(baseline("default"), run)
    with pytest.raises(CheckpointError,
                       match="saved for .* steps but this run has .*resume with the settings that saved it"):
        train(make_config(env, "default", f"train.max_steps={TOTAL_STEPS + 2}"), run, resume=True, progress=False)


def test_resume_gives_identical_weights(tiny_config, tmp_path, monkeypatch):
    """Interrupt after a checkpoint, resume, and compare with an uninterrupted run bit for bit; the resumed run's
    summary counts the earlier process's training time."""
    from kgdistill.api import train
    from kgdistill.training import trainer as trainer_module

    config = tiny_config(train__max_steps=6, train__checkpoint_every=2)
    train(config, tmp_path / "full", evaluate_after=False, progress=False)

    original = trainer_module.Trainer.save
    calls = {"n": 0}

    def crash_after_second_checkpoint(self, name=RunFolder.LAST):
        original(self, name)
        if name == RunFolder.LAST:
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.Trainer, "save", crash_after_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "cut", evaluate_after=False, progress=False)
    monkeypatch.setattr(trainer_module.Trainer, "save", original)
    progress = json.loads((tmp_path / "cut/checkpoint-last/trainer_state/state.json").read_text())["progress"]
    assert progress["step"] == 4 and progress["seconds"] > 0
    train(config, tmp_path / "cut", resume=True, evaluate_after=False, progress=False)
    summary = json.loads((tmp_path / "cut/train_summary.json").read_text(encoding="utf-8"))
    # the summary's time counts the 4 steps before the kill too, not only the 2 the resumed process ran
    assert summary["steps"] == 6 and summary["seconds"] > progress["seconds"]
    a = load_file(str(tmp_path / "full/checkpoint-last/model.safetensors"))
    b = load_file(str(tmp_path / "cut/checkpoint-last/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------------- (b) SIGKILL
def _last_step(log: Path, offset: int) -> int:
    """The highest step logged since byte ``offset`` of train_log.jsonl (the log is appended across resumes)."""
    try:
        with open(log, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return -1
    steps = [-1]
    for row in text.splitlines():
        try:
            steps.append(int(json.loads(row)["step"]))
        except (ValueError, KeyError, TypeError):
            pass  # a line being written
    return max(steps)


def _checkpoint_on_disk_is_sound(run: Path) -> int:
    """The finished checkpoint a resume would use (the '.old' one if the kill fell between the two renames)."""
    folder = run / RunFolder.LAST if (run / RunFolder.LAST).exists() else run / f"{RunFolder.LAST}.old"
    verify_manifest(folder)
    return json.loads((folder / "trainer_state" / "state.json").read_text(encoding="utf-8"))["progress"]["step"]


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_matches_uninterrupted_run(env, baseline, tmp_path):
    expected = baseline("default")
    run = tmp_path / "killed"
    log = run / "train_log.jsonl"
    command = [sys.executable, "-m", "kgdistill", "train", "--preset", "", "--dataset", str(env["kg"]),
               "--plm", str(env["plm"]), "--output-dir", str(run), *overrides()]
    child_env = {**os.environ, "KGDISTILL_CACHE": str(env["cache"]), "HF_HUB_OFFLINE": "1",
                 "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    rng = random.Random(6)
    targets = sorted(rng.sample(range(2, TOTAL_STEPS - 1), 3))  # kill once this step is logged ...
    delays = [rng.uniform(0.0, 0.15) for _ in targets]  # ... plus a random delay: mid-step or mid-checkpoint
    kills, history = 0, []

    def launch(resume: bool, attempt: int):
        out = open(tmp_path / f"attempt-{attempt}.log", "wb")
        proc = subprocess.Popen(command + (["--resume"] if resume else []), stdout=out, stderr=subprocess.STDOUT,
                                env=child_env)
        return proc, out

    def tail(attempt: int) -> str:
        return (tmp_path / f"attempt-{attempt}.log").read_bytes()[-3000:].decode("utf-8", errors="replace")

    for attempt, (target, delay) in enumerate(zip(targets, delays)):
        offset = log.stat().st_size if log.exists() else 0
        proc, out = launch(resume=attempt > 0, attempt=attempt)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if (run / RunFolder.LAST).exists() and _last_step(log, offset) >= target:
                break
            time.sleep(0.005)
        time.sleep(delay)
        alive = proc.poll() is None
        if alive:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        out.close()
        if alive:
            assert proc.returncode == -signal.SIGKILL
            kills += 1
            history.append((target, round(delay, 3), _checkpoint_on_disk_is_sound(run)))
        else:
            assert proc.returncode == 0, tail(attempt)  # it finished before the kill: nothing to resume
            history.append((target, round(delay, 3), "finished"))
            break
    print("kill history (target step, delay s, checkpoint step on disk):", history)
    assert kills >= 2, f"too few kills landed on a running process: {history}"

    for attempt in range(len(targets), len(targets) + 3):  # resume until it finishes (no more kills)
        proc, out = launch(resume=True, attempt=attempt)
        rc = proc.wait(timeout=300)
        out.close()
        assert rc == 0, f"resume attempt {attempt} failed (history {history}):\n{tail(attempt)}"
        if (run / "metrics.json").exists():
            break
    assert_same_run(expected, run)


# ---------------------------------------------------------------------------------------------------- (c) pipeline
@pytest.mark.slow
def test_pipeline_killed_mid_stage_resumes_that_stage_and_redoes_no_finished_one(env, tmp_path):
    """SIGKILL `kgdistill pipeline` while grade 1 trains; the rerun keeps the teacher and pre-distilled stages as they
    are (same files), resumes grade 1 from its checkpoint and ends equal to an uninterrupted pipeline."""
    from kgdistill.jobs.pipeline import pipeline

    ladder = ["train.max_steps=4", "distill.stage_steps=6", "distill.grades=[{layers: 2, mask_rate: 0.1}]"]
    expected = tmp_path / "uninterrupted"
    pipeline(make_config(env, "default", *ladder), expected, progress=False)

    run = tmp_path / "killed"
    command = [sys.executable, "-m", "kgdistill", "pipeline", "--preset", "", "--dataset", str(env["kg"]),
               "--plm", str(env["plm"]), "--output-dir", str(run), *overrides("default", *ladder)]
    child_env = {**os.environ, "KGDISTILL_CACHE": str(env["cache"]), "HF_HUB_OFFLINE": "1",
                 "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    grade = run / "02-grade1-2L"
    with open(tmp_path / "first.log", "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=child_env)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if (grade / RunFolder.LAST).exists() and _last_step(grade / "train_log.jsonl", 0) >= 2:
                break
            time.sleep(0.005)
        assert proc.poll() is None, (tmp_path / "first.log").read_text(errors="replace")[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert not (grade / "stage.json").exists()
    finished = {p: p.stat().st_mtime_ns for stage in ("00-teacher", "01-pre-distilled")
                for p in (run / stage).rglob("*") if p.is_file()}
    rerun = subprocess.run(command, capture_output=True, text=True, env=child_env, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "[00-teacher] finished earlier; not redone" in rerun.stderr
    assert "[01-pre-distilled] finished earlier; not redone" in rerun.stderr
    assert "[02-grade1-2L] resuming" in rerun.stderr
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    for stage in ("00-teacher", "01-pre-distilled", "02-grade1-2L"):
        assert_same_run(expected / stage, run / stage)
    assert (run / "report.md").is_file()


def test_resume_cleans_torn_log_lines_and_stale_temp_folders(env, baseline, tmp_path):
    from kgdistill.api import train

    run = tmp_path / "run"
    shutil.copytree(baseline("default"), run)
    log = run / "train_log.jsonl"
    state = json.loads((run / RunFolder.LAST / "trainer_state" / "state.json").read_text())
    assert state["progress"]["step"] == TOTAL_STEPS
    with open(log, "a", encoding="utf-8") as handle:
        handle.write('{"step": 99, "loss": 1.0}\n{"step": 3, "lo')  # a redone step and a line torn by a kill
    stale = run / ".checkpoint-last.abc123"
    stale.mkdir()
    train(make_config(env, "default"), run, resume=True, progress=False)
    lines = log.read_text().splitlines()
    assert all(json.loads(line)["step"] <= TOTAL_STEPS for line in lines)
    assert not stale.exists()
