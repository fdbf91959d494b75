"""The layouts other text-based KG completion projects ship their graphs in, read as they are, and our format
written back (:func:`kgdistill.data.loading.convert_dataset`, ``kgdistill convert``).

SimKGC / PMD (what SimKGC's ``preprocess.py`` writes, Wikidata5M included; UTF-8 JSON, a BOM accepted):
- ``entities.json``: a list of ``{"entity_id", "entity", "entity_desc"}``. The name is ``entity`` and the description
  ``entity_desc`` (empty or null: the text is the name alone). When every name is a WordNet sense key
  (``stool_NN_2``) it is cut to its lemma (``stool``), as SimKGC does for WN18RR. A null or empty ``entity`` (a few
  Wikidata5M entities) becomes the entity id, so that the entity stays findable and the graph convertible.
- ``train.txt.json``, ``valid.txt.json``, ``test.txt.json``: lists of ``{"head_id", "head", "relation", "tail_id",
  "tail"}``; entities are found by ``head_id``/``tail_id`` (``head``/``tail`` are ignored, as in SimKGC).
- ``relation`` is already the relation's text (preprocess.py normalised it) and is also its id; surrounding spaces
  are dropped (SimKGC's FB15k-237 relations end in one; the tokens are the same). Inverse queries are built at load
  time by prefixing ``inverse ``, as SimKGC does; a relation string that itself begins with ``inverse `` is an
  ordinary forward relation with that text, never read as an inverse triple.
- Tabs and line breaks inside JSON strings become spaces (our TSV format cannot hold them); an id may hold neither.
- ``relations.json`` and the raw ``train.txt`` etc. beside the JSON files are not read.

KG-BERT (KG-BERT, StAR and their successors; UTF-8, TAB-separated, a BOM and CRLF accepted):
- ``entity2text.txt``: ``id<TAB>name``; ``entity2textlong.txt`` (optional): ``id<TAB>description`` (an entity
  without a line there has an empty description);
- ``relation2text.txt``: ``id<TAB>text``;
- ``entities.txt``, ``relations.txt`` (optional, one id a line): the entities and relations of the graph, in order;
  without them every id of entity2text.txt / relation2text.txt is one. Text lines of other ids are ignored
  (KG-BERT's FB15k-237 text files cover all of FB15k);
- ``train.tsv``, ``dev.tsv`` (the validation split; ``valid.tsv`` is accepted instead), ``test.tsv``:
  ``head<TAB>relation<TAB>tail`` (ids).

A folder is recognised by ``entities.tsv`` (ours), ``entities.json`` (SimKGC), ``entity2text.txt`` (KG-BERT) or
``entities.csv`` / ``entities.parquet`` (tables, :mod:`kgdistill.data.frames`), in that order when it holds several;
``data.format`` names one of the first three instead. Every malformed line raises :class:`DataError` naming the file
and line, as for our format.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io import atomic_write_text
from .dataset import (MAX_FIELD_CHARS, SPLITS, KnowledgeGraph, build_kgdistill, decode_lines, decode_text, fields,
                      parse_triples, read_bytes, read_kgdistill)
from .frames import TABLE_LAYOUTS, TABLE_MARKERS

FORMATS = ("auto", "kgdistill", "simkgc", "kgbert")
MARKERS = {"kgdistill": "entities.tsv", "simkgc": "entities.json", "kgbert": "entity2text.txt", **TABLE_MARKERS}
SIMKGC_FILES = ("entities.json", *(f"{s}.txt.json" for s in SPLITS))
KGBERT_FILES = ("entity2text.txt", "relation2text.txt", "train.tsv", "test.tsv")
KGBERT_OPTIONAL = ("entity2textlong.txt", "entities.txt", "relations.txt")
KGBERT_VALID = ("dev.tsv", "valid.tsv")

_WORDNET_SENSE = re.compile(r".+_(NN|VB|JJ|RB)_\d+$")
_BREAKS = str.maketrans("\t\r\n", "   ")
_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def detect_format(folder: Path) -> str:
    """The layout of a folder by its files; ours when none is recognised (its error then names what is missing)."""
    return next((layout for layout, marker in MARKERS.items() if (folder / marker).is_file()), "kgdistill")


# ---------------------------------------------------------------------------------------------------- SimKGC
def read_simkgc(folder: Path) -> dict[str, bytes | None]:
    """The files of a folder in SimKGC's layout, by name."""
    read: dict[str, bytes | None] = {}
    for filename in SIMKGC_FILES:
        path = folder / filename
        if not path.is_file():
            raise DataError(f"{path}: missing (a SimKGC folder needs {', '.join(SIMKGC_FILES)}, as its preprocess.py "
                            f"writes them)")
        read[filename] = read_bytes(path)
    return read


