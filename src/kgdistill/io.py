"""Atomic, checksummed artefact I/O: nothing half-written is ever taken for a finished file."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from .errors import CheckpointError

MANIFEST = "manifest.json"


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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """:func:`atomic_write_text` of ``obj`` as indented JSON with a final newline."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """Record size and sha256 of every file in ``folder`` so that truncation or corruption is caught on load."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[path.relative_to(folder).as_posix()] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
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


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a finished temporary folder into place so that a crash leaves either the old or the new one."""
    backup = final.with_name(final.name + ".old")
    if backup.exists():
        shutil.rmtree(backup)
    if final.exists():
        os.replace(final, backup)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if backup.exists():
        shutil.rmtree(backup)


def recover_dir(final: Path) -> Path:
    """Return ``final``, or its backup when a crash happened between the two renames of :func:`replace_dir`."""
    backup = final.with_name(final.name + ".old")
    if not final.exists() and backup.exists():
        os.replace(backup, final)
    return final


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
