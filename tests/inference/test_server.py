"""HTTP service: good and bad requests through fastapi.testclient, micro-batching and deadlines, a bounded schema
fuzz (no 5xx), and the loopback load test script on a tiny model."""
from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest

pytest.importorskip("fastapi", reason="the HTTP service needs fastapi (pip install fastapi uvicorn httpx)")
pytest.importorskip("httpx", reason="fastapi.testclient needs httpx")

from fastapi.testclient import TestClient  # noqa: E402

from conftest import load_bench, train_tiny  # noqa: E402
from kgdistill.inference.batching import MicroBatcher  # noqa: E402
from kgdistill.inference.predictor import Predictor, ResolvedQuery  # noqa: E402
from kgdistill.inference.server import create_app  # noqa: E402

MAX_BODY = 8 * 1024
BASE_URL = "http://localhost"  # an allowed Host header (TestClient sends "testserver" by default)
_FILE_EVENTS: list | None = None  # set to a list while requests must not touch the file system


def _audit(event: str, args) -> None:
    if _FILE_EVENTS is not None and event in ("open", "os.remove", "os.rename", "os.mkdir", "os.listdir",
                                              "os.scandir", "shutil.rmtree"):
        _FILE_EVENTS.append((event, args[0] if args else None))


sys.addaudithook(_audit)



@pytest.fixture(scope="module")
def predictor(tmp_path_factory, tiny_plm, tiny_kg) -> Predictor:
    root = tmp_path_factory.mktemp("serve")
    train_tiny(root / "run", tiny_kg, tiny_plm, data__cache_dir=str(root / "cache"), train__max_steps=4,
               train__checkpoint_every=4)
    predictor = Predictor.from_pretrained(root / "run", device="cpu")
    # a second entity named like E1, so that the name is ambiguous
    predictor.add_entities([{"id": "NEW-1", "name": predictor.kg.entity_names[1], "description": "a newcomer"}])
    return predictor


@pytest.fixture(scope="module")
def app(predictor):
    return create_app(predictor, max_body_bytes=MAX_BODY)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, base_url=BASE_URL, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture()
def no_file_access():
    global _FILE_EVENTS
    _FILE_EVENTS = []
    try:
        yield _FILE_EVENTS
    finally:
        _FILE_EVENTS = None


# ---------------------------------------------------------------------------------------------------- good requests
def test_health_and_openapi(client, predictor):
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "dataset": predictor.kg.name, "entities": predictor.kg.num_entities + 1,
                             "relations": predictor.kg.num_relations, "model_fingerprint": predictor.fingerprint,
                             "index": "exact"}
    spec = client.get("/openapi.json").json()
    assert {"/predict/tails", "/predict/heads", "/score", "/entities/search", "/health"} <= set(spec["paths"])


def test_predict_tails_and_heads_match_the_predictor(client, predictor):
    r = client.post("/predict/tails", json={"head": "E0", "relation": "hypernym", "k": 5})
    assert r.status_code == 200
    assert r.json() == predictor.predict_tails("E0", "hypernym", k=5).to_dict()
    body = r.json()
    assert [x["rank"] for x in body["results"]] == [1, 2, 3, 4, 5] and body["num_filtered"] >= 1
    r = client.post("/predict/heads", json={"relation": "r_next", "tail": predictor.kg.entity_names[2], "k": 3,
                                            "filter_known": False})
    assert r.status_code == 200
    assert r.json() == predictor.predict_heads("r_next", "E2", k=3, filter_known=False).to_dict()
    assert r.json()["direction"] == "head" and r.json()["num_filtered"] == 0


def test_unseen_entity_score_and_search(client, predictor):
    unseen = {"name": "grey wolf", "description": "a wild animal"}
    r = client.post("/predict/tails", json={"head": unseen, "relation": "has part", "k": 2})
    assert r.status_code == 200 and r.json()["entity"] == {"name": "grey wolf", "text": "grey wolf: a wild animal"}
    r = client.post("/score", json={"head": "E0", "relation": "hypernym", "tail": unseen})
    assert r.status_code == 200
    assert r.json()["score"] == pytest.approx(predictor.score("E0", "hypernym", unseen), abs=1e-6)
    assert r.json()["head"] == {"id": "E0", "name": predictor.kg.entity_names[0]}
    r = client.get("/entities/search", params={"prefix": predictor.kg.entity_names[3][:3], "limit": 5})
    assert r.status_code == 200 and {"id": "E3", "name": predictor.kg.entity_names[3]} in r.json()["entities"]
    assert client.get("/entities/search", params={"prefix": "zzzz"}).json() == {"entities": []}


