"""A quiet CLI that fails early (issue 13): ``key=value`` overrides anywhere among the options, arguments, config,
dataset and output folder checked before any model loads, other packages' chatter hidden unless ``--verbose``."""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest
import yaml

from kgdistill.cli import main, parse_args, third_party_output
from conftest import TINY, assert_user_error


def test_overrides_anywhere_among_the_options():
    args = parse_args(["train", "--dataset", "D", "--output-dir", "O", "train.lr=1e-4", "--seed", "7",
                       "train.max_steps=24"])
    assert args.overrides == ["train.lr=1e-4", "train.max_steps=24"] and args.seed == 7 and args.dataset == "D"
    args = parse_args(["distill", "loss.margin=0.1", "--teacher", "T", "--output-dir", "O", "--verbose",
                       "distill.alpha=0.2", "--layers", "2", "distill.beta=0.3"])
    assert args.overrides == ["loss.margin=0.1", "distill.alpha=0.2", "distill.beta=0.3"] and args.verbose
    assert parse_args(["--verbose", "evaluate", "--model", "M"]).verbose
    assert not parse_args(["evaluate", "--model", "M"]).verbose


@pytest.mark.parametrize("argv", [
    ["train", "--output-dir", "O", "--sed", "7"],  # a mistyped flag is never taken for an override
    ["predict", "--model", "M", "--head", "h", "--relation", "r", "stray"],  # predict takes no overrides
    ["convert", "a", "b", "--output", "o"],
])
def test_unrecognized_arguments_are_still_refused(argv, capsys):
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_intermixed_overrides_reach_the_run(tiny_plm, tiny_kg, tmp_path, cache_dir):
    run = tmp_path / "run"
    assert main(["train", "--preset", "", "--dataset", str(tiny_kg), "--output-dir", str(run), "train.lr=1e-4",
                 "--seed", "7", "train.max_steps=2", "--plm", str(tiny_plm), "--no-eval",
                 *(x for x in TINY if not x.startswith(("train.lr=", "train.max_steps=")))]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert saved["train"]["lr"] == 1e-4 and saved["seed"] == 7 and saved["train"]["max_steps"] == 2


# ---------------------------------------------------------------------------------------------------- fail early
@pytest.fixture()
def no_model_loads(monkeypatch):
    """Any model load fails the test: the error must come before."""
    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    for name in ("jobs.train.build_model", "jobs.evaluate.load_model", "jobs.distill.build_model",
                 "jobs.distill.load_teacher", "jobs.pipeline.load_teacher"):  # every job that builds or loads one
        monkeypatch.setattr(f"kgdistill.{name}", boom)
    monkeypatch.setattr("kgdistill.models.biencoder.BiEncoder.load", boom)
    monkeypatch.setattr("kgdistill.inference.predictor.Predictor.from_pretrained", boom)


@pytest.fixture()
def fake_model(tmp_path) -> Path:
    """A folder that looks like a model until its weights are read."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.json").write_text("{}", encoding="utf-8")
    return folder


def _run(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err


def test_missing_dataset_is_reported_before_any_model_loads(no_model_loads, fake_model, tiny_plm, tmp_path, capsys):
    missing = str(tmp_path / "no-such-data")
    commands = [
        ["train", "--preset", "", "--dataset", missing, "--plm", str(tiny_plm), "--output-dir", str(tmp_path / "o")],
        ["distill", "--teacher", str(fake_model), "--dataset", missing, "--output-dir", str(tmp_path / "s")],
        ["pipeline", "--dataset", missing, "--teacher", str(fake_model), "--output-dir", str(tmp_path / "p")],
        ["evaluate", "--model", str(fake_model), "--dataset", missing],
        ["predict", "--model", str(fake_model), "--dataset", missing, "--head", "h", "--relation", "r"],
        ["export", "--model", str(fake_model), "--dataset", missing, "--output", str(tmp_path / "e")],
    ]
    for argv in commands:
        rc, err = _run(argv, capsys)
        assert_user_error(rc, err, [missing, "neither a bundled dataset"])


def test_a_students_inherited_dataset_is_checked_before_any_model_loads(no_model_loads, tmp_path, capsys):
    from kgdistill.config import RunConfig

    teacher = tmp_path / "teacher"
    (teacher / "checkpoint-last").mkdir(parents=True)
    (teacher / "checkpoint-last" / "model.json").write_text("{}", encoding="utf-8")
    config = RunConfig()
    config.data.dataset = str(tmp_path / "moved-away")  # the teacher's dataset, gone since
    config.save(teacher / "config.yaml")
    for command in ("distill", "pipeline"):
        rc, err = _run([command, "--teacher", str(teacher), "--output-dir", str(tmp_path / command)], capsys)
        assert_user_error(rc, err, ["moved-away", "neither a bundled dataset"])


def test_bad_output_folder_and_model_are_reported_before_any_model_loads(no_model_loads, tiny_kg, tiny_plm,
                                                                         tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x", encoding="utf-8")
    base = ["--preset", "", "--dataset", str(tiny_kg), "--plm", str(tiny_plm), *TINY]
    rc, err = _run(["train", *base, "--output-dir", str(blocker)], capsys)
    assert_user_error(rc, err, ["--output-dir", "exists and is not a folder"])
    rc, err = _run(["train", *base, "--output-dir", str(blocker / "run")], capsys)
    assert_user_error(rc, err, ["--output-dir", "is a file, not a folder"])
    rc, err = _run(["distill", *base, "--teacher", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "s")],
                   capsys)
    assert_user_error(rc, err, ["--teacher", "nowhere", "no model here"])
    rc, err = _run(["train", *base, "--plm", str(tmp_path / "no-plm"), "--output-dir", str(tmp_path / "o")], capsys)
    assert_user_error(rc, err, ["'model.plm'", "no-plm"])


# ---------------------------------------------------------------------------------------------------- quiet
def test_third_party_output_is_hidden_unless_verbose(caplog):
    from transformers.utils import logging as hf_logging

    bars, root_level = hf_logging.is_progress_bar_enabled(), logging.getLogger().level
    for verbose in (False, True):
        caplog.clear()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with third_party_output(verbose):
                assert hf_logging.is_progress_bar_enabled() == (verbose and bars)
                warnings.warn("deprecated thing", FutureWarning)
                logging.getLogger("somelib").warning("library chatter")
                logging.getLogger("kgdistill").info("our own line")
        assert len(seen) == verbose
        messages = [r.getMessage() for r in caplog.records]
        assert "our own line" in messages and ("library chatter" in messages) == verbose
    assert hf_logging.is_progress_bar_enabled() == bars and logging.getLogger().level == root_level


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_loading_bars_only_with_verbose(verbose, tiny_plm, tiny_kg, tmp_path, cache_dir, capsys):
    rc, err = _run(["train", "--preset", "", "--dataset", str(tiny_kg), "--plm", str(tiny_plm), "--output-dir",
                    str(tmp_path / "run"), "--no-eval", *TINY, *(["--verbose"] if verbose else [])], capsys)
    assert rc == 0, err
    assert ("Loading weights" in err) == verbose
    assert "train:" in err  # our own progress bar stays, with its ETA
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text(encoding="utf-8"))["steps"] == 2
