"""Checks the command line runs before any model loads, so that bad input fails at once with one line naming the
flag; the library repeats what it needs, naming its parameters."""
from __future__ import annotations

import copy
from pathlib import Path

from ..errors import KGDistillError
from ..io import probe_writable
from ..runfolder import RunFolder


def check_output_dir(path: str | None, flag: str) -> None:
    """An output folder that cannot be one (a file, or below a file) or cannot be written (read-only, forbidden,
    full) fails before any model loads."""
    if path is None:
        return
    target = Path(path)
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        where = "exists and is not a folder" if existing == target else f"'{existing}' is a file, not a folder"
        raise KGDistillError(f"{flag} {path}: {where}")
    try:
        probe_writable(target)
    except OSError as exc:
        raise KGDistillError(f"{flag} {path}: cannot write there ({exc.strerror})") from None


def check_new_run(path: str, resume: bool, flag: str = "--output-dir") -> None:
    """A folder that already holds a run is continued only with --resume."""
    if (Path(path) / RunFolder.LAST).exists() and not resume:
        raise KGDistillError(f"{path}: already holds a run; pass --resume to continue it or choose another {flag}")


def check_dataset(name: str | None, format: str = "auto") -> None:
    """Parse and validate the dataset now; the job's own load then reuses the parsed graph."""
    if name:
        from ..data.loading import load_dataset

        load_dataset(name, format)


def check_student_dataset(config, teacher_dir: Path) -> None:
    """The dataset a student of ``teacher_dir`` will use: the teacher's unless the user set it (as distill decides)."""
    from ..jobs.distill import inherit_teacher_data

    probe = copy.deepcopy(config)
    inherit_teacher_data(probe, teacher_dir, {})
    check_dataset(probe.data.dataset, probe.data.format)


def check_model(path: str, flag: str, checkpoint: str = "last") -> Path:
    """The model folder (a run folder's checkpoint) exists and has a model.json; nothing is loaded yet."""
    from ..store.saved import resolve_model_dir

    try:
        return resolve_model_dir(path, checkpoint)
    except KGDistillError as exc:
        raise KGDistillError(f"{flag} {exc}") from None


def check_model_dataset(model_dir: Path, dataset: str | None) -> None:
    """The dataset a job on a saved model will load (the named one, else the model's own), when either is known."""
    from ..store.saved import load_run_config, model_config

    if dataset or load_run_config(model_dir) is not None:
        probe = model_config(model_dir, dataset)
        check_dataset(probe.data.dataset, probe.data.format)