def test_endpoints_do_not_touch_the_file_system(client, no_file_access):
    assert client.post("/predict/tails", json={"head": {"name": "fox", "description": "wild"},
                                               "relation": "hypernym", "k": 3}).status_code == 200
    assert client.post("/predict/heads", json={"relation": "hypernym", "tail": "E4"}).status_code == 200
    assert client.post("/score", json={"head": "E0", "relation": "hypernym", "tail": "E1"}).status_code == 200
    assert client.get("/entities/search", params={"prefix": "e"}).status_code == 200
    assert client.post("/predict/tails", json={"head": "nobody", "relation": "hypernym"}).status_code == 404
    assert no_file_access == []


# ---------------------------------------------------------------------------------------------------- bad requests
@pytest.mark.parametrize("body, status, message", [
    ({"head": "nobody", "relation": "hypernym"}, 404, "unknown entity 'nobody'"),
    ({"head": "E0", "relation": "eats"}, 404, "unknown relation 'eats'"),
    ({"head": "E0", "relation": "hypernym", "k": 0}, 422, "greater than or equal to 1"),
    ({"head": "E0", "relation": "hypernym", "k": 1001}, 422, "less than or equal to 1000"),
    ({"head": "E0", "relation": "hypernym", "k": "5"}, 422, "valid integer"),
    ({"head": "E0", "relation": "hypernym", "k": 2.5}, 422, "valid integer"),
    ({"head": "E0"}, 422, "Field required"),
    ({"head": "E0", "relation": "hypernym", "colour": "red"}, 422, "Extra inputs are not permitted"),
    ({"head": "", "relation": "hypernym"}, 422, "at least 1 character"),
    ({"head": "x" * 201, "relation": "hypernym"}, 422, "at most 200 characters"),
    ({"head": {"name": "x", "description": "y" * 2001}, "relation": "hypernym"}, 422, "at most 2000 characters"),
    ({"head": {"description": "no name"}, "relation": "hypernym"}, 422, "Field required"),
    ({"head": {"name": "   "}, "relation": "hypernym"}, 422, "non-empty 'name'"),
    ({"head": 7, "relation": "hypernym"}, 422, "valid string"),
    ([1, 2], 422, "valid dictionary"),
])
def test_bad_tail_requests(client, body, status, message):
    r = client.post("/predict/tails", json=body)
    assert r.status_code == status, r.text
    assert message in r.text


def test_ambiguous_name_lists_candidates(client, predictor):
    name = predictor.kg.entity_names[1]
    r = client.post("/predict/tails", json={"head": name, "relation": "hypernym"})
    assert r.status_code == 422
    assert "ambiguous" in r.json()["detail"] and r.json()["candidates"] == ["E1", "NEW-1"]
    assert client.post("/score", json={"head": "E0", "relation": "hypernym", "tail": name}).status_code == 422


