"""A Predictor used from several threads at once: searches, scores and entity additions interleave, and every answer
is consistent (no row the vocabulary lacks, no tokenizer "Already borrowed", added entities ranked once added).

Races are rare on their own, so the test widens their windows: an addition sleeps between extending the index and
the vocabulary, and the tokenizer sleeps inside each call and fails, like the fast tokenizer's "Already borrowed",
when a second thread enters it."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from conftest import train_tiny
from kgdistill.inference.predictor import Predictor

ADDED = 24  # entities added while the searches run
ROUNDS = 30  # searches per searching thread


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_plm, tiny_kg) -> Path:
    root = tmp_path_factory.mktemp("threads")
    return train_tiny(root / "run", tiny_kg, tiny_plm, data__cache_dir=str(root / "cache"), train__max_steps=2)


class OneCallAtATime:
    """A tokenizer that raises as the fast tokenizer can when two threads use it at once (with a sleep inside)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.busy = tokenizer, threading.Lock()

    def __call__(self, *args, **kwargs):
        if not self.busy.acquire(blocking=False):
            raise RuntimeError("Already borrowed")
        try:
            time.sleep(0.002)
            return self.tokenizer(*args, **kwargs)
        finally:
            self.busy.release()

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def widen_races(predictor: Predictor) -> Predictor:
    """The tokenizer checked for concurrent calls, and a pause between an addition's index rows and its names."""
    predictor.tokenizer = OneCallAtATime(predictor.tokenizer)
    add_names = predictor.vocab.add

    def slow_add(new):
        time.sleep(0.005)
        add_names(new)

    predictor.vocab.add = slow_add
    return predictor


def _hammer(predictor: Predictor) -> list[BaseException]:
    """Two threads predict over every candidate, one scores and searches names, one adds entities one by one; returns
    what any of them raised, and checks each answer against the predictor's vocabulary."""
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def guarded(work):
        def run():
            start.wait()
            try:
                work()
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)
        return run

    def search():
        for _ in range(ROUNDS):
            pred = predictor.predict_tails("E0", "hypernym", k=1000, filter_known=False)
            assert len(pred.results) >= predictor.kg.num_entities
            for r in pred.results:
                assert r.name is not None and r.name == predictor.resolve_entity(r.id).name
            assert [r.rank for r in pred.results] == list(range(1, len(pred.results) + 1))

    def score_and_look_up():
        for _ in range(ROUNDS):
            assert isinstance(predictor.score("E1", "hypernym", "E2"), float)
            for hit in predictor.search_entities("new", limit=100):
                assert hit["name"] is not None and hit["id"].startswith("N")

    def add():
        for i in range(ADDED):
            predictor.add_entities([{"id": f"N{i}", "name": f"new thing {i}", "description": "a small red car"}])

    threads = [threading.Thread(target=guarded(w)) for w in (search, search, score_and_look_up, add)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return errors


def test_searches_and_additions_from_several_threads_stay_consistent(run_dir):
    predictor = widen_races(Predictor.from_pretrained(run_dir, device="cpu"))
    errors = _hammer(predictor)
    assert not errors, [f"{type(e).__name__}: {e}" for e in errors]
    assert predictor.num_entities == predictor.kg.num_entities + ADDED
    ids = {r.id for r in predictor.predict_tails("E0", "hypernym", k=1000, filter_known=False).results}
    assert {f"N{i}" for i in range(ADDED)} <= ids
    alone = Predictor.from_pretrained(run_dir, device="cpu")  # the same answers as one thread adding them in turn
    alone.add_entities([{"id": f"N{i}", "name": f"new thing {i}", "description": "a small red car"}
                        for i in range(ADDED)])
    expected = alone.predict_tails("E3", "hypernym", k=20).to_dict()
    got = predictor.predict_tails("E3", "hypernym", k=20).to_dict()
    assert [r["id"] for r in got["results"]] == [r["id"] for r in expected["results"]]
    for a, b in zip(got["results"], expected["results"]):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
