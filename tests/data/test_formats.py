"""Datasets in the SimKGC and KG-BERT layouts, read as they are (issue 13): the same in-memory graph as the original
projects build, the same one-line ``file:line`` errors as our own format, ``kgdistill convert``, and a few training
steps on each layout."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kgdistill.cli import main
from kgdistill.data.dataset import SPLITS
from kgdistill.data.formats import detect_format
from kgdistill.data.loading import convert_dataset, load_dataset
from kgdistill.data.text import TextBuilder
from kgdistill.errors import DataError
from conftest import TINY, assert_user_error

# ---------------------------------------------------------------------------------------------------- tiny folders
SIMKGC_ENTITIES = [
    {"entity_id": "/m/dog", "entity": "Dog", "entity_desc": "Dog is a domestic animal."},
    {"entity_id": "/m/cat", "entity": "Cat", "entity_desc": ""},  # empty description: the text is the name alone
    {"entity_id": "/m/wolf", "entity": "Wolf", "entity_desc": "A wild\tcanine\nof the north."},
    {"entity_id": "/m/fox", "entity": None, "entity_desc": "a small wild canine"},  # Wikidata5M has null names
]
SIMKGC_SPLITS = {
    "train": [("/m/dog", "similar to", "/m/wolf"), ("/m/cat", "animal pet ", "/m/dog"),
              ("/m/wolf", "inverse of prey", "/m/fox")],
    "valid": [("/m/fox", "similar to", "/m/wolf")],
    "test": [("/m/dog", "hunts", "/m/fox")],  # a relation first seen in test
}


def write_simkgc(folder: Path, entities=SIMKGC_ENTITIES, splits=SIMKGC_SPLITS) -> Path:
    """Files as SimKGC's preprocess.py writes them (json.dump, indent 4), beside a raw train.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "entities.json").write_text(json.dumps(entities, indent=4), encoding="utf-8")
    for split, triples in splits.items():
        records = [{"head_id": h, "head": "ignored", "relation": r, "tail_id": t, "tail": "ignored"}
                   for h, r, t in triples]
        (folder / f"{split}.txt.json").write_text(json.dumps(records, indent=4), encoding="utf-8")
    (folder / "train.txt").write_text("raw\tfile\tbeside\n", encoding="utf-8")
    return folder


KGBERT_FILES = {
    "entity2text.txt": "E1\tdog\nE2\tcat\nE3\twolf\nE4\tfox\nE9\tnot in the graph\n",
    "entity2textlong.txt": "E1\tdog, a domestic animal\nE3\ta wild canine\nE9\tignored\n",  # E2, E4: no long text
    "relation2text.txt": "_similar_to\tsimilar to\n_hunts\thunts\n_unused\tnever used\n",
    "entities.txt": "E1\nE2\nE3\nE4\n",
    "relations.txt": "_similar_to\n_hunts\n",
    "train.tsv": "E1\t_similar_to\tE3\nE3\t_hunts\tE4\n",
    "dev.tsv": "E2\t_similar_to\tE1\n",
    "test.tsv": "E1\t_hunts\tE2\n",
}


