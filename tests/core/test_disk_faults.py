"""A full, read-only or forbidden disk (ENOSPC, EROFS, EACCES) at every kind of write: checkpoint, metrics, entity
index, export, convert. Each goes through the real CLI entry ``kgdistill.cli.main`` with ``os.write``, ``os.fsync``
or ``os.replace`` failing for the file being written (the calls of ``kgdistill.io``), and must end with exit status
2, one stderr line naming the path, everything written before intact and no temporary file or folder left.
Output folders that cannot be written are refused before any model loads."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import pytest

from conftest import tiny_overrides, train_args
from kgdistill.cli import main
from kgdistill.io import atomic_write_bytes, replace_dir, save_tensors, verify_manifest
from kgdistill.runfolder import RunFolder

SIX_STEPS = tiny_overrides(train__max_steps=6, train__checkpoint_every=2, distill__stage_steps=None)


@pytest.fixture(scope="module")
def env(tiny_plm, tiny_kg) -> dict:
    return {"plm": tiny_plm, "kg": tiny_kg}


def run_args(env: dict, run: Path, *extra: str) -> list[str]:
    return train_args(env["plm"], env["kg"], run, *extra, tiny=SIX_STEPS)


@pytest.fixture(scope="module")
def trained(env, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("disk-run") / "run"
    assert main(run_args(env, run)) == 0
    return run


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("disk-export") / "export"
    assert main(["export", "--model", str(trained), "--output", str(out)]) == 0
    return out


# ---------------------------------------------------------------------------------------------------- helpers
def inject(monkeypatch, call: str, code: int, hits: Callable[[str], bool]) -> list[str]:
    """``os.<call>`` raises ``OSError(code)`` for the files ``hits`` picks (write and fsync: by the descriptor's path,
    replace: by the destination, once: putting a backup back is a rename to the same place); returns the paths it
    failed."""
    real = getattr(os, call)
    failed: list[str] = []

    def faulty(*args, **kwargs):
        target = str(args[1]) if call == "replace" else os.readlink(f"/proc/self/fd/{args[0]}")
        if hits(target) and not (call == "replace" and failed):
            failed.append(target)
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    monkeypatch.setattr(os, call, faulty)
    return failed


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err


def assert_disk_error(rc: int, err: str, code: int, names: str) -> None:
    """Exit 2 and one ``kgdistill: error:`` line, the last on stderr, naming a path with ``names`` and the reason."""
    assert rc == 2, f"exit status {rc}, stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("kgdistill: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert names in errors[0] and os.strerror(code) in errors[0], errors[0]


def snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    """Temporary files and folders of atomic writes (the run lock and the folder's own files aside)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.name.endswith((".tmp", ".old")) or ".export-" in p.name or ".convert-" in p.name
                  or p.name.startswith((".checkpoint", ".kgdistill-probe")))


def checkpoint_step(run: Path) -> int:
    verify_manifest(run / RunFolder.LAST)
    return json.loads((run / RunFolder.LAST / "trainer_state" / "state.json").read_text())["progress"]["step"]


# ---------------------------------------------------------------------------------------------------- checkpoint
@pytest.mark.parametrize("call, code", [("write", errno.ENOSPC), ("fsync", errno.ENOSPC), ("replace", errno.EACCES)])
def test_checkpoint_write_fails_cleanly_and_the_previous_checkpoint_resumes(call, code, env, tmp_path, monkeypatch,
                                                                            capsys):
    """The second checkpoint (step 4) fails; the first (step 2) stays whole and a resume finishes the run."""
    run = tmp_path / "run"
    if call == "replace":  # the swap itself: checkpoint-last already moved aside, the new one cannot take its place
        hits = lambda p: p == str(run / RunFolder.LAST) and (run / f"{RunFolder.LAST}.old").exists()  # noqa: E731
    else:  # a file of the checkpoint being staged, once the first one is on disk
        hits = lambda p: f"/.{RunFolder.LAST}." in p and (run / RunFolder.LAST / "manifest.json").exists()  # noqa: E731
    failed = inject(monkeypatch, call, code, hits)
    rc, err = run_cli(run_args(env, run), capsys)
    assert failed, "the fault never fired"
    assert_disk_error(rc, err, code, str(run))
    assert checkpoint_step(run) == 2
    assert not leftovers(run), leftovers(run)
    monkeypatch.undo()
    if call == "replace":
        rc, err = run_cli(run_args(env, run, "--resume"), capsys)
        assert rc == 0, err
        assert checkpoint_step(run) == 6


# ---------------------------------------------------------------------------------------------------- metrics
@pytest.mark.parametrize("call, code", [("write", errno.ENOSPC), ("fsync", errno.EDQUOT), ("replace", errno.EROFS)])
def test_metrics_write_fails_cleanly_and_keeps_the_previous_metrics(call, code, trained, tmp_path, monkeypatch,
                                                                    capsys):
    out = tmp_path / "eval"
    rc, err = run_cli(["evaluate", "--model", str(trained), "--output", str(out)], capsys)
    assert rc == 0, err
    before = (out / "metrics.json").read_bytes()
    target = out / "metrics.json"
    failed = inject(monkeypatch, call, code,
                    lambda p: p == str(target) if call == "replace" else "/.metrics.json." in p)
    rc, err = run_cli(["evaluate", "--model", str(trained), "--output", str(out)], capsys)
    assert failed
    assert_disk_error(rc, err, code, str(target))
    assert (out / "metrics.json").read_bytes() == before
    assert not leftovers(out), leftovers(out)


