"""Malformed datasets, configs and model folders (issue 6): every one is a one-line user error, never a traceback.

Each case goes through the real CLI entry ``kgdistill.cli.main`` in this process and must end with exit status 2,
exactly one stderr line ``kgdistill: error: ...`` that names the file and line (or the config key), and no partial
artefacts in the output folder. Cases that were once bugs are kept as regression cases; they start
failing loudly once the bug is fixed so that the mark gets removed.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import TINY, assert_user_error, make_tiny_kg, make_tiny_plm, train_tiny
from kgdistill.cli import main
from kgdistill.data.loading import load_dataset
from kgdistill.errors import DataError
from kgdistill.io import write_manifest

# The tiny config as CLI overrides, two steps: builds and (when asked) trains in about a second.
PARTIAL = ("checkpoint-last", "checkpoint-best", "metrics.json", "model.safetensors", "train_summary.json",
           "predictions.jsonl")


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def plm(tmp_path_factory) -> Path:
    return make_tiny_plm(tmp_path_factory.mktemp("malformed-plm"))


@pytest.fixture(scope="module")
def good_kg(tmp_path_factory) -> Path:
    return make_tiny_kg(tmp_path_factory.mktemp("malformed-kg"))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, plm, good_kg) -> Path:
    """A run folder with a 2-step tiny model (checkpoint-last), trained once for the whole module."""
    run = train_tiny(tmp_path_factory.mktemp("malformed-run") / "run", good_kg, plm, train__max_steps=2,
                     train__checkpoint_every=1, distill__stage_steps=None)
    assert (run / "checkpoint-last" / "model.safetensors").is_file()
    return run


# ---------------------------------------------------------------------------------------------------- helpers
def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err


def assert_no_artefacts(out: Path) -> None:
    if not out.exists():
        return
    found = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                   if p.name in PARTIAL or p.name.startswith(".checkpoint") or p.name.endswith(".tmp"))
    assert not found, f"partial artefacts left in {out}: {found}"


def _replace_line(path: Path, lineno: int, content: bytes) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[lineno - 1] = content
    path.write_bytes(b"\n".join(lines))


def line(file: str, lineno: int, text: str):
    return lambda kg: _replace_line(kg / file, lineno, text.encode("utf-8"))


def raw_line(file: str, lineno: int, data: bytes):
    return lambda kg: _replace_line(kg / file, lineno, data)


def append(file: str, text: str):
    def mutate(kg: Path) -> None:
        with open(kg / file, "ab") as handle:
            handle.write(text.encode("utf-8"))
    return mutate


def write(file: str, data: bytes):
    return lambda kg: (kg / file).write_bytes(data)


def remove(file: str):
    return lambda kg: (kg / file).unlink()


def both(*mutations):
    def mutate(kg: Path) -> None:
        for m in mutations:
            m(kg)
    return mutate


# ---------------------------------------------------------------------------------------------------- datasets
# The tiny KG: entities.tsv = header + E0..E23 (E<i> on line i+2); relations.tsv = header + r_next, r_skip, r_sim;
# train.txt 42 triples, valid.txt and test.txt 9 each.
HUGE = "x" * 100_001
DATASET_CASES = [
    ("train-two-columns", line("train.txt", 3, "E0\tr_next"), ["train.txt:3", "columns"]),
    ("train-four-columns", line("train.txt", 2, "E0\tr_next\tE1\tE2"), ["train.txt:2", "columns"]),
    ("train-space-separated", line("train.txt", 7, "E0 r_next E1"), ["train.txt:7", "columns"]),
    ("valid-one-column", line("valid.txt", 1, "E0"), ["valid.txt:1", "columns"]),
    ("test-five-columns", line("test.txt", 2, "E0\tr_next\tE1\t\t"), ["test.txt:2", "columns"]),
    ("unknown-head", line("train.txt", 4, "NOPE\tr_next\tE1"), ["train.txt:4", "unknown head entity 'NOPE'"]),
    ("unknown-tail", line("test.txt", 1, "E1\tr_next\tGHOST"), ["test.txt:1", "unknown tail entity 'GHOST'"]),
    ("empty-head", line("train.txt", 6, "\tr_next\tE1"), ["train.txt:6", "unknown head entity"]),
    ("unknown-relation", line("train.txt", 5, "E0\tr_bogus\tE1"), ["train.txt:5", "unknown relation 'r_bogus'"]),
    ("unknown-relation-in-valid", line("valid.txt", 9, "E0\tr_other\tE1"), ["valid.txt:9", "r_other"]),
    ("empty-relation-without-relations-tsv", both(remove("relations.tsv"), line("train.txt", 2, "E0\t \tE1")),
     ["train.txt:2", "empty relation"]),
    ("duplicate-entity-id", append("entities.tsv", "E3\tdup\tdescription\n"),
     ["entities.tsv:26", "duplicate entity id 'E3'", "first on line 5"]),
    ("duplicate-relation-id", append("relations.tsv", "r_next\tagain\n"),
     ["relations.tsv:5", "duplicate relation id 'r_next'"]),
    ("empty-name", line("entities.tsv", 3, "E1\t\tsome words"), ["entities.tsv:3", "empty name"]),
    ("blank-name", line("entities.tsv", 9, "E7\t   \tsome words"), ["entities.tsv:9", "empty name"]),
    ("empty-entity-id", line("entities.tsv", 4, "\tname\tsome words"), ["entities.tsv:4", "empty entity id"]),
    ("entity-two-columns", line("entities.tsv", 6, "E4\tname"), ["entities.tsv:6", "columns"]),
    ("relation-wrong-columns", line("relations.tsv", 3, "r_skip\thas part\textra"), ["relations.tsv:3", "columns"]),
    ("relation-empty-text", line("relations.tsv", 2, "r_next\t "), ["relations.tsv:2", "empty relation"]),
    ("non-utf8-train", raw_line("train.txt", 2, b"E0\tr_next\t\xffE1"), ["train.txt:2", "UTF-8"]),
    ("latin1-entities", raw_line("entities.tsv", 7, b"E5\tcaf\xe9\tno accent"), ["entities.tsv:7", "UTF-8"]),
    ("non-utf8-relations", raw_line("relations.tsv", 4, b"r_sim\tsimilar \xc3"), ["relations.tsv:4", "UTF-8"]),
    ("utf16-entities", lambda kg: (kg / "entities.tsv").write_bytes(
        (kg / "entities.tsv").read_text(encoding="utf-8").encode("utf-16")), ["entities.tsv:1"]),
    ("nul-byte-train", raw_line("train.txt", 3, b"E0\tr_next\x00\tE1"), ["train.txt:3", "NUL"]),
    ("nul-byte-entities", raw_line("entities.tsv", 2, b"E0\tdog\x00\tdescription"), ["entities.tsv:2", "NUL"]),
    ("huge-description", line("entities.tsv", 5, f"E3\tname\t{HUGE}"), ["entities.tsv:5", "100,001 characters"]),
    ("huge-triple-field", line("train.txt", 1, f"{HUGE}\tr_next\tE1"), ["train.txt:1", "100,001 characters"]),
    ("missing-valid", remove("valid.txt"), ["valid.txt", "missing"]),
    ("missing-test", remove("test.txt"), ["test.txt", "missing"]),
    ("missing-entities", remove("entities.tsv"), ["entities.tsv", "missing"]),
    ("bad-entities-header", line("entities.tsv", 1, "ident\tlabel\tdesc"), ["entities.tsv:1", "header"]),
    ("entities-header-two-columns", line("entities.tsv", 1, "id\tname"), ["entities.tsv:1", "header"]),
    ("entities-without-header", lambda kg: (kg / "entities.tsv").write_text(
        "\n".join((kg / "entities.tsv").read_text(encoding="utf-8").split("\n")[1:]), encoding="utf-8"),
     ["entities.tsv:1", "header"]),
    ("bad-relations-header", line("relations.tsv", 1, "rel\tdescription"), ["relations.tsv:1", "header"]),
    ("empty-relations-file", write("relations.tsv", b""), ["relations.tsv:1", "header"]),
    ("empty-entities-file", write("entities.tsv", b""), ["entities.tsv", "empty file"]),
    ("entities-header-only", write("entities.tsv", b"id\tname\tdescription\n\n"), ["entities.tsv", "no entities"]),
    ("empty-train", write("train.txt", b""), ["train.txt", "no triples"]),
    ("train-blank-lines-only", write("train.txt", b"\n  \n\r\n"), ["train.txt", "no triples"]),
    ("lone-cr-line-endings", lambda kg: (kg / "train.txt").write_bytes((kg / "train.txt").read_bytes().replace(
        b"\n", b"\r")), ["train.txt:1", "columns"]),
]


@pytest.mark.parametrize("mutate, expected", [pytest.param(m, e, id=i) for i, m, e in DATASET_CASES])
def test_malformed_dataset_is_one_line_error(mutate, expected, good_kg, plm, tmp_path, capsys):
    kg = tmp_path / "kg"
    shutil.copytree(good_kg, kg)
    mutate(kg)
    with pytest.raises(DataError) as info:  # the library raises it ...
        load_dataset(str(kg))
    for text in expected:
        assert text in str(info.value)
    out = tmp_path / "out"  # ... and the CLI turns it into one line and status 2, leaving nothing behind
    rc, err = run_cli(["train", "--preset", "", "--dataset", str(kg), "--plm", str(plm), "--output-dir", str(out),
                       "--no-eval", *TINY], capsys)
    assert_user_error(rc, err, expected)
    assert_no_artefacts(out)


def test_dataset_that_is_neither_bundled_nor_a_folder(plm, tmp_path, capsys):
    missing = tmp_path / "no-such-dataset"
    rc, err = run_cli(["train", "--preset", "", "--dataset", str(missing), "--plm", str(plm), "--output-dir",
                       str(tmp_path / "out"), *TINY], capsys)
    assert_user_error(rc, err, [str(missing)])
    assert_no_artefacts(tmp_path / "out")


def test_unreadable_split_file_is_a_data_error(good_kg, tmp_path, monkeypatch):
    """An OSError while reading (permission denied, I/O error) names the file instead of escaping as a traceback."""
    kg = tmp_path / "kg"
    shutil.copytree(good_kg, kg)
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "valid.txt":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(DataError, match=r"valid\.txt.*Permission denied"):
        load_dataset(str(kg))


# ---------------------------------------------------------------------------------------------------- accepted
def _to_crlf(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


def _to_bom(data: bytes) -> bytes:
    return b"\xef\xbb\xbf" + data


def _no_final_newline(data: bytes) -> bytes:
    return data.rstrip(b"\n")


@pytest.mark.parametrize("transforms", [
    pytest.param([_to_crlf], id="crlf"),
    pytest.param([_to_bom], id="bom"),
    pytest.param([_to_crlf, _to_bom], id="crlf+bom"),
    pytest.param([_no_final_newline, _to_crlf, _to_bom], id="crlf+bom-no-final-newline"),
])
def test_crlf_and_bom_are_accepted(transforms, good_kg, tmp_path):
    kg = tmp_path / "kg"
    shutil.copytree(good_kg, kg)
    for path in kg.iterdir():
        data = path.read_bytes()
        for transform in transforms:
            data = transform(data)
        path.write_bytes(data)
    assert any(b"\r\n" in p.read_bytes() or p.read_bytes().startswith(b"\xef\xbb\xbf") for p in kg.iterdir())
    ref, got = load_dataset(str(good_kg)), load_dataset(str(kg))
    for attr in ("entity_ids", "entity_names", "entity_descriptions", "relation_ids", "relation_texts"):
        assert getattr(got, attr) == getattr(ref, attr), attr
    assert not any("\r" in s or "\ufeff" in s for s in got.entity_ids + got.entity_names + got.entity_descriptions
                   + got.relation_ids + got.relation_texts)
    for split in ref.splits:
        assert (got.splits[split] == ref.splits[split]).all(), split


def test_crlf_bom_dataset_trains_through_the_cli(good_kg, plm, tmp_path, capsys):
    kg = tmp_path / "kg"
    shutil.copytree(good_kg, kg)
    for path in kg.iterdir():
        path.write_bytes(_to_bom(_to_crlf(path.read_bytes())))
    out = tmp_path / "out"
    rc, err = run_cli(["train", "--preset", "", "--dataset", str(kg), "--plm", str(plm), "--output-dir", str(out),
                       "--no-eval", *TINY], capsys)
    assert rc == 0, err
    assert (out / "checkpoint-last" / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------------- configs
def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_file(name: str, data: bytes):
    def make(tmp: Path) -> list[str]:
        path = tmp / name
        path.write_bytes(data)
        return ["--config", str(path)]
    return make


def overrides(*items: str):
    return lambda tmp: list(items)


DEEPER_STUDENT = b"""distill:
  grades:
    - {layers: 3, mask_rate: 0.2}
    - {layers: 2, mask_rate: 0.3}
    - {layers: 4, mask_rate: 0.4}
