"""Atomic, checksummed artefact I/O: nothing half-written is ever taken for a finished file, and a write that fails
(a full or read-only disk) leaves the previous file or folder as it was, with no temporary left behind."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from .errors import CheckpointError, KGDistillError

MANIFEST = "manifest.json"
LOCK = ".lock"
# What a disk or its permissions refuse: the CLI reports these as a one-line user error naming the path.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT, errno.EPERM})
_SAFETENSORS_OS_ERROR = re.compile(r"os error (\d+)")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` as the OSError of the same kind naming ``path`` (os.write and os.fsync know only a descriptor, and a
    rename names the temporary file), so that the user reads which file could not be written."""
    return OSError(exc.errno, exc.strerror, str(path))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``; on failure the previous file
    is untouched, the temporary removed and the OSError names ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise _naming(exc, path) from exc
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """:func:`atomic_write_text` of ``obj`` as indented JSON with a final newline."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_tensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """A safetensors file (written to a temporary file and renamed by safetensors itself), fsynced; a disk failure is
    raised as the OSError naming ``path`` (safetensors reports it as a SafetensorError carrying the OS error number
    only in its message)."""
    from safetensors.torch import save_file

    path = Path(path)
    try:
        save_file(tensors, str(path), metadata=metadata)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _naming(exc, path) from exc
    except Exception as exc:  # safetensors' own error type: an OS error is known by its number in the message
        found = _SAFETENSORS_OS_ERROR.search(str(exc))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from exc


def probe_writable(folder: str | Path) -> None:
    """Write, fsync and remove a small file in ``folder``, or in the nearest existing folder above it (where it would
    be created), so that a read-only, forbidden or full place fails at once with its OSError, not after hours."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    probe = existing / f".kgdistill-probe-{os.getpid()}"
    try:
        atomic_write_bytes(probe, b"\0")
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path, exclude: tuple[str, ...] = ()) -> None:
    """Record size and sha256 of every file in ``folder`` (but those whose relative path starts with one of
    ``exclude``: files rewritten later) so that truncation or corruption is caught on load."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        name = path.relative_to(folder).as_posix()
        if not name.startswith(exclude):
            files[name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    atomic_write_json(folder / MANIFEST, {"files": files})


def verify_manifest(folder: Path) -> None:
    """Raise :class:`CheckpointError` unless every file listed in the manifest is there, whole and unchanged."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{folder}: no {MANIFEST}; not a finished kgdistill artefact (interrupted write?)")
    try:
        files = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, UnicodeDecodeError):
        raise CheckpointError(f"{manifest_path}: manifest is corrupted") from None
    for name, meta in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (listed in {MANIFEST})")
        size = path.stat().st_size
        if size != meta["bytes"]:
            raise CheckpointError(f"{path}: {size} bytes, expected {meta['bytes']} (truncated or replaced)")
        if sha256_file(path) != meta["sha256"]:
            raise CheckpointError(f"{path}: checksum mismatch (corrupted)")


def check_inside(folder: Path, relative: Any, source: Path) -> None:
    """A path that ``source`` (a file of ``folder``) names must be relative and stay inside ``folder`` (no ``..``, no
    link out), else a :class:`CheckpointError` naming ``source``: a folder's metadata never reaches other files."""
    if (not isinstance(relative, str) or not relative or Path(relative).is_absolute() or ".." in Path(relative).parts
            or not (folder / relative).resolve().is_relative_to(folder.resolve())):
        raise CheckpointError(f"{source}: path {relative!r} is not a relative path inside {folder}")


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a finished temporary folder into place so that a crash leaves either the old or the new one, and a failed
    rename the old one (the caller removes ``tmp``)."""
    backup = final.with_name(final.name + ".old")
    try:
        recover_dir(final)  # a crash between the two renames below left the only copy as the backup
        if backup.exists():
            shutil.rmtree(backup)
        if final.exists():
            os.replace(final, backup)
        try:
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):  # else a load's recover_dir puts the backup back
                recover_dir(final)
            raise
    except OSError as exc:
        raise _naming(exc, final) from exc
    _fsync_dir(final.parent)
    shutil.rmtree(backup, ignore_errors=True)  # one left here is removed by the next replace


def recover_dir(final: Path) -> Path:
    """Return ``final``, or its backup when a crash happened between the two renames of :func:`replace_dir`."""
    backup = final.with_name(final.name + ".old")
    if not final.exists() and backup.exists():
        os.replace(backup, final)
    return final


class FolderInUseError(KGDistillError):
    """Another live process holds the folder's lock (a second run, or a resume of a live one)."""


_HELD: dict[Path, int] = {}  # folder -> descriptor of its flocked lock file, held until this process exits


def lock_folder(folder: Path) -> None:
    """Hold ``folder/.lock`` (an exclusive ``flock``, with this process's pid written in it) until this process ends:
    the OS releases it however the process ends, so a crashed run never leaves a stale lock. A folder this process
    already holds is fine (a notebook that trains, then resumes); another live holder raises
    :class:`FolderInUseError` naming its pid."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    key = folder.resolve()
    held = _HELD.get(key)
    if held is not None:
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(held), os.stat(path)):
                return
        os.close(held)  # the folder was removed and made again: lock the new file
        del _HELD[key]
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        who = f"pid {owner}" if owner.isdigit() else "another process"
        raise FolderInUseError(f"{folder}: in use by a running kgdistill process ({who}); wait for it to end or "
                               f"choose another folder") from None
    except OSError as exc:
        os.close(fd)
        raise _naming(exc, path) from exc
    _HELD[key] = fd


def environment_info() -> dict[str, Any]:
    """Versions of what produced an artefact."""
    import numpy
    import tokenizers
    import torch
    import transformers

    from ._version import __version__

    return {
        "kgdistill": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }


def read_json_object(path: Path) -> dict:
    """A JSON object of a run folder; empty when the file is absent (a run without evaluation has no metrics.json),
    a :class:`CheckpointError` naming the file when it is not a JSON object."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise CheckpointError(f"{path}: not valid JSON") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data
