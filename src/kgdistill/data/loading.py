"""Loading a knowledge graph by name or folder, whatever its layout, and converting one to the kgdistill format.

``load_dataset`` recognises a folder's layout (:mod:`kgdistill.data.formats`) or takes a bundled graph (WN18RR,
FB15k-237, shipped in ``kgdistill/datasets``); ``convert_dataset`` writes any of them back in our folder format.
"""
from __future__ import annotations

import io
import json
import lzma
import os
import shutil
import tarfile
from importlib import resources
from pathlib import Path

from ..errors import DataError
from ..io import atomic_write_text, replace_dir
from .dataset import KnowledgeGraph, build_kgdistill, digest_files
from .formats import FORMATS, LAYOUTS, detect_format, write_dataset
from .subgraph import induced_subgraph

BUNDLED = {"wn18rr": "wn18rr.tar.xz", "fb15k-237": "fb15k-237.tar.xz"}
ALIASES = {"wn18rr": "wn18rr", "fb15k-237": "fb15k-237", "fb15k237": "fb15k-237", "fb15k_237": "fb15k-237"}


def _read_bundled(archive_name: str) -> dict[str, bytes | None]:
    blob = resources.files("kgdistill.datasets").joinpath(archive_name).read_bytes()
    read: dict[str, bytes | None] = {"relations.tsv": None}
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(blob)), mode="r:") as tar:
        for member in tar.getmembers():
            if member.isfile():
                handle = tar.extractfile(member)
                if handle is not None:
                    read[Path(member.name).name] = handle.read()
    return read


_LOADED: dict[tuple[str, str, str], KnowledgeGraph] = {}


def load_dataset(name_or_path: str, format: str = "auto") -> KnowledgeGraph:
    """Load a bundled dataset by name (``wn18rr``, ``fb15k-237``) or a folder in our format, SimKGC's or KG-BERT's
    (``format`` auto: recognised by its files).

    The graph loaded last is kept: a second load of identical files (same layout, path and bytes) returns it, so
    that checking a dataset before a model loads and then using it costs one parse.
    """
    if format not in FORMATS:
        raise DataError(f"data.format '{format}': expected one of {', '.join(FORMATS)}")
    key = ALIASES.get(str(name_or_path).lower())
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        layout = detect_format(path) if format == "auto" else format
        read_files, build = LAYOUTS[layout]
        name, source, read = path.name, str(path), read_files(path)
    elif key is not None:
        if format not in ("auto", "kgdistill"):
            raise DataError(f"data.format '{format}': '{name_or_path}' is a bundled dataset, in the kgdistill format")
        layout, build = "kgdistill", build_kgdistill
        name, source, read = key, key, _read_bundled(BUNDLED[key])
    else:
        raise DataError(f"dataset '{name_or_path}': neither a bundled dataset ({', '.join(BUNDLED)}) nor a folder")
    fingerprint = digest_files(read)
    memo = (layout, source, fingerprint)
    if memo not in _LOADED:
        kg = build(name, source, read, fingerprint)
        _LOADED.clear()
        _LOADED[memo] = kg
    return _LOADED[memo]


def convert_dataset(source: str | Path, output: str | Path, format: str = "auto") -> KnowledgeGraph:
    """Write a dataset (any layout, or a bundled one) to a new folder in our format; returns the graph."""
    check_new_folder(source, output)
    kg = load_dataset(str(source), format)
    write_new_folder(kg, Path(output))
    return kg


def subgraph_dataset(source: str | Path, output: str | Path, size: int, seed: int = 0, max_expand: int = 8,
                     heldout: int = 0, format: str = "auto") -> KnowledgeGraph:
    """Write the induced subgraph of ``size`` entities of a dataset (:func:`~kgdistill.data.subgraph.induced_subgraph`)
    to a new folder in our format, with ``PROVENANCE.json`` saying how to rebuild it; returns the subgraph."""
    check_new_folder(source, output)
    kg = load_dataset(str(source), format)
    sub = induced_subgraph(kg, size, seed, max_expand, heldout)
    provenance = {"source": str(source), "source_fingerprint": kg.fingerprint, "size": size, "seed": seed,
                  "max_expand": max_expand, "heldout": heldout, "summary": sub.summary(),
                  "command": f"kgdistill subgraph {source} --entities {size} --seed {seed} --max-expand {max_expand} "
                             f"--heldout {heldout} --output OUTPUT"}
    write_new_folder(sub, Path(output), {"PROVENANCE.json": json.dumps(provenance, indent=1) + "\n"})
    return sub


def check_new_folder(source: str | Path, output: str | Path) -> None:
    """The output of convert and subgraph: not the source folder, absent or empty."""
    output, path = Path(output), Path(source).expanduser()
    if path.is_dir() and output.resolve() == path.resolve():
        raise DataError(f"output {output}: is the dataset folder itself; choose another folder")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise DataError(f"output {output}: exists and is not an empty folder; choose another folder")


def write_new_folder(kg: KnowledgeGraph, output: Path, extra: dict[str, str] | None = None) -> None:
    """The graph in our format (and ``extra`` files), staged beside ``output`` and renamed into place."""
    output.parent.mkdir(parents=True, exist_ok=True)
    stage = output.parent / f".{output.name}.convert-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        write_dataset(kg, stage)
        for name, text in (extra or {}).items():
            atomic_write_text(stage / name, text)
        replace_dir(stage, output)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
