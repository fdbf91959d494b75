"""Property tests of the dataset loader and of entity text (issue 6)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from kgdistill.data.dataset import SPLITS, relation_id_to_text
from kgdistill.data.loading import load_dataset
from kgdistill.data.text import join_name_description
from kgdistill.errors import DataError

SETTINGS = settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Any text without tab, newline, CR or NUL and without lone surrogates (not encodable as UTF-8): printable text and
# more (vertical tab, form feed, NEL, Unicode line/paragraph separators, exotic spaces): the loader splits on '\n'
# only. Leading and trailing whitespace of a field is stripped by design.
FIELD = st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r\x00")
IDS = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=12)
NAMES = st.text(FIELD, min_size=1, max_size=30).filter(lambda s: s.strip())
DESCRIPTIONS = st.text(FIELD, max_size=60)


def write_folder(folder: Path, files: dict[str, str], crlf: bool, bom: bool) -> None:
    for name, text in files.items():
        data = (text.replace("\n", "\r\n") if crlf else text).encode("utf-8")
        (folder / name).write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)


def tsv(rows) -> str:
    return "".join("\t".join(row) + "\n" for row in rows)


# ---------------------------------------------------------------------------------------------------- round trip
@SETTINGS
@given(data=st.data(),
       entities=st.lists(st.tuples(IDS, NAMES, DESCRIPTIONS), min_size=1, max_size=8, unique_by=lambda e: e[0]),
       relations=st.lists(st.tuples(IDS, NAMES), min_size=1, max_size=4, unique_by=lambda r: r[0]),
       with_relations_file=st.booleans(), crlf=st.booleans(), bom=st.booleans())
def test_tsv_loader_round_trips_arbitrary_text(data, entities, relations, with_relations_file, crlf, bom):
    triple = st.tuples(st.integers(0, len(entities) - 1), st.integers(0, len(relations) - 1),
                       st.integers(0, len(entities) - 1))
    splits = {split: data.draw(st.lists(triple, min_size=1 if split == "train" else 0, max_size=6), label=split)
              for split in SPLITS}
    files = {"entities.tsv": tsv([("id", "name", "description"), *entities])}
    if with_relations_file:
        files["relations.tsv"] = tsv([("id", "text"), *relations])
    for split, rows in splits.items():
        files[f"{split}.txt"] = tsv((entities[h][0], relations[r][0], entities[t][0]) for h, r, t in rows)
    with tempfile.TemporaryDirectory() as tmp:
        write_folder(Path(tmp), files, crlf, bom)
        kg = load_dataset(tmp)

    assert kg.entity_ids == [e[0] for e in entities]
    assert kg.entity_names == [e[1].strip() for e in entities]
    assert kg.entity_descriptions == [e[2].strip() for e in entities]
    if with_relations_file:
        order = [r[0] for r in relations]
        assert kg.relation_texts == [r[1].strip() for r in relations]
    else:  # relations numbered by first appearance over train, valid, test; text derived from the id
        order = list(dict.fromkeys(relations[r][0] for split in SPLITS for _, r, _ in splits[split]))
        assert kg.relation_texts == [relation_id_to_text(r) or r for r in order]
    assert kg.relation_ids == order
    for split in SPLITS:
        got = [(kg.entity_ids[h], kg.relation_ids[r], kg.entity_ids[t]) for h, r, t in kg.splits[split].tolist()]
        assert got == [(entities[h][0], relations[r][0], entities[t][0]) for h, r, t in splits[split]]


# ---------------------------------------------------------------------------------------------------- bad lines
ENTITY_IDS = [f"E{i}" for i in range(5)]
GOOD_TRIPLE = st.builds(lambda h, r, t: f"{h}\t{r}\t{t}", st.sampled_from(ENTITY_IDS), st.sampled_from(["r0", "r1"]),
                        st.sampled_from(ENTITY_IDS))
GOOD_LINES = st.lists(st.one_of(GOOD_TRIPLE, st.sampled_from(["", "   "])), max_size=8)  # blank lines are skipped
BAD_LINE = st.integers(1, 7).filter(lambda n: n != 3).flatmap(
    lambda n: st.lists(st.text(FIELD, max_size=10), min_size=n, max_size=n)).map("\t".join)


@SETTINGS
@given(split=st.sampled_from(SPLITS), before=GOOD_LINES, bad=BAD_LINE, after=GOOD_LINES,
       crlf=st.booleans(), bom=st.booleans())
def test_a_split_line_without_exactly_two_tabs_names_its_line(split, before, bad, after, crlf, bom):
    assume(bad.strip())  # a line of only whitespace (tabs included) is a blank line, skipped by design
    assert bad.count("\t") != 2
    files = {"entities.tsv": tsv([("id", "name", "description"), *((e, f"name {e}", "") for e in ENTITY_IDS)]),
             "relations.tsv": "id\ttext\nr0\tfirst\nr1\tsecond\n"}
    for name in SPLITS:
        files[f"{name}.txt"] = "E0\tr0\tE1\n"
    files[f"{split}.txt"] = "\n".join([*before, bad, *after]) + "\n"
    lineno = len(before) + 1
    with tempfile.TemporaryDirectory() as tmp:
        write_folder(Path(tmp), files, crlf, bom)
        with pytest.raises(DataError) as info:
            load_dataset(tmp)
    message = str(info.value)
    assert f"{split}.txt:{lineno}: " in message
    assert f"found {bad.count(chr(9)) + 1}" in message


# ---------------------------------------------------------------------------------------------------- entity text
@st.composite
def name_and_description(draw):
    """Descriptions that often begin with the name, once or repeated, with or without separators."""
    name = draw(st.text(min_size=1, max_size=8))
    repeats = draw(st.integers(0, 3))
    separator = draw(st.sampled_from(["", " ", ", ", ": ", "  "]))
    rest = draw(st.one_of(st.just(""), st.text(max_size=12), st.just(name)))
    return name, (name + separator) * repeats + rest


@SETTINGS
@example(pair=("dog", "dog dog barks"))  # was 'dog: dog barks'
@example(pair=("0", "00"))
@example(pair=("dog", "dog"))
@given(pair=st.one_of(name_and_description(), st.tuples(st.text(min_size=1, max_size=8), st.text(max_size=20))))
def test_join_name_description(pair):
    name, description = pair
    text = join_name_description(name, description)
    assert text, "empty text for a non-empty name"
    assert text.startswith(name)
    assert not text.startswith(f"{name}: {name}"), f"the name is repeated: {text!r}"
    if not description.startswith(name):
        assert text == (f"{name}: {description}" if description else name)


def test_relation_first_seen_in_valid_or_test_without_relations_file(tmp_path):
    """Without relations.tsv every split may bring new relations (numbered after those of train). This used to fail
    with "unknown relation 'r_new' (not in relations.tsv)" although there was no relations.tsv."""
    files = {"entities.tsv": "id\tname\tdescription\nA\ta\t\nB\tb\t\n", "train.txt": "A\tr_old\tB\n",
             "valid.txt": "B\tr_new\tA\nA\tr_old\tA\n", "test.txt": "A\t/x/r_newer\tB\nA\tr_new\tB\n"}
    write_folder(tmp_path, files, crlf=False, bom=False)
    kg = load_dataset(str(tmp_path))
    assert kg.relation_ids == ["r_old", "r_new", "/x/r_newer"]
    assert kg.relation_texts == ["r old", "r new", "x r newer"]
    assert kg.splits["valid"].tolist() == [[1, 1, 0], [0, 0, 0]]
    assert kg.splits["test"].tolist() == [[0, 2, 1], [0, 1, 1]]
