"""Knowledge graphs and the documented folder format (the SimKGC and KG-BERT layouts are in
:mod:`kgdistill.data.formats`; :func:`kgdistill.data.loading.load_dataset` loads any of them, or a bundled graph).

Folder format (UTF-8; a BOM and CRLF line endings are accepted):
- ``train.txt``, ``valid.txt``, ``test.txt``: ``head<TAB>relation<TAB>tail`` (ids), one triple a line;
- ``entities.tsv``: header ``id<TAB>name<TAB>description`` (more columns are allowed and ignored);
- ``relations.tsv`` (optional): header ``id<TAB>text``; without it a relation id becomes its text
  (``_`` and ``/`` turned into spaces).
Every malformed line raises :class:`DataError` naming the file and line.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError

SPLITS = ("train", "valid", "test")
MAX_FIELD_CHARS = 100_000


@dataclass
class KnowledgeGraph:
    """Entities, relations and the three splits as integer triples ``(head, relation, tail)``."""

    name: str
    entity_ids: list[str]
    entity_names: list[str]
    entity_descriptions: list[str]
    relation_ids: list[str]
    relation_texts: list[str]
    splits: dict[str, np.ndarray]
    fingerprint: str
    source: str
    entity_index: dict[str, int] = field(init=False, repr=False)
    relation_index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.entity_index = {e: i for i, e in enumerate(self.entity_ids)}
        self.relation_index = {r: i for i, r in enumerate(self.relation_ids)}

    @property
    def num_entities(self) -> int:
        """Number of entities."""
        return len(self.entity_ids)

    @property
    def num_relations(self) -> int:
        """Number of (forward) relations; inverse ones are offset by this."""
        return len(self.relation_ids)

    def summary(self) -> str:
        """One line: name, entity, relation and triple counts per split."""
        counts = " / ".join(f"{len(self.splits[s]):,}" for s in SPLITS)
        return (f"{self.name}: {self.num_entities:,} entities, {self.num_relations} relations, "
                f"triples train/valid/test {counts}")

    def limited(self, train_limit: int | None) -> "KnowledgeGraph":
        """A copy with only the first ``train_limit`` training triples (entities and other splits unchanged)."""
        if train_limit is None or train_limit >= len(self.splits["train"]):
            return self
        splits = dict(self.splits, train=self.splits["train"][:train_limit])
        return KnowledgeGraph(self.name, self.entity_ids, self.entity_names, self.entity_descriptions,
                              self.relation_ids, self.relation_texts, splits,
                              f"{self.fingerprint}-train{train_limit}", self.source)


def decode_text(raw: bytes, filename: str) -> str:
    """Decode UTF-8 strictly, naming the line of the first bad byte; drop a BOM; refuse NUL bytes."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{filename}:{line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x})") from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise DataError(f"{filename}:{line}: contains a NUL byte (binary file?)")
    return text


def decode_lines(raw: bytes, filename: str) -> list[str]:
    """:func:`decode_text` split into lines, CRLF accepted."""
    lines = decode_text(raw, filename).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def fields(line: str, filename: str, lineno: int, expected: int) -> list[str]:
    """The ``expected`` TAB-separated fields of one line, or a :class:`DataError` naming the file and line."""
    parts = line.split("\t")
    if len(parts) != expected:
        raise DataError(f"{filename}:{lineno}: expected {expected} tab-separated columns, found {len(parts)}")
    for part in parts:
        if len(part) > MAX_FIELD_CHARS:
            raise DataError(f"{filename}:{lineno}: a field is {len(part):,} characters long "
                            f"(limit {MAX_FIELD_CHARS:,})")
    return parts


def parse_entities(raw: bytes, filename: str) -> tuple[list[str], list[str], list[str]]:
    """Ids, names and descriptions of an ``entities.tsv`` (header ``id, name, description``)."""
    lines = decode_lines(raw, filename)
    if not lines:
        raise DataError(f"{filename}: empty file (expected a header 'id<TAB>name<TAB>description')")
    header = lines[0].split("\t")
    if len(header) < 3 or [h.strip().lower() for h in header[:3]] not in (
            ["id", "name", "description"], ["entity_id", "name", "description"]):
        raise DataError(f"{filename}:1: header must start with 'id<TAB>name<TAB>description', found {lines[0][:80]!r}")
    ids, names, descriptions, seen = [], [], [], {}
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = fields(line, filename, lineno, len(header))
        entity_id, name, description = parts[0].strip(), parts[1].strip(), parts[2].strip()
        if not entity_id:
            raise DataError(f"{filename}:{lineno}: empty entity id")
        if not name:
            raise DataError(f"{filename}:{lineno}: entity '{entity_id}' has an empty name")
        if entity_id in seen:
            raise DataError(f"{filename}:{lineno}: duplicate entity id '{entity_id}' (first on line {seen[entity_id]})")
        seen[entity_id] = lineno
        ids.append(entity_id)
        names.append(name)
        descriptions.append(description)
    if not ids:
        raise DataError(f"{filename}: no entities after the header")
    return ids, names, descriptions


