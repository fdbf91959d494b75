"""Knowledge graphs from pandas DataFrames, and from CSV or Parquet tables in a folder (what PyKEEN's
``TriplesFactory.from_labeled_triples`` is to PyKEEN); and a graph back as DataFrames.

Tables: one per split with columns ``head, relation, tail`` (ids); ``entities`` with ``id, name`` and optionally
``description``; optionally ``relations`` with ``id, text`` (without it a relation id becomes its text, as in the
folder format). Other columns are ignored; tabs and line breaks inside a cell become spaces; a missing value is an
empty string. The graph is built by the folder format's own parser from the tables rendered as its files, so it
holds the same entities, relations, order and numbers as the same graph written as TSV files, and fails the same
checks. An error names the table and its line, the header being line 1 (row ``i`` of a DataFrame is line ``i + 2``).

As a dataset folder (``--dataset DIR``, ``kgdistill convert``; recognised by ``entities.csv`` or
``entities.parquet``): ``entities``, ``train``, ``valid``, ``test`` and optionally ``relations``, all ``.csv``
(UTF-8, comma-separated, a header row) or all ``.parquet``. Needs pandas (and pyarrow for Parquet):
``pip install 'kgdistill[pandas]'``.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ..errors import DataError, KGDistillError
from .dataset import SPLITS, KnowledgeGraph, build_kgdistill, digest_files, read_bytes

COLUMNS = {"entities": ("id", "name", "description"), "relations": ("id", "text"),
           **{split: ("head", "relation", "tail") for split in SPLITS}}
OPTIONAL_COLUMNS = {"description"}
TSV_FILES = {"entities": "entities.tsv", "relations": "relations.tsv", **{s: f"{s}.txt" for s in SPLITS}}
TABLE_SUFFIXES = {"csv": ".csv", "parquet": ".parquet"}
_BREAKS = str.maketrans("\t\r\n", "   ")


def _pandas():
    try:
        import pandas
    except ImportError:
        raise KGDistillError("DataFrame and CSV/Parquet datasets need pandas (pip install 'kgdistill[pandas]')") \
            from None
    return pandas


def _render(frame, table: str, label: str) -> bytes:
    """One table as the folder format's file."""
    columns = COLUMNS[table]
    missing = [c for c in columns if c not in frame.columns and c not in OPTIONAL_COLUMNS]
    if missing and len(frame):  # an empty table may come without columns
        raise DataError(f"{label}: no column '{missing[0]}' (expected {', '.join(columns)})")
    isna = _pandas().isna  # None, NaN, pd.NA
    cells = [["" if isna(v) else str(v).translate(_BREAKS) for v in frame[c]] if c in frame.columns
             else [""] * len(frame) for c in columns]
    rows = ["\t".join(row) for row in zip(*cells)]
    # entities and relations files have a header; for triples a blank line (skipped) takes its place, so that every
    # table's lines count from its header, line 1
    rows.insert(0, "\t".join(columns) if table in ("entities", "relations") else "")
    return "".join(row + "\n" for row in rows).encode("utf-8")


def _build(name: str, source: str, frames: dict[str, Any], labels: dict[str, str],
           fingerprint: str | None = None) -> KnowledgeGraph:
    """The graph of the tables, parsed as the folder format; errors name ``labels[table]`` instead of its TSV file."""
    read: dict[str, bytes | None] = {TSV_FILES[t]: None if frames.get(t) is None else _render(frames[t], t, labels[t])
                                     for t in COLUMNS}
    try:
        return build_kgdistill(name, source, read, fingerprint or digest_files(read))
    except DataError as exc:
        message = str(exc)
        for table, label in labels.items():
            message = message.replace(f"{source}/{TSV_FILES[table]}", label).replace(TSV_FILES[table], label)
        raise DataError(message) from None


def from_dataframes(train, valid, test, entities, relations=None, name: str = "dataframes") -> KnowledgeGraph:
    """A graph from pandas DataFrames (see the module's docstring for the columns)."""
    frames = {"train": train, "valid": valid, "test": test, "entities": entities, "relations": relations}
    return _build(name, f"<{name}>", frames, {t: f"{t} DataFrame" for t in COLUMNS})


def to_dataframes(kg: KnowledgeGraph) -> dict:
    """The graph as DataFrames with the columns :func:`from_dataframes` takes: ``entities``, ``relations`` and one
    per split (ids); ``from_dataframes(**to_dataframes(kg))`` rebuilds it."""
    pd = _pandas()
    out = {"entities": pd.DataFrame({"id": kg.entity_ids, "name": kg.entity_names,
                                     "description": kg.entity_descriptions}),
           "relations": pd.DataFrame({"id": kg.relation_ids, "text": kg.relation_texts})}
    e, r = kg.entity_ids, kg.relation_ids
    for split in SPLITS:
        out[split] = pd.DataFrame([(e[h], r[rel], e[t]) for h, rel, t in kg.splits[split]],
                                  columns=list(COLUMNS[split]))
    return out


# ---------------------------------------------------------------------------------------------------- folders
def _reader(kind: str):
    def read_tables(folder: Path) -> dict[str, bytes | None]:
        """The table files of a folder by name (``relations`` None when absent)."""
        suffix = TABLE_SUFFIXES[kind]
        read: dict[str, bytes | None] = {}
        for table in COLUMNS:
            path = folder / f"{table}{suffix}"
            if path.is_file():
                read[path.name] = read_bytes(path)
            elif table == "relations":
                read[path.name] = None
            else:
                raise DataError(f"{path}: missing (a {kind} dataset folder needs "
                                f"{', '.join(f'{t}{suffix}' for t in ('entities', *SPLITS))})")
        return read
    return read_tables


def _builder(kind: str):
    def build_tables(name: str, source: str, read: dict[str, bytes | None], fingerprint: str) -> KnowledgeGraph:
        """The graph of a folder of tables, from its files' bytes."""
        pd = _pandas()
        suffix = TABLE_SUFFIXES[kind]
        frames, labels = {}, {}
        for table in COLUMNS:
            labels[table] = f"{source}/{table}{suffix}"
            raw = read[f"{table}{suffix}"]
            if raw is None:
                continue
            try:
                if kind == "csv":
                    frames[table] = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, encoding="utf-8")
                else:
                    frames[table] = pd.read_parquet(io.BytesIO(raw))
            except ImportError:
                raise KGDistillError(f"{labels[table]}: reading Parquet needs pyarrow (pip install "
                                     f"'kgdistill[pandas]')") from None
            except (ValueError, UnicodeDecodeError, pd.errors.ParserError, OSError) as exc:
                raise DataError(f"{labels[table]}: not a readable {kind} table "
                                f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})") \
                    from None
        return _build(name, source, frames, labels, fingerprint)
    return build_tables


TABLE_MARKERS = {kind: f"entities{suffix}" for kind, suffix in TABLE_SUFFIXES.items()}
TABLE_LAYOUTS = {kind: (_reader(kind), _builder(kind)) for kind in TABLE_SUFFIXES}