def write_kgbert(folder: Path, files: dict[str, str] = KGBERT_FILES, crlf: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_bytes((text.replace("\n", "\r\n") if crlf else text).encode("utf-8"))
    return folder


def triples(kg, split: str) -> list[tuple[str, str, str]]:
    return [(kg.entity_ids[h], kg.relation_ids[r], kg.entity_ids[t]) for h, r, t in kg.splits[split].tolist()]


# ---------------------------------------------------------------------------------------------------- SimKGC
def test_simkgc_layout_is_read_as_simkgc_builds_it(tmp_path):
    kg = load_dataset(str(write_simkgc(tmp_path / "sk")))
    assert kg.entity_ids == ["/m/dog", "/m/cat", "/m/wolf", "/m/fox"]
    assert kg.entity_names == ["Dog", "Cat", "Wolf", "/m/fox"]  # a null name becomes the id
    assert kg.entity_descriptions == ["Dog is a domestic animal.", "", "A wild canine of the north.",
                                      "a small wild canine"]
    # relation text is the relation string (stripped), also its id; 'inverse of prey' stays a forward relation
    assert kg.relation_ids == kg.relation_texts == ["similar to", "animal pet", "inverse of prey", "hunts"]
    assert triples(kg, "train") == [("/m/dog", "similar to", "/m/wolf"), ("/m/cat", "animal pet", "/m/dog"),
                                    ("/m/wolf", "inverse of prey", "/m/fox")]
    assert triples(kg, "test") == [("/m/dog", "hunts", "/m/fox")]
    texts = TextBuilder(kg, use_neighbors=False)
    assert texts.entity_text(0) == "Dog: is a domestic animal."  # SimKGC's _concat_name_desc drops the name prefix
    assert texts.entity_text(1) == "Cat"
    assert texts.relation_text(kg.num_relations + 2) == "inverse inverse of prey"  # the inverse query of it


def test_simkgc_wordnet_sense_keys_become_lemmas(tmp_path):
    wordnet = [{"entity_id": "1", "entity": "stool_NN_2", "entity_desc": "solid excretory product"},
               {"entity_id": "2", "entity": "german_shepherd_dog_NN_1", "entity_desc": "a breed"},
               {"entity_id": "3", "entity": "run_up_VB_3", "entity_desc": ""}]
    splits = {s: [("1", "hypernym", "2")] for s in SPLITS}
    kg = load_dataset(str(write_simkgc(tmp_path / "wn", wordnet, splits)))
    assert kg.entity_names == ["stool", "german shepherd dog", "run up"]
    mixed = [*wordnet, {"entity_id": "4", "entity": "Paris", "entity_desc": ""}]  # not WordNet: names kept
    kg = load_dataset(str(write_simkgc(tmp_path / "mixed", mixed, splits)))
    assert kg.entity_names == ["stool_NN_2", "german_shepherd_dog_NN_1", "run_up_VB_3", "Paris"]


def _json_edit(file: str, edit):
    def mutate(folder: Path) -> None:
        data = json.loads((folder / file).read_text(encoding="utf-8"))
        edit(data)
        (folder / file).write_text(json.dumps(data, indent=4), encoding="utf-8")
    return mutate


def _set(index: int, key: str, value):
    return lambda data: data[index].__setitem__(key, value)


# indent=4 puts record i of a list on line 2 + 7 * i (entities: 2 + 5 * i)
SIMKGC_CASES = [
    ("unknown-head", _json_edit("train.txt.json", _set(1, "head_id", "/m/ghost")),
     ["train.txt.json:9:", "unknown head entity '/m/ghost'", "entities.json"]),
    ("unknown-head-after-its-relation", _json_edit("train.txt.json", lambda d: d[2].update(relation="similar to",
                                                                                           head_id="/m/ghost")),
     ["train.txt.json:16:", "unknown head entity '/m/ghost'"]),
    ("unknown-tail-in-test", _json_edit("test.txt.json", _set(0, "tail_id", "/m/none")),
     ["test.txt.json:2:", "unknown tail entity '/m/none'"]),
    ("null-relation", _json_edit("valid.txt.json", _set(0, "relation", None)),
     ["valid.txt.json:2:", "null relation"]),
    ("missing-head-id", _json_edit("train.txt.json", lambda d: d[2].pop("head_id")),
     ["train.txt.json:16:", "'head_id' is missing"]),
    ("numeric-entity-id", _json_edit("entities.json", _set(2, "entity_id", 7)),
     ["entities.json:12:", "'entity_id' must be a string"]),
    ("duplicate-entity", _json_edit("entities.json", lambda d: d.append(dict(d[1]))),
     ["entities.json:22:", "duplicate entity_id '/m/cat'", "first on line 7"]),
    ("id-with-tab", _json_edit("entities.json", _set(0, "entity_id", "a\tb")), ["entities.json:2:", "tab"]),
    ("record-not-object", _json_edit("train.txt.json", lambda d: d.__setitem__(0, ["/m/dog", "r", "/m/cat"])),
     ["train.txt.json:2:", "expected an object"]),
    ("not-a-list", lambda f: (f / "entities.json").write_text('{"entity_id": "x"}'),
     ["entities.json:1:", "expected a JSON list"]),
    ("invalid-json", lambda f: (f / "valid.txt.json").write_text('[\n  {"head_id": "/m/dog",,}\n]'),
     ["valid.txt.json:2:", "not valid JSON"]),
    ("huge-description", _json_edit("entities.json", _set(0, "entity_desc", "x" * 100_001)),
     ["entities.json:2:", "100,001 characters"]),
    ("empty-train", lambda f: (f / "train.txt.json").write_text("[]"), ["train.txt.json", "no triples"]),
    ("latin1", lambda f: (f / "entities.json").write_bytes(b'[{"entity_id": "x", "entity": "caf\xe9"}]'),
     ["entities.json:1:", "UTF-8"]),
    ("missing-valid", lambda f: (f / "valid.txt.json").unlink(), ["valid.txt.json", "missing", "SimKGC"]),
]


@pytest.mark.parametrize("mutate, expected", [pytest.param(m, e, id=i) for i, m, e in SIMKGC_CASES])
def test_malformed_simkgc_folder_is_one_line_error(mutate, expected, tiny_plm, tmp_path, capsys):
    folder = write_simkgc(tmp_path / "sk")
    mutate(folder)
    with pytest.raises(DataError) as info:
        load_dataset(str(folder))
    for text in expected:
        assert text in str(info.value)
    _assert_cli_error(folder, tiny_plm, tmp_path, capsys, expected)


def _assert_cli_error(folder: Path, plm: Path, tmp_path: Path, capsys, expected: list[str]) -> None:
    capsys.readouterr()
    rc = main(["train", "--preset", "", "--dataset", str(folder), "--plm", str(plm), "--output-dir",
               str(tmp_path / "out"), *TINY])
    assert_user_error(rc, capsys.readouterr().err, expected)
    assert not (tmp_path / "out").exists()  # failed before anything was written


# ---------------------------------------------------------------------------------------------------- KG-BERT
@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
def test_kgbert_layout_is_read_as_kgbert_builds_it(crlf, tmp_path):
    kg = load_dataset(str(write_kgbert(tmp_path / "kb", crlf=crlf)))
    assert kg.entity_ids == ["E1", "E2", "E3", "E4"]  # entities.txt defines the graph; E9's text lines are ignored
    assert kg.entity_names == ["dog", "cat", "wolf", "fox"]
    assert kg.entity_descriptions == ["dog, a domestic animal", "", "a wild canine", ""]  # no entity2textlong: ""
    assert kg.relation_ids == ["_similar_to", "_hunts"]
    assert kg.relation_texts == ["similar to", "hunts"]
    assert triples(kg, "valid") == [("E2", "_similar_to", "E1")]  # dev.tsv is the validation split
    texts = TextBuilder(kg, use_neighbors=False)
    assert texts.entity_text(0) == "dog: , a domestic animal"  # name + long text, the repeated name dropped
    assert texts.entity_text(1) == "cat"


def test_kgbert_without_list_files_and_with_valid_tsv(tmp_path):
    files = {k: v for k, v in KGBERT_FILES.items() if k not in ("entities.txt", "relations.txt", "dev.tsv")}
    files["valid.tsv"] = "E4\t_hunts\tE9\n"
    kg = load_dataset(str(write_kgbert(tmp_path / "kb", files)))
    assert kg.entity_ids == ["E1", "E2", "E3", "E4", "E9"]  # every id of entity2text.txt
    assert kg.relation_ids == ["_similar_to", "_hunts", "_unused"]
    assert triples(kg, "valid") == [("E4", "_hunts", "E9")]


def _kgbert(**changes):
    return {**KGBERT_FILES, **changes}


def _without(*names):
    return {k: v for k, v in KGBERT_FILES.items() if k not in names}


KGBERT_CASES = [
    ("triple-entity-without-text", _without("entities.txt") | {"test.tsv": "E1\t_hunts\tE1\nE1\t_hunts\tE7\n"},
     ["test.tsv:2:", "unknown tail entity 'E7'", "not in entity2text.txt"]),
    ("triple-entity-not-listed", _kgbert(**{"train.tsv": "E9\t_hunts\tE1\n"}),
     ["train.tsv:1:", "unknown head entity 'E9'", "not in entities.txt"]),
    ("listed-entity-without-text", _kgbert(**{"entities.txt": "E1\nE2\nE5\n"}),
     ["entities.txt:3:", "entity 'E5' has no line in entity2text.txt"]),
    ("unknown-relation", _kgbert(**{"dev.tsv": "E1\t_likes\tE2\n"}),
     ["dev.tsv:1:", "unknown relation '_likes'", "relations.txt"]),
    ("entity2text-three-columns", _kgbert(**{"entity2text.txt": "E1\tdog\nE2\tcat\textra\n"}),
     ["entity2text.txt:2:", "columns"]),
    ("duplicate-entity-text", _kgbert(**{"entity2text.txt": "E1\tdog\nE2\tcat\nE3\tw\nE4\tf\nE2\tagain\n"}),
     ["entity2text.txt:5:", "duplicate id 'E2'", "first on line 2"]),
    ("empty-name", _kgbert(**{"entity2text.txt": "E1\tdog\nE2\t \nE3\tw\nE4\tf\n"}),
     ["entity2text.txt:2:", "entity 'E2' has an empty text"]),
    ("triple-two-columns", _kgbert(**{"train.tsv": "E1\t_hunts\tE2\nE1 _hunts E2\n"}), ["train.tsv:2:", "columns"]),
    ("dev-and-valid", _kgbert(**{"valid.tsv": "E1\t_hunts\tE2\n"}), ["dev.tsv and valid.tsv"]),
    ("no-dev", _without("dev.tsv"), ["dev.tsv", "missing", "valid.tsv"]),
    ("no-relation2text", _without("relation2text.txt"), ["relation2text.txt", "missing", "KG-BERT"]),
]


@pytest.mark.parametrize("files, expected", [pytest.param(f, e, id=i) for i, f, e in KGBERT_CASES])
def test_malformed_kgbert_folder_is_one_line_error(files, expected, tiny_plm, tmp_path, capsys):
    folder = write_kgbert(tmp_path / "kb", files)
    with pytest.raises(DataError) as info:
        load_dataset(str(folder))
    for text in expected:
        assert text in str(info.value)
    _assert_cli_error(folder, tiny_plm, tmp_path, capsys, expected)


# ---------------------------------------------------------------------------------------------------- detection
def test_layout_detection_and_data_format(tmp_path):
    simkgc, kgbert = write_simkgc(tmp_path / "sk"), write_kgbert(tmp_path / "kb")
    assert detect_format(simkgc) == "simkgc" and detect_format(kgbert) == "kgbert"
    assert detect_format(tmp_path) == "kgdistill"  # nothing recognised: our format, whose error names the files
    with pytest.raises(DataError, match=r"entities\.tsv: missing .*SimKGC or KG-BERT"):
        load_dataset(str(tmp_path))
    both = tmp_path / "both"
    shutil.copytree(simkgc, both)
    write_kgbert(both)
    assert detect_format(both) == "simkgc"  # ours, SimKGC's, KG-BERT's: the first one present
    assert load_dataset(str(both), "kgbert").entity_ids == ["E1", "E2", "E3", "E4"]  # data.format picks another
    with pytest.raises(DataError, match=r"entity2text\.txt: missing"):
        load_dataset(str(simkgc), "kgbert")
    with pytest.raises(DataError, match="bundled dataset"):
        load_dataset("wn18rr", "simkgc")
    with pytest.raises(DataError, match="data.format 'csv'"):
        load_dataset(str(simkgc), "csv")


def test_identical_files_are_parsed_once(tmp_path):
    folder = write_kgbert(tmp_path / "kb")
    first = load_dataset(str(folder))
    assert load_dataset(str(folder), "kgbert") is first  # the check before a model loads, then the job's own load
    (folder / "test.tsv").write_text("E2\t_hunts\tE1\n", encoding="utf-8")
    changed = load_dataset(str(folder))
    assert changed is not first and triples(changed, "test") == [("E2", "_hunts", "E1")]


# ---------------------------------------------------------------------------------------------------- convert
@pytest.mark.parametrize("write", [write_simkgc, write_kgbert], ids=["simkgc", "kgbert"])
def test_convert_writes_our_format_with_the_same_graph(write, tmp_path, capsys):
    source = write(tmp_path / "src")
    out = tmp_path / "converted"
    assert main(["convert", str(source), "--output", str(out)]) == 0
    assert "written in the kgdistill format" in capsys.readouterr().out
    original, converted = load_dataset(str(source)), load_dataset(str(out))
    assert detect_format(out) == "kgdistill"
    for attr in ("entity_ids", "entity_names", "entity_descriptions", "relation_ids", "relation_texts"):
        assert getattr(converted, attr) == getattr(original, attr), attr
    for split in SPLITS:
        assert triples(converted, split) == triples(original, split)
    assert main(["convert", str(source), "--output", str(out)]) == 2  # not empty now
    assert "not an empty folder" in capsys.readouterr().err
    with pytest.raises(DataError, match="the dataset folder itself"):
        convert_dataset(source, source)


# ---------------------------------------------------------------------------------------------------- training
def _layouts_of(kg_folder: Path, tmp_path: Path) -> dict[str, Path]:
    """The conftest tiny KG written in both foreign layouts (24 entities, enough triples for batch 8)."""
    kg = load_dataset(str(kg_folder))
    ent = [{"entity_id": e, "entity": n, "entity_desc": d}
           for e, n, d in zip(kg.entity_ids, kg.entity_names, kg.entity_descriptions)]
    text = dict(zip(kg.relation_ids, kg.relation_texts))
    simkgc = write_simkgc(tmp_path / "simkgc", ent, {
        s: [(h, text[r], t) for h, r, t in triples(kg, s)] for s in SPLITS})
    files = {"entity2text.txt": "".join(f"{e}\t{n}\n" for e, n in zip(kg.entity_ids, kg.entity_names)),
             "entity2textlong.txt": "".join(f"{e}\t{d}\n" for e, d in zip(kg.entity_ids, kg.entity_descriptions)
                                            if d),
             "relation2text.txt": "".join(f"{r}\t{t}\n" for r, t in text.items()),
             **{f"{'dev' if s == 'valid' else s}.tsv": "".join("\t".join(x) + "\n" for x in triples(kg, s))
                for s in SPLITS}}
    return {"simkgc": simkgc, "kgbert": write_kgbert(tmp_path / "kgbert", files)}


@pytest.mark.parametrize("layout", ["simkgc", "kgbert"])
def test_each_layout_trains_and_evaluates(layout, tiny_kg, tiny_plm, tmp_path, cache_dir, capsys):
    folder = _layouts_of(tiny_kg, tmp_path)[layout]
    run = tmp_path / "run"
    assert main(["train", "--preset", "", "--dataset", str(folder), "--plm", str(tiny_plm), "--output-dir", str(run),
                 f"data.format={layout}", *TINY]) == 0, capsys.readouterr().err
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["num_entities"] == 24 and 0 < metrics["no_rerank"]["both"]["mrr"] <= 1
    capsys.readouterr()
    assert main(["evaluate", "--model", str(run), "--split", "valid", "--json", "--output", str(tmp_path / "ev")]) == 0
    assert json.loads(capsys.readouterr().out)["split"] == "valid"