def _json_list(raw: bytes, filename: str, shape: str) -> tuple[list, str]:
    text = decode_text(raw, filename)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{filename}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise DataError(f"{filename}:1: expected a JSON list of {shape} objects, found {type(data).__name__}")
    return data, text


def _json_line(text: str, index: int) -> int:
    """Line on which the ``index``-th element of a top-level JSON list starts (computed for error messages only)."""
    decoder = json.JSONDecoder()
    pos = _JSON_SPACE.match(text, text.index("[") + 1).end()
    for _ in range(index):
        pos = decoder.raw_decode(text, pos)[1]
        pos = _JSON_SPACE.match(text, text.index(",", pos) + 1).end()
    return text.count("\n", 0, pos) + 1


class _Record:
    """One object of a SimKGC JSON list, whose errors name the file and the line the object starts on."""

    def __init__(self, value, index: int, filename: str, text: str, shape: str):
        self.index, self.filename, self.text = index, filename, text
        if not isinstance(value, dict):
            raise self.error(f"expected an object {shape}, found {type(value).__name__}")
        self.value = value

    def error(self, message: str) -> DataError:
        return DataError(f"{self.filename}:{_json_line(self.text, self.index)}: {message}")

    def string(self, key: str, required: bool) -> str:
        value = self.value.get(key)
        if value is None:
            if required:
                raise self.error(f"'{key}' is missing or null")
            return ""
        if not isinstance(value, str):
            raise self.error(f"'{key}' must be a string, found {type(value).__name__}")
        if len(value) > MAX_FIELD_CHARS:
            raise self.error(f"'{key}' is {len(value):,} characters long (limit {MAX_FIELD_CHARS:,})")
        return value

    def identifier(self, key: str) -> str:
        value = self.string(key, required=True).strip()
        if not value:
            raise self.error(f"empty '{key}'")
        if any(c in value for c in "\t\r\n"):
            raise self.error(f"'{key}' {value[:80]!r} contains a tab or line break")
        return value

    def words(self, key: str) -> str:
        return self.string(key, required=False).translate(_BREAKS).strip()


def _simkgc_entities(raw: bytes, filename: str) -> tuple[list[str], list[str], list[str]]:
    shape = '{"entity_id", "entity", "entity_desc"}'
    records, text = _json_list(raw, filename, shape)
    ids, names, descriptions, seen = [], [], [], {}
    for i, value in enumerate(records):
        record = _Record(value, i, filename, text, shape)
        entity_id = record.identifier("entity_id")
        if entity_id in seen:
            raise record.error(f"duplicate entity_id '{entity_id}' (first on line {_json_line(text, seen[entity_id])})")
        seen[entity_id] = i
        ids.append(entity_id)
        names.append(record.words("entity") or entity_id)
        descriptions.append(record.words("entity_desc"))
    if not ids:
        raise DataError(f"{filename}: no entities")
    if all(_WORDNET_SENSE.match(name) for name in names):  # SimKGC's _parse_entity_name for WN18RR
        names = [" ".join(name.split("_")[:-2]).strip() or name for name in names]
    return ids, names, descriptions