# ---------------------------------------------------------------------------------------------------- export, index
EXPORT_FAULTS = {
    "index-write": ("write", errno.ENOSPC, lambda out: lambda p: "/.entities.npy." in p, "entities.npy"),
    "index-rename": ("replace", errno.EACCES, lambda out: lambda p: p.endswith("/index/entities.json"),
                     "entities.json"),
    "export-json-fsync": ("fsync", errno.ENOSPC, lambda out: lambda p: "/.export.json." in p, "export.json"),
    "export-swap": ("replace", errno.EACCES, lambda out: lambda p: p == str(out), None),  # names the folder
}


@pytest.mark.parametrize("case", list(EXPORT_FAULTS))
def test_export_write_fails_cleanly_and_keeps_the_previous_export(case, exported, trained, tmp_path, monkeypatch,
                                                                  capsys):
    call, code, make_hits, names = EXPORT_FAULTS[case]
    out = tmp_path / "export"
    shutil.copytree(exported, out)
    before = snapshot(out)
    failed = inject(monkeypatch, call, code, make_hits(out))
    rc, err = run_cli(["export", "--model", str(trained), "--output", str(out)], capsys)
    assert failed
    assert_disk_error(rc, err, code, names or str(out))
    assert snapshot(out) == before
    assert not leftovers(tmp_path), leftovers(tmp_path)


# ---------------------------------------------------------------------------------------------------- convert
@pytest.mark.parametrize("call, code", [("write", errno.ENOSPC), ("replace", errno.EROFS)])
def test_convert_write_fails_cleanly_and_leaves_nothing(call, code, env, tmp_path, monkeypatch, capsys):
    out = tmp_path / "converted"
    failed = inject(monkeypatch, call, code,
                    lambda p: p == str(out) if call == "replace" else "/.entities.tsv." in p)
    rc, err = run_cli(["convert", str(env["kg"]), "--output", str(out)], capsys)
    assert failed
    assert_disk_error(rc, err, code, str(out) if call == "replace" else "entities.tsv")
    assert not out.exists() or not any(out.iterdir())
    assert not leftovers(tmp_path), leftovers(tmp_path)


# ---------------------------------------------------------------------------------------------------- early checks
def test_read_only_output_dir_is_refused_before_any_model_loads(env, tmp_path, monkeypatch, capsys):
    import kgdistill.jobs.train as train_job

    def never(*args, **kwargs):
        raise AssertionError("the model was built for an output folder that cannot be written")

    monkeypatch.setattr(train_job, "build_model", never)
    inject(monkeypatch, "write", errno.EROFS, lambda p: ".kgdistill-probe-" in p)
    run = tmp_path / "new" / "run"
    rc, err = run_cli(run_args(env, run), capsys)
    assert_disk_error(rc, err, errno.EROFS, f"--output-dir {run}: cannot write there")
    assert not leftovers(tmp_path)


def test_unwritable_export_output_is_refused_before_the_model_loads(trained, tmp_path, monkeypatch, capsys):
    from kgdistill.models.biencoder import BiEncoder

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded for an output folder that cannot be written")

    monkeypatch.setattr(BiEncoder, "load", never)
    inject(monkeypatch, "fsync", errno.EACCES, lambda p: ".kgdistill-probe-" in p)
    out = tmp_path / "export"
    rc, err = run_cli(["export", "--model", str(trained), "--output", str(out)], capsys)
    assert_disk_error(rc, err, errno.EACCES, f"output {out}: cannot write there")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_real_read_only_folder_is_refused(env, tmp_path, capsys):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        rc, err = run_cli(run_args(env, locked / "run"), capsys)
    finally:
        locked.chmod(0o700)
    assert_disk_error(rc, err, errno.EACCES, "cannot write there")


# ---------------------------------------------------------------------------------------------------- io units
@pytest.mark.parametrize("call", ["write", "fsync", "replace"])
def test_atomic_write_keeps_the_previous_file_and_names_it(call, tmp_path, monkeypatch):
    path = tmp_path / "file.json"
    path.write_text("previous")
    inject(monkeypatch, call, errno.ENOSPC, lambda p: "file.json" in p)
    with pytest.raises(OSError) as raised:
        atomic_write_bytes(path, b"new")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
    assert path.read_text() == "previous" and os.listdir(tmp_path) == ["file.json"]


def test_safetensors_disk_error_is_an_oserror_naming_the_file(tmp_path, monkeypatch):
    import safetensors.torch
    import torch

    def full(*args, **kwargs):
        raise Exception("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError) as raised:
        save_tensors(tmp_path / "state.safetensors", {"x": torch.zeros(2)})
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path / "state.safetensors")


def test_replace_dir_failing_or_interrupted_keeps_a_whole_folder(tmp_path, monkeypatch):
    final, stage = tmp_path / "model", tmp_path / ".model.stage"
    for folder, text in ((final, "old"), (stage, "new")):
        folder.mkdir()
        (folder / "f").write_text(text)
    failed = inject(monkeypatch, "replace", errno.EACCES, lambda p: p == str(final))
    with pytest.raises(OSError):
        replace_dir(stage, final)
    assert failed and (final / "f").read_text() == "old" and not (tmp_path / "model.old").exists()
    monkeypatch.undo()
    os.replace(final, tmp_path / "model.old")  # a crash between the two renames left only the backup
    replace_dir(stage, final)
    assert (final / "f").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["model"]