"""
CONFIG_CASES = [
    ("unknown-top-level-key", overrides("bogus=1"), ["'bogus'"]),
    ("unknown-nested-key", overrides("train.bogus=1"), ["'train.bogus'"]),
    ("unknown-section", overrides("training.lr=0.1"), ["'training'"]),
    ("unknown-key-in-file", config_file("c.yaml", b"train:\n  batch_size: 8\n  learning_rate: 0.1\n"),
     ["'train.learning_rate'"]),
    ("string-for-int", overrides("train.batch_size=eight"), ["'train.batch_size'", "integer"]),
    ("float-for-int", overrides("train.max_steps=2.5"), ["'train.max_steps'", "integer"]),
    ("int-for-bool", overrides("data.use_neighbors=1"), ["'data.use_neighbors'", "true or false"]),
    ("bool-for-float", overrides("train.lr=true"), ["'train.lr'", "number"]),
    ("string-for-float", overrides("train.lr=fast"), ["'train.lr'", "number"]),
    ("int-for-string", overrides("eval.split=3"), ["'eval.split'", "string"]),
    ("scalar-for-section", overrides("train=5"), ["'train'", "section"]),
    ("scalar-for-list", overrides("model.layer_map=3"), ["'model.layer_map'", "list"]),
    ("negative-lr", overrides("train.lr=-0.001"), ["'train.lr'", "> 0"]),
    ("zero-max-tokens", overrides("data.max_tokens=0"), ["'data.max_tokens'"]),
    ("alpha-plus-beta-above-one", overrides("distill.alpha=0.6", "distill.beta=0.6"),
     ["'distill.alpha'", "'distill.beta'"]),
    ("alpha-above-one", overrides("distill.alpha=1.5"), ["'distill.alpha'"]),
    ("negative-query-embedding-weight", overrides("distill.query_embedding_weight=-1"),
     ["'distill.query_embedding_weight'", ">= 0"]),
    ("transfer-without-embedding-weight", overrides("distill.transfer_queries=8", "distill.embedding_weight=0",
                                                    "distill.query_embedding_weight=0"),
     ["'distill.transfer_queries'", "embedding_weight"]),
    ("query-transfer-without-its-weight", overrides("distill.query_transfer_queries=8",
                                                    "distill.query_embedding_weight=0"),
     ["'distill.query_transfer_queries'", "query_embedding_weight"]),
    ("mask-rate-1.5", overrides("distill.pre_mask_rate=1.5"), ["'distill.pre_mask_rate'", "[0, 1)"]),
    ("batch-size-1", overrides("train.batch_size=1"), ["'train.batch_size'", "at least 2"]),
    ("inverse-temperature-below-one", overrides("loss.max_inv_temperature=0.5"), ["'loss.max_inv_temperature'"]),
    ("precision-fp8", overrides("train.precision=fp8"), ["'train.precision'", "fp8"]),
    ("pooling-max", overrides("model.pooling=max"), ["'model.pooling'"]),
    ("override-without-equals", overrides("train.lr"), ["'train.lr'", "key=value"]),
    ("layer-map-length-mismatch", overrides("model.num_layers=2", "model.layer_map=[0, 1, 2]"),
     ["'model.layer_map'"]),
    ("layer-map-out-of-range", overrides("model.layer_map=[0, 99]"), ["'model.layer_map'", "99"]),
    ("missing-config-file", lambda tmp: ["--config", str(tmp / "nope.yaml")], ["nope.yaml", "cannot read"]),
    ("config-file-is-a-folder", lambda tmp: ["--config", str(_mkdir(tmp / "cfgdir"))], ["cfgdir", "cannot read"]),
    ("invalid-yaml", config_file("broken.yaml", b"train: [1, 2\ndata: {\n"), ["broken.yaml", "not valid YAML"]),
    ("invalid-json", config_file("broken.json", b'{"train": {"lr": 0.1,}}'), ["broken.json", "not valid JSON"]),
    ("yaml-not-a-mapping", config_file("list.yaml", b"- train\n- data\n"), ["list.yaml", "mapping"]),
    ("config-not-utf8", config_file("latin.yaml", b"train:\n  device: caf\xe9\n"), ["latin.yaml", "UTF-8"]),
    ("student-deeper-than-teacher", config_file("grades.yaml", DEEPER_STUDENT),
     ["'distill.grades[2].layers'", "deeper"]),
    ("grade-mask-rate-one", overrides("distill.grades=[{layers: 2, mask_rate: 1.0}]"),
     ["'distill.grades[0].mask_rate'"]),
    ("unknown-preset", lambda tmp: ["--preset", "turbo"], ["preset 'turbo'"]),
    ("plm-not-a-folder", lambda tmp: ["--plm", str(tmp / "no-plm")], ["'model.plm'", "no-plm"]),
    ("batch-larger-than-train-set", overrides("train.batch_size=1000"), ["'train.batch_size'", "1000"]),
]


# Cases that were bugs once (config, seed, NaN, depth): kept apart as regression cases.
CONFIG_REGRESSIONS = [
    ("override-section-then-key", overrides("train=5", "train.lr=0.1"), ["'train'"]),
    ("grade-without-layers", overrides("distill.grades=[{mask_rate: 0.1}]"), ["'distill.grades[0]"]),
    ("negative-seed", overrides("seed=-1"), ["'seed'"]),
    ("nan-lr", overrides("train.lr=.nan"), ["'train.lr'"]),
    ("student-deeper-than-plm", overrides("model.num_layers=99"), ["'model.num_layers'"]),
]


@pytest.mark.parametrize("make_args, expected", [pytest.param(m, e, id=i) for i, m, e in CONFIG_CASES]
                         + [pytest.param(m, e, id=i) for i, m, e in CONFIG_REGRESSIONS])
def test_malformed_config_is_one_line_error(make_args, expected, good_kg, plm, tmp_path, capsys):
    out = tmp_path / "out"
    args = make_args(tmp_path)
    base = ["train", "--preset", "", "--dataset", str(good_kg), "--plm", str(plm), "--output-dir", str(out),
            "--no-eval"]
    rc, err = run_cli([*base, *TINY, *args], capsys)  # a flag given twice: the case's wins (argparse keeps the last)
    assert_user_error(rc, err, expected)
    assert_no_artefacts(out)


# ---------------------------------------------------------------------------------------------------- models
def _truncate(model: Path) -> None:
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _flip_byte(model: Path) -> None:
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) - 100] ^= 0xFF  # inside the tensor data, the header stays readable
    weights.write_bytes(bytes(data))


def _edit_meta(edit):
    def mutate(model: Path) -> None:
        meta = json.loads((model / "model.json").read_text(encoding="utf-8"))
        edit(meta)
        (model / "model.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return mutate


def _wider(meta: dict) -> None:
    """Hidden size 32 -> 48 (same number of digits: the file keeps its size, only the checksum can tell)."""
    for key in ("hr_config", "tail_config"):
        assert meta[key]["hidden_size"] == 32 and meta[key]["intermediate_size"] == 64
        meta[key]["hidden_size"] = 48
        meta[key]["intermediate_size"] = 96
    meta["hidden_size"] = 48


def _remanifest(mutate):
    """A consistent but wrong folder: the mutation, then a fresh manifest (so only the content check can fail)."""
    def wrapped(model: Path) -> None:
        mutate(model)
        write_manifest(model)
    return wrapped


def _rm(name: str):
    def mutate(model: Path) -> None:
        target = model / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return mutate


MODEL_CASES = [
    ("missing-folder", lambda base, ckpt: base / "nowhere", lambda m: None, ["nowhere", "no model here"]),
    ("empty-folder", lambda base, ckpt: _mkdir(base / "empty"), lambda m: None, ["empty", "no model here"]),
    ("folder-without-model-json", None, _rm("model.json"), ["no model here"]),
    ("truncated-weights", None, _truncate, ["model.safetensors", "truncated"]),
    ("truncated-weights-fresh-manifest", None, _remanifest(_truncate), ["model.safetensors", "cannot read weights"]),
    ("flipped-byte", None, _flip_byte, ["model.safetensors", "checksum mismatch"]),
    ("missing-weights", None, _rm("model.safetensors"), ["model.safetensors", "missing"]),
    ("hidden-size-edited", None, _edit_meta(_wider), ["model.json", "checksum mismatch"]),
    ("hidden-size-mismatch", None, _remanifest(_edit_meta(_wider)), ["model.safetensors", "do not match model.json"]),
    ("wrong-format", None, _remanifest(_edit_meta(lambda m: m.__setitem__("format", "other"))),
     ["model.json", "format"]),
    ("model-json-not-json", None, _remanifest(lambda m: (m / "model.json").write_text("{oops", encoding="utf-8")),
     ["model.json", "not valid JSON"]),
    ("unknown-model-type", None, _remanifest(_edit_meta(lambda m: m["hr_config"].__setitem__("model_type", "nope"))),
     ["model.json", "bad encoder config"]),
    ("no-manifest", None, _rm("manifest.json"), ["manifest.json"]),
    ("corrupted-manifest", None, lambda m: (m / "manifest.json").write_text("{", encoding="utf-8"),
     ["manifest.json", "corrupted"]),
    ("no-tokenizer", None, _remanifest(_rm("tokenizer")), ["no tokenizer"]),
    ("run-folder-with-corrupted-last", "run", _flip_byte, ["checkpoint-last", "model.safetensors", "checksum"]),
    ("run-folder-with-bad-saved-config", "run",
     lambda m: (m.parent / "config.yaml").write_text("train:\n  batch_size: eight\n", encoding="utf-8"),
     ["config.yaml", "train.batch_size"]),
]
MODEL_BUGS = [
    ("saved-config-not-yaml", "run", lambda m: (m.parent / "config.yaml").write_text("train: [1,\nx: : :\n"),
     ["config.yaml"]),
    ("encoder-config-not-a-mapping", None, _remanifest(_edit_meta(lambda m: m.__setitem__("hr_config", 5))),
     ["model.json"]),
]


@pytest.mark.parametrize("where, mutate, expected", [pytest.param(w, m, e, id=i) for i, w, m, e in MODEL_CASES]
                         + [pytest.param(w, m, e, id=i) for i, w, m, e in MODEL_BUGS])
def test_broken_model_folder_is_one_line_error(where, mutate, expected, trained_run, tmp_path, capsys):
    checkpoint = trained_run / "checkpoint-last"
    if callable(where):  # a path that does not exist, or an empty folder
        model = target = where(tmp_path, checkpoint)
    elif where == "run":  # a run folder: config.yaml beside checkpoint-last
        target = tmp_path / "run"
        model = target / "checkpoint-last"
        shutil.copytree(checkpoint, model)
        shutil.copy(trained_run / "config.yaml", target / "config.yaml")
    else:
        model = target = tmp_path / "model"
        shutil.copytree(checkpoint, model)
    mutate(model)
    out = tmp_path / "out"
    rc, err = run_cli(["evaluate", "--model", str(target), "--output", str(out)], capsys)
    assert_user_error(rc, err, expected)
    assert_no_artefacts(out)
    assert not (target / "metrics.json").exists() and not (tmp_path / "metrics.json").exists()


def test_intact_model_copy_evaluates(trained_run, tmp_path, capsys):
    """The control for the cases above: the unmodified copy loads and evaluates."""
    model = tmp_path / "model"
    shutil.copytree(trained_run / "checkpoint-last", model)
    out = tmp_path / "out"
    rc, err = run_cli(["evaluate", "--model", str(model), "--output", str(out), "--json"], capsys)
    assert rc == 0, err
    assert "mrr" in json.loads((out / "metrics.json").read_text(encoding="utf-8"))["no_rerank"]["both"]


def test_every_file_is_broken_by_some_case_and_case_ids_are_unique():
    """A file of the dataset format or of a model folder that no case breaks would go untested; a repeated id would
    make two cases indistinguishable in a report."""
    for name in ("entities.tsv", "relations.tsv", "train.txt", "valid.txt", "test.txt"):
        assert any(name in text for _, _, expected in DATASET_CASES for text in expected), name
    for name in ("model.safetensors", "model.json", "manifest.json", "tokenizer", "config.yaml", "checkpoint-last"):
        assert any(name in text for *_, expected in MODEL_CASES + MODEL_BUGS for text in expected), name
    for cases in (DATASET_CASES, CONFIG_CASES + CONFIG_REGRESSIONS, MODEL_CASES + MODEL_BUGS):
        ids = [case[0] for case in cases]
        assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
