"""HTTP service: good and bad requests through fastapi.testclient, and a bounded schema fuzz (no 5xx)."""
from __future__ import annotations

import sys

import pytest

pytest.importorskip("fastapi", reason="the HTTP service needs fastapi (pip install fastapi uvicorn httpx)")
pytest.importorskip("httpx", reason="fastapi.testclient needs httpx")

from fastapi.testclient import TestClient  # noqa: E402

from kgdistill.api import train  # noqa: E402
from kgdistill.config import build_config  # noqa: E402
from kgdistill.inference.predictor import Predictor  # noqa: E402
from kgdistill.inference.server import create_app  # noqa: E402

MAX_BODY = 8 * 1024
_FILE_EVENTS: list | None = None  # set to a list while requests must not touch the file system


def _audit(event: str, args) -> None:
    if _FILE_EVENTS is not None and event in ("open", "os.remove", "os.rename", "os.mkdir", "os.listdir",
                                              "os.scandir", "shutil.rmtree"):
        _FILE_EVENTS.append((event, args[0] if args else None))


sys.addaudithook(_audit)



@pytest.fixture(scope="module")
def predictor(tmp_path_factory, tiny_plm, tiny_kg) -> Predictor:
    root = tmp_path_factory.mktemp("serve")
    config = build_config(None, overrides={
        "data": {"dataset": str(tiny_kg), "max_tokens": 24, "valid_limit": 16, "cache_dir": str(root / "cache")},
        "model": {"plm": str(tiny_plm)},
        "train": {"batch_size": 8, "lr": 1e-3, "max_steps": 4, "warmup_steps": 1, "checkpoint_every": 4,
                  "log_every": 1, "precision": "fp32", "device": "cpu"},
    })
    train(config, root / "run", evaluate_after=False, progress=False)
    predictor = Predictor.from_pretrained(root / "run", device="cpu")
    # a second entity named like E1, so that the name is ambiguous
    predictor.add_entities([{"id": "NEW-1", "name": predictor.kg.entity_names[1], "description": "a newcomer"}])
    return predictor


@pytest.fixture(scope="module")
def app(predictor):
    return create_app(predictor, max_body_bytes=MAX_BODY)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, raise_server_exceptions=False) as client:
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


# ---------------------------------------------------------------------------------------------------- fuzz
def test_schema_fuzz_never_5xx(app):
    schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is optional (pip install schemathesis)")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    seen = 0
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
            except Unsatisfiable:  # nothing to get wrong (GET /health has no parameters)
                assert mode == schemathesis.GenerationMode.NEGATIVE
                continue
            seen += 1
    assert seen >= 9  # five operations, both generation modes (but GET /health)
