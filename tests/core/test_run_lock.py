"""One process at a time in a run folder: ``RUN_DIR/.lock`` (flock, holding the owner's pid) is taken by train and
distill and held until the process ends; a second run, or a resume of a live one, is a one-line error naming the
owner's pid and touches nothing of the live run (its temporary checkpoint folders stay)."""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import train_args
from kgdistill.cli import main
from kgdistill.io import LOCK, lock_folder

HOLD = ("import sys; from pathlib import Path; from kgdistill.io import lock_folder; "
        "lock_folder(Path(sys.argv[1])); print('locked', flush=True); sys.stdin.read()")


@pytest.fixture(scope="module")
def env(tiny_plm, tiny_kg) -> dict:
    return {"plm": tiny_plm, "kg": tiny_kg}


def run_args(env: dict, run: Path, *extra: str) -> list[str]:
    return train_args(env["plm"], env["kg"], run, *extra)


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("kgdistill: error:") and "Traceback" not in err, err
    return lines[-1]


def test_a_second_run_in_a_locked_folder_fails_naming_the_owner(env, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    staging = run / ".checkpoint-last.live"  # the live run's checkpoint being written
    staging.mkdir()
    fd = os.open(run / LOCK, os.O_RDWR | os.O_CREAT)  # another open file description: another process's lock
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"424242\n")
        rc, err = run_cli(run_args(env, run), capsys)
    finally:
        os.close(fd)
    assert rc == 2
    line = error_line(err)
    assert str(run) in line and "pid 424242" in line
    assert staging.is_dir()


def test_resume_of_a_live_run_fails_then_works_once_it_ended(env, tmp_path, capsys):
    first = tmp_path / "first"
    rc, err = run_cli(run_args(env, first), capsys)
    assert rc == 0, err
    assert (first / LOCK).read_text().strip() == str(os.getpid())  # held by this process until it ends
    run = tmp_path / "run"
    shutil.copytree(first, run)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc, err = run_cli(run_args(env, run, "--resume"), capsys)
        assert rc == 2
        assert f"pid {holder.pid}" in error_line(err)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    rc, err = run_cli(run_args(env, run, "--resume"), capsys)  # the OS released the ended process's lock
    assert rc == 0, err


def assert_locked(folder: Path) -> None:
    """Another open file description cannot take the folder's lock."""
    probe = os.open(folder / LOCK, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(probe)


def test_the_lock_is_held_by_this_process_and_retaken_for_a_new_folder(tmp_path):
    folder = tmp_path / "run"
    lock_folder(folder)
    lock_folder(folder)  # this process holds it already: fine
    assert_locked(folder)
    shutil.rmtree(folder)  # removed and made again: the new folder is locked too
    lock_folder(folder)
    assert_locked(folder)
    assert (folder / LOCK).read_text().strip() == str(os.getpid())