def parse_relations(raw: bytes, filename: str) -> dict[str, str]:
    """Relation id -> text of a ``relations.tsv`` (header ``id, text``), in file order."""
    lines = decode_lines(raw, filename)
    if not lines or [h.strip().lower() for h in lines[0].split("\t")[:2]] not in (["id", "text"], ["relation", "text"]):
        raise DataError(f"{filename}:1: header must be 'id<TAB>text'")
    width = len(lines[0].split("\t"))
    texts: dict[str, str] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = fields(line, filename, lineno, width)
        rel, text = parts[0].strip(), parts[1].strip()
        if not rel or not text:
            raise DataError(f"{filename}:{lineno}: empty relation id or text")
        if rel in texts:
            raise DataError(f"{filename}:{lineno}: duplicate relation id '{rel}'")
        texts[rel] = text
    return texts


def relation_id_to_text(relation: str) -> str:
    """Readable text for a relation without a relations.tsv entry: ``/film/actor_of`` -> ``film actor of``."""
    return " ".join(relation.replace("_", " ").replace("/", " ").split())


def parse_triples(raw: bytes, filename: str, entity_index: dict[str, int],
                  relation_index: dict[str, int] | None, new_relations: list[str],
                  entity_file: str = "entities.tsv", relation_file: str = "relations.tsv") -> np.ndarray:
    """Parse one split; with ``relation_index`` None relations are collected into ``new_relations`` (which may
    already hold those of earlier splits: their numbers are kept). The file names only go into error messages."""
    rows = []
    known = {r: i for i, r in enumerate(new_relations)} if relation_index is None else relation_index
    for lineno, line in enumerate(decode_lines(raw, filename), start=1):
        if not line.strip():
            continue
        head, rel, tail = (p.strip() for p in fields(line, filename, lineno, 3))
        for role, ent in (("head", head), ("tail", tail)):
            if ent not in entity_index:
                raise DataError(f"{filename}:{lineno}: unknown {role} entity '{ent[:80]}' (not in {entity_file})")
        if rel not in known:
            if relation_index is not None:
                raise DataError(f"{filename}:{lineno}: unknown relation '{rel[:80]}' (not in {relation_file})")
            if not rel:
                raise DataError(f"{filename}:{lineno}: empty relation")
            known[rel] = len(new_relations)
            new_relations.append(rel)
        rows.append((entity_index[head], known[rel], entity_index[tail]))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def digest_files(read: dict[str, bytes | None]) -> str:
    """Fingerprint of a dataset: its file names and contents (token caches and the load memo are keyed on it)."""
    digest = hashlib.sha256()
    for key in sorted(read):
        if read[key] is not None:
            digest.update(key.encode())
            digest.update(read[key])
    return digest.hexdigest()[:16]


def build_kgdistill(name: str, source: str, read: dict[str, bytes | None], fingerprint: str) -> KnowledgeGraph:
    """The graph of a folder in the documented format, from its files' bytes."""
    entity_ids, names, descriptions = parse_entities(read["entities.tsv"], f"{source}/entities.tsv")
    entity_index = {e: i for i, e in enumerate(entity_ids)}
    relation_texts_by_id = None
    if read.get("relations.tsv") is not None:
        relation_texts_by_id = parse_relations(read["relations.tsv"], f"{source}/relations.tsv")
    relation_order: list[str] = [] if relation_texts_by_id is None else list(relation_texts_by_id)
    relation_index = None if relation_texts_by_id is None else {r: i for i, r in enumerate(relation_order)}
    splits = {}
    for split in SPLITS:
        splits[split] = parse_triples(read[f"{split}.txt"], f"{source}/{split}.txt", entity_index, relation_index,
                                      relation_order)
    if len(splits["train"]) == 0:
        raise DataError(f"{source}/train.txt: no triples")
    texts = ([relation_texts_by_id[r] for r in relation_order] if relation_texts_by_id is not None
             else [relation_id_to_text(r) or r for r in relation_order])
    return KnowledgeGraph(name, entity_ids, names, descriptions, relation_order, texts, splits, fingerprint, source)


def read_bytes(path: Path) -> bytes:
    """A file's bytes; an unreadable file is a :class:`DataError` naming it."""
    try:
        return path.read_bytes()
    except OSError as exc:  # permission denied, I/O error: a user error naming the file, not a traceback
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_kgdistill(folder: Path) -> dict[str, bytes | None]:
    """The files of a folder in our format, by name (``relations.tsv`` None when absent)."""
    read: dict[str, bytes | None] = {}
    for filename in ("entities.tsv", *(f"{s}.txt" for s in SPLITS)):
        path = folder / filename
        if not path.is_file():
            also = "; or the SimKGC or KG-BERT files, see the README" if filename == "entities.tsv" else ""
            raise DataError(f"{path}: missing (a dataset folder needs entities.tsv, train.txt, valid.txt, test.txt"
                            f"{also})")
        read[filename] = read_bytes(path)
    relations = folder / "relations.tsv"
    read["relations.tsv"] = read_bytes(relations) if relations.is_file() else None
    return read
