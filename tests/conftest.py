"""Everything the tests share, for every folder of ``tests/``: a tiny random BERT built from a config (saved as a local
HF folder), a tiny synthetic KG, the one tiny config every test trains with (:data:`TINY_CONFIG`, as a config, CLI
overrides or a trained run), a trained tiny run with its Predictor, and the helpers several test modules use. Test
modules import from here and never from each other (``tests/layers/test_test_layout.py``)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)

WORDS = ("dog cat animal mammal pet wolf fox bird sparrow eagle fish shark salmon tree oak pine plant flower rose "
         "tulip car vehicle truck bus city town river lake sea water red blue green color small large hypernym "
         "has part member of similar to also see verb group derivationally related form inverse a the of and is "
         "domestic wild tall plays sings writes book song film person actor singer writer paris london").split()


def make_tiny_plm(folder: Path, layers: int = 4, hidden: int = 32) -> Path:
    """A random BERT with a word-level vocabulary, saved like any Hugging Face model folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ":", ",", ".", *sorted(set(WORDS))]
    vocab += [f"e{i}" for i in range(64)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(str(folder))  # positional: v5 ignores vocab_file=
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=64)
    BertModel(config).save_pretrained(str(folder))
    return folder


def make_tiny_kg(folder: Path, entities: int = 24, seed: int = 0) -> Path:
    """A small KG in the documented folder format with a learnable structure (relation = fixed offset)."""
    import random

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = ["dog", "cat", "wolf", "fox", "sparrow", "eagle", "shark", "salmon", "oak", "pine", "rose", "tulip",
             "car", "truck", "bus", "paris", "london", "river", "lake", "sea", "book", "song", "film", "actor"]
    rows = ["id\tname\tdescription"]
    for i in range(entities):
        desc = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 6)))
        rows.append(f"E{i}\t{names[i % len(names)]} e{i}\t{desc}")
    (folder / "entities.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (folder / "relations.tsv").write_text("id\ttext\nr_next\thypernym\nr_skip\thas part\nr_sim\tsimilar to\n",
                                          encoding="utf-8")
    triples = set()
    for i in range(entities):
        triples.add((f"E{i}", "r_next", f"E{(i + 1) % entities}"))
        triples.add((f"E{i}", "r_skip", f"E{(i + 3) % entities}"))
        if i % 2 == 0:
            triples.add((f"E{i}", "r_sim", f"E{(i + 5) % entities}"))
    triples = sorted(triples)
    rng.shuffle(triples)
    n = len(triples)
    splits = {"train": triples[: int(n * 0.7)], "valid": triples[int(n * 0.7): int(n * 0.85)],
              "test": triples[int(n * 0.85):]}
    for split, items in splits.items():
        (folder / f"{split}.txt").write_text("".join(f"{h}\t{r}\t{t}\n" for h, r, t in items), encoding="utf-8")
    return folder


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Token caches of the whole session in a temporary folder, never ~/.cache (``cache_dir`` gives a test its own)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KGDISTILL_CACHE", str(tmp_path_factory.mktemp("session-cache")))
        yield


@pytest.fixture(scope="session")
def tiny_plm(tmp_path_factory) -> Path:
    return make_tiny_plm(tmp_path_factory.mktemp("plm"))


@pytest.fixture(scope="session")
def tiny_kg(tmp_path_factory) -> Path:
    return make_tiny_kg(tmp_path_factory.mktemp("kg"))


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("KGDISTILL_CACHE", str(path))
    return path


def load_bench(name: str):
    """A script of ``bench/`` as a module (bench/ is not a package), for the tests that drive its functions."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A config that trains in a second or two on the tiny KG and tiny BERT: the base of every test's run.
TINY_CONFIG = {
    "data": {"max_tokens": 24, "valid_limit": 16},
    "train": {"batch_size": 8, "lr": 1e-3, "max_steps": 6, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 1,
              "precision": "fp32", "device": "cpu"},
    "eval": {"batch_size": 16},
    "distill": {"stage_steps": 4},
}


def tiny_values(**changes) -> dict:
    """:data:`TINY_CONFIG` with ``section__key=value`` changes; a value of None drops the key (the default applies)."""
    values = {section: dict(items) for section, items in TINY_CONFIG.items()}
    for key, value in changes.items():
        section, name = key.split("__")
        if value is None:
            values.get(section, {}).pop(name, None)
        else:
            values.setdefault(section, {})[name] = value
    return values


def tiny_overrides(**changes) -> list[str]:
    """The tiny config as the CLI's ``key=value`` overrides."""
    return [f"{section}.{name}={value}" for section, items in tiny_values(**changes).items()
            for name, value in items.items()]