def _simkgc_triples(raw: bytes, filename: str, entity_index: dict[str, int], relations: list[str]) -> np.ndarray:
    """One split; relations are numbered by first appearance, continuing the numbers of earlier splits."""
    shape = '{"head_id", "relation", "tail_id"}'
    records, text = _json_list(raw, filename, shape)
    known = {r: i for i, r in enumerate(relations)}
    as_written: dict[str, int] = {}  # relation strings as in the file -> number, for the fast path
    rows = []
    for i, value in enumerate(records):
        try:  # fast path (Wikidata5M has 21M triples): ids and relation exactly as an earlier record had them
            rows.append((entity_index[value["head_id"]], as_written[value["relation"]],
                         entity_index[value["tail_id"]]))
            continue
        except (KeyError, TypeError):
            pass
        record = _Record(value, i, filename, text, shape)
        head, tail = record.identifier("head_id"), record.identifier("tail_id")
        for role, entity in (("head", head), ("tail", tail)):
            if entity not in entity_index:
                raise record.error(f"unknown {role} entity '{entity[:80]}' ({role}_id not in entities.json)")
        relation = record.words("relation")
        if not relation:
            raise record.error("empty or null relation (SimKGC's preprocess.py writes null for a relation without "
                               "text)")
        if relation not in known:
            known[relation] = len(relations)
            relations.append(relation)
        as_written[value["relation"]] = known[relation]
        rows.append((entity_index[head], known[relation], entity_index[tail]))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def build_simkgc(name: str, source: str, read: dict[str, bytes | None], fingerprint: str) -> KnowledgeGraph:
    """The graph of a SimKGC folder, from its files' bytes."""
    ids, names, descriptions = _simkgc_entities(read["entities.json"], f"{source}/entities.json")
    entity_index = {e: i for i, e in enumerate(ids)}
    relations: list[str] = []
    splits = {s: _simkgc_triples(read[f"{s}.txt.json"], f"{source}/{s}.txt.json", entity_index, relations)
              for s in SPLITS}
    if len(splits["train"]) == 0:
        raise DataError(f"{source}/train.txt.json: no triples")
    return KnowledgeGraph(name, ids, names, descriptions, relations, list(relations), splits, fingerprint, source)


# ---------------------------------------------------------------------------------------------------- KG-BERT
def read_kgbert(folder: Path) -> dict[str, bytes | None]:
    """The files of a folder in KG-BERT's layout, by name (optional ones None when absent)."""
    read: dict[str, bytes | None] = {}
    for filename in KGBERT_FILES:
        path = folder / filename
        if not path.is_file():
            raise DataError(f"{path}: missing (a KG-BERT folder needs {', '.join(KGBERT_FILES)} and dev.tsv)")
        read[filename] = read_bytes(path)
    valid = [name for name in KGBERT_VALID if (folder / name).is_file()]
    if not valid:
        raise DataError(f"{folder / 'dev.tsv'}: missing (KG-BERT's validation split; valid.tsv is accepted instead)")
    if len(valid) > 1:
        raise DataError(f"{folder}: holds both dev.tsv and valid.tsv; keep one (KG-BERT reads dev.tsv)")
    read[valid[0]] = read_bytes(folder / valid[0])
    for filename in KGBERT_OPTIONAL:
        read[filename] = read_bytes(folder / filename) if (folder / filename).is_file() else None
    return read


def _id_texts(raw: bytes, filename: str) -> dict[str, tuple[str, int]]:
    """``id<TAB>text`` lines -> ``{id: (text, line)}``."""
    out: dict[str, tuple[str, int]] = {}
    for lineno, line in enumerate(decode_lines(raw, filename), start=1):
        if not line.strip():
            continue
        key, text = (part.strip() for part in fields(line, filename, lineno, 2))
        if not key:
            raise DataError(f"{filename}:{lineno}: empty id")
        if key in out:
            raise DataError(f"{filename}:{lineno}: duplicate id '{key}' (first on line {out[key][1]})")
        out[key] = (text, lineno)
    return out