def test_malformed_json_oversized_body_and_methods(client):
    json_type = {"content-type": "application/json"}
    r = client.post("/predict/tails", content=b'{"head": "E0", "relation": ', headers=json_type)
    assert r.status_code == 422 and "JSON decode error" in r.text
    r = client.post("/predict/tails", content=b'{"head": {"name": "\\ud800"}, "relation": "hypernym"}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and "unicode" in r.text.lower()
    r = client.post("/predict/tails", content=b"\xff\xfe", headers={"content-type": "application/json"})
    assert r.status_code == 422
    r = client.post("/predict/tails", content=b"{" + b" " * (MAX_BODY + 10) + b"}",
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and "exceeds" in r.json()["detail"]

    def chunks():  # streamed without a Content-Length
        for _ in range(4):
            yield b" " * (MAX_BODY // 2)

    r = client.post("/predict/tails", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert client.get("/predict/tails").status_code == 405
    assert client.get("/entities/search").status_code == 422
    assert client.get("/entities/search", params={"prefix": "a", "limit": 0}).status_code == 422
    assert client.post("/score", json={"head": "E0", "relation": "hypernym"}).status_code == 422


# ---------------------------------------------------------------------------------------------------- batching
def _same_answers(got: dict, want: dict) -> None:
    """Equal but for float noise: a batched forward pads differently from a single one."""
    for key in set(got) | set(want):
        if key not in ("results", "filtered"):
            assert got[key] == want[key]
    for key in ("results", "filtered"):
        assert [{**x, "score": None} for x in got[key]] == [{**x, "score": None} for x in want[key]]
        assert [x["score"] for x in got[key]] == pytest.approx([x["score"] for x in want[key]], abs=1e-5)


def _wait_for(condition, seconds: float = 20.0) -> None:
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.005)


class Gated:
    """An app whose model calls are recorded and held until ``gate`` opens, so requests queue meanwhile."""

    def __init__(self, app, client):
        self.app, self.client = app, client
        self.calls: list[list[ResolvedQuery]] = []
        self.entered, self.gate = threading.Event(), threading.Event()

    def computed(self) -> list[str]:
        return [q.entity.id for call in self.calls for q in call]


@pytest.fixture()
def gated(predictor, monkeypatch):
    made: list[Gated] = []
    real = predictor.predict_resolved
    clients = ExitStack()

    def make(**app_args) -> Gated:
        app = create_app(predictor, max_body_bytes=MAX_BODY, **app_args)
        g = Gated(app, clients.enter_context(TestClient(app, base_url=BASE_URL, raise_server_exceptions=False)))
        made.append(g)

        def spy(queries):
            g.calls.append(list(queries))
            g.entered.set()
            assert g.gate.wait(20)
            return real(queries)

        monkeypatch.setattr(predictor, "predict_resolved", spy)
        return g

    yield make
    for g in made:
        g.gate.set()
    clients.close()


def test_batcher_error_goes_to_its_batch_and_it_restarts_after_close():
    def run(items):
        if "boom" in items:
            raise RuntimeError("boom")
        return [x.upper() for x in items]

    batcher = MicroBatcher(run, max_batch=4)
    with pytest.raises(RuntimeError, match="boom"):
        batcher.submit("boom").result(timeout=20)
    assert batcher.submit("ok").result(timeout=20) == "OK"
    batcher.close()
    assert batcher.submit("again").result(timeout=20) == "AGAIN"
    batcher.close()


def test_concurrent_requests_match_sequential_answers(client, predictor):
    bodies = [("/predict/tails", {"head": f"E{i}", "relation": ["hypernym", "has part", "r_sim"][i % 3],
                                  "k": 1 + i % 7, "filter_known": i % 2 == 0}) for i in range(12)]
    bodies += [("/predict/heads", {"relation": "hypernym", "tail": f"E{i}", "k": 3}) for i in range(6)]
    bodies.append(("/predict/tails", {"head": {"name": "grey wolf", "description": "wild"}, "relation": "hypernym"}))
    want = [client.post(path, json=body).json() for path, body in bodies]
    with ThreadPoolExecutor(len(bodies)) as pool:
        got = list(pool.map(lambda pb: client.post(pb[0], json=pb[1]), bodies))
    for (path, body), response, expected in zip(bodies, got, want):
        assert response.status_code == 200, response.text
        _same_answers(response.json(), expected)
        assert len(response.json()["results"]) == body.get("k", 10)


def test_requests_arriving_together_share_one_model_call(gated, predictor):
    g = gated()
    bodies = [{"head": f"E{i}", "relation": "hypernym", "k": 1 + i % 5, "filter_known": i % 3 > 0}
              for i in range(1, 17)]
    with ThreadPoolExecutor(17) as pool:
        first = pool.submit(g.client.post, "/predict/tails", json={"head": "E0", "relation": "hypernym"})
        assert g.entered.wait(20)  # the worker is busy with the first request: the others queue
        futures = [pool.submit(g.client.post, "/predict/tails", json=body) for body in bodies]
        _wait_for(lambda: g.app.state.batcher.pending() == len(bodies))
        g.gate.set()
        responses = [f.result() for f in futures]
    assert first.result().status_code == 200
    assert [len(call) for call in g.calls] == [1, 16]  # 17 requests, two model calls
    for body, response in zip(bodies, responses):
        assert response.status_code == 200, response.text
        _same_answers(response.json(), predictor.predict_tails(body["head"], "hypernym", body["k"],
                                                               body["filter_known"]).to_dict())


def test_a_bad_request_fails_alone(gated, predictor):
    g = gated()
    good = [{"head": f"E{i}", "relation": "has part", "k": 2} for i in range(3, 7)]
    bad = [({"head": "nobody", "relation": "has part"}, 404), ({"head": "E3", "relation": "eats"}, 404),
           ({"head": predictor.kg.entity_names[1], "relation": "has part"}, 422)]
    with ThreadPoolExecutor(8) as pool:
        pool.submit(g.client.post, "/predict/tails", json={"head": "E0", "relation": "hypernym"})
        assert g.entered.wait(20)
        futures = [pool.submit(g.client.post, "/predict/tails", json=body) for body in good + [b for b, _ in bad]]
        for (_, status), future in zip(bad, futures[len(good):]):  # answered while the model is still busy
            assert future.result(timeout=20).status_code == status
        _wait_for(lambda: g.app.state.batcher.pending() == len(good))
        g.gate.set()
        responses = [f.result() for f in futures[:len(good)]]
    assert [len(call) for call in g.calls] == [1, len(good)]
    for body, response in zip(good, responses):
        assert response.status_code == 200
        _same_answers(response.json(), predictor.predict_tails(body["head"], "has part", k=2).to_dict())


def test_deadline_answers_503_and_drops_queued_work(gated):
    g = gated(request_timeout=0.3)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(g.client.post, "/predict/tails", json={"head": "E0", "relation": "hypernym"})
        assert g.entered.wait(20)
        queued = g.client.post("/predict/heads", json={"relation": "hypernym", "tail": "E5"})
        assert queued.status_code == 503 and "not answered within 0.3 s" in queued.json()["detail"]
        assert running.result().status_code == 503  # still computing at its deadline
        score = g.client.post("/score", json={"head": "E0", "relation": "hypernym", "tail": "E1"})
        assert score.status_code == 503  # waits for the same model
    g.gate.set()
    after = g.client.post("/predict/tails", json={"head": "E7", "relation": "hypernym", "k": 2})
    assert after.status_code == 200 and len(after.json()["results"]) == 2
    assert g.client.post("/score", json={"head": "E0", "relation": "hypernym", "tail": "E1"}).status_code == 200
    assert g.computed() == ["E0", "E7"]  # E5 timed out in the queue: never computed


# ---------------------------------------------------------------------------------------------------- fuzz
@pytest.mark.slow
def test_schema_fuzz_never_5xx(predictor):
    schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is optional (pip install schemathesis)")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    app = create_app(predictor, max_body_bytes=MAX_BODY, allowed_hosts=["testserver"])  # schemathesis's Host
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    seen = 0
    with TestClient(app):  # the lifespan: /ready answers 200 only inside it
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
                @settings(max_examples=15, deadline=None, database=None, derandomize=True,
                          suppress_health_check=list(HealthCheck))
                @given(case=operation.as_strategy(mode))
                def check(case):
                    response = case.call()
                    assert response.status_code < 500, (case.method, case.path, case.body, case.query, response.text)

                try:
                    check()
                except Unsatisfiable:  # nothing to get wrong (GET /health and /ready have no parameters)
                    assert mode == schemathesis.GenerationMode.NEGATIVE
                    continue
                seen += 1
    assert seen >= 10  # six operations, both generation modes (but GET /health and GET /ready)


# ---------------------------------------------------------------------------------------------------- load test script
def _serve_load():
    return load_bench("serve_load")


@pytest.mark.slow
def test_serve_load_script_end_to_end(predictor, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the server's torch threads, as conftest sets this process's
    out = tmp_path / "load.json"
    report = _serve_load().main(["--model", predictor.info["model_dir"], "--device", "cpu", "--sequential", "10",
                                 "--warmup", "2", "--requests", "20", "--clients", "4", "--seconds", "60",
                                 "--api-key", "bench-key", "--health-port", "0", "--json-out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == report and "api_key" not in saved["settings"]
    assert saved["errors_5xx"] == 0
    assert saved["sequential"]["status"] == {"200": 10} and saved["load"]["status"] == {"200": 20}
    assert saved["in_process"]["n"] == saved["sequential"]["n"] == 10 and saved["load"]["n"] == 20
    for phase in ("in_process", "sequential", "load"):
        assert 0 < saved[phase]["p50_ms"] <= saved[phase]["p99_ms"] <= saved[phase]["max_ms"]
        assert saved[phase]["qps"] > 0
    assert saved["load"]["clients"] == 4 and set(saved["load"]["health"]["status"]) <= {"200"}
    assert saved["load"]["health_port"]["n"] > 0 and set(saved["load"]["health_port"]["status"]) == {"200"}
    assert saved["server"]["started"] and saved["server"]["health"]["entities"] == predictor.kg.num_entities


@pytest.mark.slow
def test_serve_load_script_slow_senders(predictor, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    report = _serve_load().main(["--model", predictor.info["model_dir"], "--device", "cpu", "--sequential", "2",
                                 "--warmup", "0", "--slow-senders", "4", "--trickle-interval", "0.2",
                                 "--seconds", "3", "--serve-args", "--receive-timeout 0.5"])
    load = report["load"]
    assert load["clients"] == 1 and load["status"].get("200", 0) > 0 and report["errors_5xx"] == 0
    assert load["slow_senders"]["outcomes"].get("408", 0) >= 4  # each cut off at the deadline, at least once
    assert load["health"]["status"].get("200", 0) > 0


def test_serve_load_script_only_targets_loopback():
    with pytest.raises(SystemExit):
        _serve_load().parse_args(["--model", "m", "--url", "http://192.0.2.1:8000"])
    assert _serve_load().parse_args(["--model", "m", "--url", "http://[::1]:8000"]).url
    with pytest.raises(SystemExit):
        _serve_load().parse_args(["--model", "m", "--url", "http://[::1]:8000", "--health-port", "0"])