def make_tiny_config(kg: Path, plm: Path, **changes):
    """The tiny config on ``kg`` with ``plm`` (no preset), with ``section__key=value`` changes."""
    from kgdistill.config import build_config

    values = tiny_values(**changes)
    values.setdefault("data", {}).setdefault("dataset", str(kg))
    values.setdefault("model", {}).setdefault("plm", str(plm))
    return build_config(None, overrides=values)


def train_tiny(run_dir: Path, kg: Path, plm: Path, evaluate: bool = False, **changes) -> Path:
    """A tiny trained run (the teacher job) in ``run_dir``; returns the folder."""
    from kgdistill.jobs.train import train

    train(make_tiny_config(kg, plm, **changes), run_dir, evaluate_after=evaluate, progress=False)
    return run_dir


# A trained tiny run as a user receives it, shared by the modules that use one as it is: the Predictor and its entity
# index (tests/inference), export (tests/jobs) and the CLI's predict and export (tests/cli). Session-scoped, so they
# share one run as they did in one module; a module that needs another run defines its own ``run_dir`` or
# ``predictor``, which wins over these.
@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, tiny_plm, tiny_kg) -> Path:
    root = tmp_path_factory.mktemp("inference")
    return train_tiny(root / "run", tiny_kg, tiny_plm, data__cache_dir=str(root / "cache"), train__checkpoint_every=3)


@pytest.fixture(scope="session")
def predictor(run_dir):
    from kgdistill.inference.predictor import Predictor

    return Predictor.from_pretrained(run_dir, device="cpu")


@pytest.fixture(scope="session")
def evaluated(run_dir):
    """The evaluator's own per-query dump (filtered ranks, top 10) and entity vectors for the test split."""
    from kgdistill.api import DataContext, load_model, load_run_config

    model, tokenizer, folder = load_model(run_dir)
    config = load_run_config(folder)
    config.eval.dump_predictions = True
    data = DataContext(config, tokenizer)
    evaluator = data.evaluator(torch.device("cpu"))
    result = evaluator.evaluate(model, "test", progress=False)
    return result, evaluator.encode_entities(model, progress=False), data


def make_toy_kg():
    """Four entities a-d, one relation, training triples (a, r, b), (a, r, c), (d, r, a); b has a long description."""
    import numpy as np

    from kgdistill.data.dataset import KnowledgeGraph

    ids = ["a", "b", "c", "d"]
    train = np.array([[0, 0, 1], [0, 0, 2], [3, 0, 0]])
    return KnowledgeGraph("toy", ids, ["A", "B", "C", "D"], ["", "long " * 30, "", ""], ["r"], ["rel"],
                          {"train": train, "valid": np.zeros((0, 3), int), "test": np.zeros((0, 3), int)}, "f", "toy")


@pytest.fixture()
def tiny_config(tiny_plm, tiny_kg, cache_dir):
    """The tiny config on the tiny KG; call it with ``section__key=value`` changes."""

    def make(**overrides):
        return make_tiny_config(tiny_kg, tiny_plm, **overrides)

    return make


# The CLI overrides of a two-step run, for the tests that drive commands with bad input.
TINY = tiny_overrides(train__max_steps=2, train__checkpoint_every=1, distill__stage_steps=None)


def assert_user_error(rc: int, err: str, expected: list[str]) -> str:
    """Exit 2 and exactly one ``kgdistill: error:`` line, the last thing on stderr, containing every ``expected``."""
    assert rc == 2, f"exit status {rc}, stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("kgdistill: error:")]
    assert len(errors) == 1, f"expected one error line, stderr:\n{err}"
    assert lines[-1] == errors[0], f"the error message spans several lines:\n{err}"
    for text in expected:
        assert text in errors[0], f"{text!r} not in {errors[0]!r}"
    return errors[0]


def one_line(exc: BaseException) -> str:
    """An error's message, which must be one line."""
    text = str(exc)
    assert "\n" not in text, text
    return text


def train_args(plm: Path, kg: Path, run: Path, *extra: str, tiny: list[str] = TINY) -> list[str]:
    """``kgdistill train`` of a tiny run without a preset and without evaluation, as CLI arguments."""
    return ["train", "--preset", "", "--dataset", str(kg), "--plm", str(plm), "--output-dir", str(run), "--no-eval",
            *tiny, *extra]