def _id_list(raw: bytes, filename: str) -> dict[str, int]:
    """One id a line -> ``{id: line}`` in file order."""
    out: dict[str, int] = {}
    for lineno, line in enumerate(decode_lines(raw, filename), start=1):
        if not line.strip():
            continue
        key = fields(line, filename, lineno, 1)[0].strip()
        if key in out:
            raise DataError(f"{filename}:{lineno}: duplicate id '{key}' (first on line {out[key]})")
        out[key] = lineno
    return out


def _kgbert_members(read: dict[str, bytes | None], source: str, texts_file: str, list_file: str, what: str
                    ) -> tuple[list[str], list[str], str]:
    """Ids (from the list file, else the text file), their texts, and the file that defines membership."""
    texts = _id_texts(read[texts_file], f"{source}/{texts_file}")
    listed = _id_list(read[list_file], f"{source}/{list_file}") if read[list_file] is not None else None
    ids = list(texts) if listed is None else list(listed)
    for key in ids:
        if key not in texts:
            raise DataError(f"{source}/{list_file}:{listed[key]}: {what} '{key}' has no line in {texts_file}")
        if not texts[key][0]:
            raise DataError(f"{source}/{texts_file}:{texts[key][1]}: {what} '{key}' has an empty text")
    return ids, [texts[key][0] for key in ids], texts_file if listed is None else list_file


def build_kgbert(name: str, source: str, read: dict[str, bytes | None], fingerprint: str) -> KnowledgeGraph:
    """The graph of a KG-BERT folder, from its files' bytes."""
    ids, names, entity_file = _kgbert_members(read, source, "entity2text.txt", "entities.txt", "entity")
    long = _id_texts(read["entity2textlong.txt"], f"{source}/entity2textlong.txt") \
        if read["entity2textlong.txt"] is not None else {}
    descriptions = [long[key][0] if key in long else "" for key in ids]
    relations, texts, relation_file = _kgbert_members(read, source, "relation2text.txt", "relations.txt", "relation")
    entity_index = {e: i for i, e in enumerate(ids)}
    relation_index = {r: i for i, r in enumerate(relations)}
    files = {"train": "train.tsv", "valid": next(f for f in KGBERT_VALID if read.get(f) is not None),
             "test": "test.tsv"}
    splits = {split: parse_triples(read[filename], f"{source}/{filename}", entity_index, relation_index, relations,
                                   entity_file, relation_file) for split, filename in files.items()}
    if len(splits["train"]) == 0:
        raise DataError(f"{source}/train.tsv: no triples")
    return KnowledgeGraph(name, ids, names, descriptions, relations, texts, splits, fingerprint, source)


LAYOUTS = {"kgdistill": (read_kgdistill, build_kgdistill), "simkgc": (read_simkgc, build_simkgc),
           "kgbert": (read_kgbert, build_kgbert), **TABLE_LAYOUTS}


# ---------------------------------------------------------------------------------------------------- writing
def write_dataset(kg: KnowledgeGraph, folder: Path) -> None:
    """The graph in the documented folder format, entities and relations in their original order."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["id\tname\tdescription"] + [f"{i}\t{n}\t{d}" for i, n, d in
                                         zip(kg.entity_ids, kg.entity_names, kg.entity_descriptions)]
    atomic_write_text(folder / "entities.tsv", "\n".join(rows) + "\n")
    rows = ["id\ttext"] + [f"{r}\t{t}" for r, t in zip(kg.relation_ids, kg.relation_texts)]
    atomic_write_text(folder / "relations.tsv", "\n".join(rows) + "\n")
    e, r = kg.entity_ids, kg.relation_ids
    for split in SPLITS:
        lines = "".join(f"{e[h]}\t{r[rel]}\t{e[t]}\n" for h, rel, t in kg.splits[split])
        atomic_write_text(folder / f"{split}.txt", lines)
