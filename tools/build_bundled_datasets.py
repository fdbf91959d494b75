"""Rebuild src/kgdistill/datasets/*.tar.xz from the verified copies in ../shared/data (run once by a maintainer).

Each archive holds the documented folder format (train/valid/test.txt, entities.tsv, relations.tsv) plus the
upstream README.md and PROVENANCE.json, so provenance and licence notes travel with the data.
"""
from __future__ import annotations

import csv
import io
import lzma
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data"
OUT = ROOT / "src" / "kgdistill" / "datasets"


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def tsv(header: list[str], body: list[list[str]]) -> bytes:
    for row in body:
        assert all("\t" not in c and "\n" not in c for c in row), row
    return ("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in body)).encode("utf-8")


def pack(name: str, files: dict[str, bytes], note: str) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for filename, data in sorted({**files, "KGDISTILL_NOTE.md": note.encode()}.items()):
            info = tarfile.TarInfo(f"{name}/{filename}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.tar.xz").write_bytes(lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME))
    print(name, (OUT / f"{name}.tar.xz").stat().st_size, "bytes")


def wn18rr() -> None:
    src = SHARED / "wn18rr"
    ents = rows(src / "converted" / "entities.tsv")
    rels = rows(src / "converted" / "relations.tsv")
    files = {s: (src / s).read_bytes() for s in ("train.txt", "valid.txt", "test.txt", "README.md", "PROVENANCE.json")}
    files["entities.tsv"] = tsv(["id", "name", "description"], [[e["entity_id"], e["name"], e["description"]] for e in ents])
    files["relations.tsv"] = tsv(["id", "text"], [[r["relation"], r["text"]] for r in rels])
    pack("wn18rr", files, "Converted by tools/build_bundled_datasets.py: entities.tsv = converted/entities.tsv "
         "(id, SimKGC-parsed name, WordNet definition); relations.tsv = KG-BERT relation text. Triples verbatim.\n")


def fb15k237() -> None:
    src = SHARED / "fb15k-237"
    ents = rows(src / "converted" / "entities.tsv")
    rels = rows(src / "converted" / "relations.tsv")
    files = {s: (src / s).read_bytes() for s in ("train.txt", "valid.txt", "test.txt", "README.md", "PROVENANCE.json")}
    body = []
    for e in ents:
        description = e["description_first_sentence"].strip() or e["wikidata_description"].strip()
        body.append([e["mid"], e["name"].strip() or e["mid"], description])
    files["entities.tsv"] = tsv(["id", "name", "description"], body)
    files["relations.tsv"] = tsv(["id", "text"], [[r["relation"], r["simkgc_text"].strip()] for r in rels])
    pack("fb15k-237", files, "Converted by tools/build_bundled_datasets.py. CAVEAT: descriptions are the FIRST "
         "SENTENCE of the DKRL description (StAR substitute; the full file was unavailable), falling back to the short "
         "Wikidata description when empty. Expect FB15k-237 scores below published ones. relations.tsv = SimKGC's "
         "normalised relation text. Triples verbatim.\n")


if __name__ == "__main__":
    wn18rr()
    fb15k237()
