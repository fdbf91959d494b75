"""HTTP service under hostile use: a hub query's bounded work and answer, /health and /ready while the model is busy
and from a probe process of their own, slow senders of bodies and of headers (408, through a real uvicorn), refusals
past the concurrency limit, API key, Host headers, strict JSON errors, Prometheus metrics and the ``serve`` options."""
from __future__ import annotations

import asyncio
import gc
import json
import math
import re
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the HTTP service needs fastapi (pip install fastapi uvicorn httpx)")
pytest.importorskip("httpx", reason="fastapi.testclient needs httpx")
pytest.importorskip("prometheus_client", reason="the HTTP service needs prometheus-client")

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client import generate_latest  # noqa: E402

from conftest import make_tiny_kg, train_tiny  # noqa: E402
from kgdistill.cli import main  # noqa: E402
from kgdistill.data.batching import KnownTails  # noqa: E402
from kgdistill.data.dataset import SPLITS  # noqa: E402
from kgdistill.errors import KGDistillError  # noqa: E402
from kgdistill.inference import listeners  # noqa: E402
from kgdistill.inference import server as server_module  # noqa: E402
from kgdistill.inference.predictor import Predictor  # noqa: E402
from kgdistill.inference.server import create_app, host_patterns  # noqa: E402

LOCAL = "http://localhost"
KEY = "s3cret-Key_0123456789"
HUB_SPLITS = {"train": range(1, 15), "valid": range(15, 18), "test": range(18, 21)}  # E0 --member of--> E1..E20


def strict_json(text: str):
    """JSON as a strict parser reads it: NaN and Infinity are errors."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def hub_kg(tmp_path_factory) -> Path:
    """The tiny KG plus a hub: E0 has 20 known answers of one relation, spread over the three splits."""
    folder = make_tiny_kg(tmp_path_factory.mktemp("hub-kg"))
    with (folder / "relations.tsv").open("a", encoding="utf-8") as f:
        f.write("r_hub\tmember of\n")
    for split, tails in HUB_SPLITS.items():
        with (folder / f"{split}.txt").open("a", encoding="utf-8") as f:
            f.writelines(f"E0\tr_hub\tE{t}\n" for t in tails)
    return folder


@pytest.fixture(scope="module")
def predictor(tmp_path_factory, tiny_plm, hub_kg) -> Predictor:
    root = tmp_path_factory.mktemp("serve-security")
    train_tiny(root / "run", hub_kg, tiny_plm, data__cache_dir=str(root / "cache"), train__max_steps=2,
               train__checkpoint_every=2)
    return Predictor.from_pretrained(root / "run", device="cpu")


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(create_app(predictor), base_url=LOCAL, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def keyed(predictor):
    with TestClient(create_app(predictor, api_key=KEY), base_url=LOCAL, raise_server_exceptions=False) as client:
        yield client


# ---------------------------------------------------------------------------------------------------- hub queries
def test_hub_query_returns_at_most_k_filtered_and_counts_all(client, predictor, monkeypatch):
    lookups = []
    real = KnownTails.tails_of
    monkeypatch.setattr(KnownTails, "tails_of", lambda self, h, r: lookups.append(self) or real(self, h, r))
    k = 3
    pred = predictor.predict_tails("E0", "member of", k=k)
    assert pred.num_filtered == 20 and len(pred.filtered) == k and len(pred.results) == k
    split_lookups = [x for x in lookups if x is not predictor.known_all]
    assert len(split_lookups) == len(SPLITS)  # once per split for the query, not once per known answer
    where = {f"E{t}": split for split, tails in HUB_SPLITS.items() for t in tails}
    unfiltered = predictor.predict_tails("E0", "member of", k=predictor.num_entities, filter_known=False).results
    best_known = [r.id for r in unfiltered if r.id in where][:k]
    assert [f.id for f in pred.filtered] == best_known  # the best known answers, best first
    assert all(f.splits == [where[f.id]] for f in pred.filtered)
    assert not {r.id for r in pred.results} & set(where)

    body = client.post("/predict/tails", json={"head": "E0", "relation": "member of", "k": k}).json()
    assert len(body["filtered"]) == k and body["num_filtered"] == 20
    heads = client.post("/predict/heads", json={"relation": "member of", "tail": "E5", "k": 2}).json()
    assert heads["num_filtered"] == 1 and [f["id"] for f in heads["filtered"]] in ([], ["E0"])


# ---------------------------------------------------------------------------------------------------- busy model
def test_health_and_ready_answer_while_requests_wait_for_the_model(predictor, monkeypatch):
    entered, gate = threading.Event(), threading.Event()
    real = predictor.predict_resolved

    def held(queries):
        entered.set()
        assert gate.wait(30)
        return real(queries)

    monkeypatch.setattr(predictor, "predict_resolved", held)
    app = create_app(predictor)
    waiting = 48  # more than the server's thread pool (40): before, each /score held a thread waiting for the model
    with TestClient(app, base_url=LOCAL, raise_server_exceptions=False) as c, ThreadPoolExecutor(waiting + 2) as pool:
        first = pool.submit(c.post, "/predict/tails", json={"head": "E1", "relation": "hypernym"})
        assert entered.wait(30)
        scores = [pool.submit(c.post, "/score", json={"head": f"E{i % 20}", "relation": "hypernym", "tail": "E2"})
                  for i in range(waiting)]
        search = pool.submit(c.get, "/entities/search", params={"prefix": "e"})
        end = time.monotonic() + 30
        while app.state.batcher.pending() < waiting + 1:
            assert time.monotonic() < end
            time.sleep(0.01)
        start = time.monotonic()
        assert c.get("/health").status_code == 200
        assert c.get("/ready").json() == {"status": "ready"}
        assert time.monotonic() - start < 5
        gate.set()
        assert first.result().status_code == 200 and search.result().status_code == 200
        assert {f.result().status_code for f in scores} == {200}
        text = c.get("/metrics").text  # the first request, then the 49 queued ones in batches of 32 and 17
        assert "kgdistill_batch_size_count 3.0" in text and "kgdistill_batch_size_sum 50.0" in text
    assert app.state.batcher.pending() == 0


def test_ready_is_503_outside_the_lifespan(predictor):
    app = create_app(predictor)
    assert TestClient(app, base_url=LOCAL).get("/ready").status_code == 503  # no 'with': never started
    with TestClient(app, base_url=LOCAL) as c:
        assert c.get("/ready").status_code == 200
    assert app.state.liveness.ready is False


# ---------------------------------------------------------------------------------------------------- slow senders
@contextmanager
def live(app, **options):
    """The app in a real uvicorn on a free loopback port, with serve()'s protocol (body handling, connection close,
    head deadline, concurrency limit); ``options``: ``uvicorn_config``'s."""
    server = uvicorn.Server(server_module.uvicorn_config(app, "127.0.0.1", 0, app.state.metrics.count_refusal,
                                                         log_level="warning", lifespan="on", **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < end, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(30)


def port_of(server: uvicorn.Server) -> int:
    return server.servers[0].sockets[0].getsockname()[1]


def read_response(conn: socket.socket) -> bytes:
    """One HTTP response (head, and a body of Content-Length bytes) from a raw connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: *(\d+)", head, re.IGNORECASE).group(1))
    while len(body) < length:
        body += conn.recv(4096)
    return head + b"\r\n\r\n" + body


def read_until_closed(conn: socket.socket) -> bytes:
    answer = b""
    while chunk := conn.recv(4096):
        answer += chunk
    return answer


def test_slow_sender_gets_408_and_the_connection_closes(predictor):
    with live(create_app(predictor, receive_timeout=0.5)) as server:
        port = port_of(server)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            slow.sendall(b"POST /predict/tails HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{")
            start = time.monotonic()
            ok = httpx.post(f"http://127.0.0.1:{port}/predict/tails", json={"head": "E1", "relation": "hypernym"},
                            timeout=10)
            assert ok.status_code == 200  # an ordinary client is served meanwhile
            answer = read_until_closed(slow)
            assert 0.4 < time.monotonic() - start < 5
        assert answer.startswith(b"HTTP/1.1 408") and b"connection: close" in answer.lower()
        assert b"not received within 0.5 s" in answer


def test_request_head_deadline_closes_silent_and_trickling_connections(predictor):
    app = create_app(predictor, receive_timeout=5.0)
    with live(app, header_timeout=0.5) as server:
        address = ("127.0.0.1", port_of(server))
        with socket.create_connection(address, timeout=10) as silent, \
                socket.create_connection(address, timeout=10) as slow:
            opened = time.monotonic()
            slow.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert read_response(slow).startswith(b"HTTP/1.1 200")
            head = iter(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")  # the next request's, a byte at a time: 4 s
            slow.settimeout(0.1)
            slow.sendall(bytes([next(head)]))
            started = time.monotonic()
            ok = httpx.post(f"http://{address[0]}:{address[1]}/predict/tails",
                            json={"head": "E1", "relation": "hypernym"}, timeout=10)
            assert ok.status_code == 200  # an ordinary client is served meanwhile
            answer = b""
            while True:
                try:
                    chunk = slow.recv(4096)
                except socket.timeout:
                    byte = next(head, None)
                    assert byte is not None, "not cut off at the head deadline"
                    slow.sendall(bytes([byte]))
                    continue
                if not chunk:
                    break
                answer += chunk
            assert 0.4 < time.monotonic() - started < 3
            assert answer.startswith(b"HTTP/1.1 408") and b"connection: close" in answer.lower()
            assert b"request head not received within 0.5 s" in answer
            assert read_until_closed(silent).startswith(b"HTTP/1.1 408")  # nothing sent at all: the same deadline
            assert time.monotonic() - opened < 3
        with socket.create_connection(address, timeout=10) as conn:  # the head's deadline: a body may take longer
            body = json.dumps({"head": "E1", "relation": "hypernym"}).encode()
            conn.sendall(b"POST /predict/tails HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body))
            time.sleep(0.8)
            conn.sendall(body)
            assert read_response(conn).startswith(b"HTTP/1.1 200")
    assert app.state.metrics.registry.get_sample_value("kgdistill_http_refused_total",
                                                       {"reason": "header_timeout"}) == 2


def test_refusals_past_the_concurrency_limit_are_counted(predictor):
    app = create_app(predictor)
    with live(app, limit_concurrency=2) as server, \
            socket.create_connection(("127.0.0.1", port_of(server)), timeout=10) as held:
        held.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert read_response(held).startswith(b"HTTP/1.1 200")  # kept alive: one connection of the two
        refused = httpx.get(f"http://127.0.0.1:{port_of(server)}/health", timeout=10)
        assert refused.status_code == 503 and refused.json() == {"detail": listeners.OVERLOADED}
        assert refused.headers["connection"] == "close"
    text = generate_latest(app.state.metrics.registry).decode()
    assert 'kgdistill_http_refused_total{reason="concurrency"} 1.0' in text
    assert 'kgdistill_http_requests_total{path="/health",status="200"} 1.0' in text  # the refusal is not the app's
    assert 'status="503"' not in text


# ---------------------------------------------------------------------------------------------------- probe process
def test_probe_process_answers_like_the_main_port_from_shared_state(predictor, monkeypatch):
    monkeypatch.setattr(server_module, "HEARTBEAT_INTERVAL", 0.05)
    app = create_app(predictor)
    liveness = app.state.liveness
    with live(app) as server, listeners.probe_process(liveness, server_module.health_info(predictor),
                                                      app.state.allowed_hosts, "127.0.0.1", 0) as probe_port:
        main, probes = f"http://127.0.0.1:{port_of(server)}", f"http://127.0.0.1:{probe_port}"
        assert httpx.get(f"{probes}/health").json() == httpx.get(f"{main}/health").json()
        assert httpx.get(f"{probes}/ready").json() == httpx.get(f"{main}/ready").json() == {"status": "ready"}
        assert httpx.get(f"{probes}/health", headers={"host": "evil.example"}).status_code == 400
        assert httpx.get(f"{probes}/metrics").status_code == 404  # the probes only
        liveness.stopping = True  # the main server shuts down: no longer ready, still alive
        assert httpx.get(f"{probes}/ready").status_code == httpx.get(f"{main}/ready").status_code == 503
        assert httpx.get(f"{probes}/health").status_code == 200
        liveness.stopping = False
        stuck = threading.Event()
        server.servers[0].get_loop().call_soon_threadsafe(lambda: stuck.set() or time.sleep(1.5))
        assert stuck.wait(10)  # the main loop is stuck: its heartbeat is not stamped
        liveness.heartbeat -= listeners.LOOP_STALL_TIMEOUT + 1
        health = httpx.get(f"{probes}/health")
        assert health.status_code == 503 and "event loop has not run for 11 s" in health.json()["detail"]
        assert httpx.get(f"{probes}/ready").status_code == 503
        end = time.monotonic() + 10
        while httpx.get(f"{probes}/health").status_code != 200:  # the loop runs again and stamps its heartbeat
            assert time.monotonic() < end, "the probe process did not see the loop run again"
            time.sleep(0.05)
    assert liveness.ready is False  # the lifespan ended
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{probes}/health")  # stopped with the block


def test_serve_marks_the_app_stopping_once_uvicorn_decides_to_exit(predictor):
    app = create_app(predictor)
    server = server_module._Server(server_module.uvicorn_config(app, "127.0.0.1", 0, app.state.metrics.count_refusal),
                                   app.state.liveness)
    assert asyncio.run(server.on_tick(1)) is False and app.state.liveness.stopping is False
    server.should_exit = True  # a signal, before the graceful wait for in-flight requests
    assert asyncio.run(server.on_tick(1)) is True and app.state.liveness.stopping is True


def test_probe_process_keeps_the_header_deadline_and_reports_a_port_it_cannot_use():
    liveness = listeners.Liveness()
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(KGDistillError, match=f"health port {port}: could not listen on 127.0.0.1: .*in use"):
            with listeners.probe_process(liveness, {}, ["127.0.0.1"], "127.0.0.1", port):
                pytest.fail("listening on a taken port")
    with listeners.probe_process(liveness, {}, ["127.0.0.1"], "127.0.0.1", 0, header_timeout=0.3) as probe_port:
        with socket.create_connection(("127.0.0.1", probe_port), timeout=10) as conn:
            conn.sendall(b"GET /health HTTP/1.1\r\n")  # and no more
            assert read_response(conn).startswith(b"HTTP/1.1 408 ")
    assert liveness.probe_refusals == {"concurrency": 0, "header_timeout": 1}  # counted in the probe process


def test_metrics_show_the_probe_ports_refusals(predictor):
    app = create_app(predictor)
    with TestClient(app, base_url=LOCAL) as c:
        assert 'kgdistill_probe_refused_total{reason="header_timeout"} 0.0' in c.get("/metrics").text
        for _ in range(3):
            app.state.liveness.count_probe_refusal("header_timeout")
        app.state.liveness.count_probe_refusal("concurrency")
        text = c.get("/metrics").text
    assert 'kgdistill_probe_refused_total{reason="header_timeout"} 3.0' in text
    assert 'kgdistill_probe_refused_total{reason="concurrency"} 1.0' in text


def test_probe_process_exits_when_the_serving_process_is_killed(predictor, tmp_path):
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    port, health_port = ports
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    with (tmp_path / "serve.log").open("wb") as log:
        serving = subprocess.Popen([sys.executable, "-m", "kgdistill", "serve", "--model", predictor.info["model_dir"],
                                    "--device", "cpu", "--port", str(port), "--health-port", str(health_port)],
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        end = time.monotonic() + 120
        while True:
            assert serving.poll() is None and time.monotonic() < end, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{health_port}/ready").status_code == 200:
                    break
            except httpx.ConnectError:
                pass
            time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200
    finally:
        serving.kill()  # SIGKILL: no finally, no atexit in the serving process
        serving.wait()
    end = time.monotonic() + 5
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{health_port}/health", timeout=1)
        except httpx.TransportError:
            break  # the probe process is gone with its parent
        assert time.monotonic() < end, "the probe process outlived the serving process"
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------------- authentication
@pytest.mark.parametrize("headers", [{}, {"authorization": f"Bearer {KEY}x"}, {"authorization": f"Basic {KEY}"},
                                     {"authorization": KEY}, {"authorization": "Bearer "}])
def test_api_key_refuses_without_the_key(keyed, headers):
    for method, path, body in (("post", "/predict/tails", {"head": "E1", "relation": "hypernym"}),
                               ("post", "/score", {"head": "E1", "relation": "hypernym", "tail": "E2"}),
                               ("get", "/entities/search?prefix=e", None), ("get", "/metrics", None),
                               ("get", "/openapi.json", None)):
        r = keyed.request(method, path, json=body, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (path, headers)
        assert "API key" in r.json()["detail"]


def test_api_key_accepted_and_probes_open(keyed):
    auth = {"authorization": f"bearer {KEY}"}  # the scheme is case-insensitive
    assert keyed.post("/predict/tails", json={"head": "E1", "relation": "hypernym"}, headers=auth).status_code == 200
    assert keyed.get("/metrics", headers=auth).status_code == 200
    assert keyed.get("/health").status_code == 200 and keyed.get("/ready").status_code == 200


def test_api_key_must_fit_a_header(predictor):
    for bad in ("", "two words", "clé"):
        with pytest.raises(KGDistillError, match="printable ASCII"):
            create_app(predictor, api_key=bad)


def test_host_header_must_be_allowed(predictor, client):
    for host in ("evil.example", "evil.example:8000", "127.0.0.2"):
        r = client.get("/health", headers={"host": host})
        assert r.status_code == 400, host
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
        assert client.get("/health", headers={"host": host}).status_code == 200, host
    with TestClient(create_app(predictor, allowed_hosts=["*.example.org", "kg.internal"])) as c:
        assert c.get("/health", headers={"host": "a.example.org"}).status_code == 200
        assert c.get("/health", headers={"host": "kg.internal:80"}).status_code == 200
        assert c.get("/health", headers={"host": "localhost"}).status_code == 400  # only the listed ones
    assert host_patterns(["::1", "LocalHost", "*"]) == ["[::1]", "localhost", "*"]
    for bad in ("example.org:80", "a.*.org", "*example.org", ""):
        with pytest.raises(KGDistillError, match="allowed host"):
            host_patterns([bad])


# ---------------------------------------------------------------------------------------------------- strict errors
def test_validation_errors_do_not_echo_input(client):
    secret = "do-not-echo-" + "x" * 300
    for body in ({"head": secret, "relation": "hypernym"}, {"head": "E1", "relation": "hypernym", "k": secret},
                 {"head": {"name": "n", "description": secret * 10}, "relation": "hypernym"}):
        r = client.post("/predict/tails", json=body)
        assert r.status_code == 422 and secret not in r.text
        assert all(set(e) == {"loc", "msg", "type"} for e in r.json()["detail"])
    r = client.post("/predict/tails", content=b'{"head": "E1", "relation": "hypernym", "k": NaN}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and strict_json(r.text)["detail"][0]["loc"] == ["body", "k"]


def test_non_finite_scores_are_errors_not_null(client, predictor, monkeypatch):
    monkeypatch.setattr(predictor, "score", lambda *args: math.nan)
    r = client.post("/score", json={"head": "E1", "relation": "hypernym", "tail": "E2"})
    assert r.status_code == 500 and "non-finite" in strict_json(r.text)["detail"]
    real = predictor.predict_resolved

    def poisoned(queries):
        predictions = real(queries)
        predictions[0].results[0].score = math.inf
        return predictions

    monkeypatch.setattr(predictor, "predict_resolved", poisoned)
    r = client.post("/predict/tails", json={"head": "E1", "relation": "hypernym"})
    assert r.status_code == 500 and "non-finite" in strict_json(r.text)["detail"]


# ---------------------------------------------------------------------------------------------------- metrics
def test_metrics_count_requests_latency_queue_and_batches(predictor):
    with TestClient(create_app(predictor), base_url=LOCAL, raise_server_exceptions=False) as c:
        for _ in range(3):
            assert c.post("/predict/tails", json={"head": "E2", "relation": "hypernym"}).status_code == 200
        assert c.post("/predict/tails", json={"head": "nobody", "relation": "hypernym"}).status_code == 404
        assert c.get("/health", headers={"host": "evil.example"}).status_code == 400
        assert c.get("/no/such/path").status_code == 404
        text = c.get("/metrics").text
    assert 'kgdistill_http_requests_total{path="/predict/tails",status="200"} 3.0' in text
    assert 'kgdistill_http_requests_total{path="/predict/tails",status="404"} 1.0' in text
    assert 'kgdistill_http_requests_total{path="/health",status="400"} 1.0' in text
    assert 'kgdistill_http_requests_total{path="other",status="404"} 1.0' in text
    assert 'kgdistill_http_request_seconds_count{path="/predict/tails"} 4.0' in text
    assert "kgdistill_batcher_queue_depth 0.0" in text
    assert "kgdistill_batch_size_count 3.0" in text and "kgdistill_batch_size_sum 3.0" in text
    assert 'kgdistill_http_refused_total{reason="concurrency"} 0.0' in text  # uvicorn's refusals, none here


# ---------------------------------------------------------------------------------------------------- serve options
def test_serve_passes_limits_runs_probes_and_warns_without_a_key_beyond_localhost(predictor, monkeypatch, caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        health_port = s.getsockname()[1]
    runs = []

    def probe(path: str) -> int | None:
        try:
            return httpx.get(f"http://127.0.0.1:{health_port}{path}").status_code
        except httpx.ConnectError:
            return None

    def run(server: uvicorn.Server, sockets=None) -> None:
        runs.append((server.config, [probe("/health"), probe("/ready")]))

    monkeypatch.setattr(uvicorn.Server, "run", run)
    freezes = []
    monkeypatch.setattr(gc, "freeze", lambda: freezes.append(len(runs)))  # the test process's heap stays as it is
    server_module.serve(predictor, "0.0.0.0", 8123, allowed_hosts=["kg.example"], graceful_shutdown=7,
                        receive_timeout=3.0, header_timeout=4.0, limit_concurrency=99)
    assert "without an API key" in caplog.text
    config, probes = runs[-1]
    assert config.timeout_graceful_shutdown == 7 and config.host == "0.0.0.0" and config.limit_concurrency == 99
    assert config.http.func is listeners.GuardedH11Protocol and config.http.keywords["header_timeout"] == 4.0
    assert probes == [None, None]  # no health port, no probe process
    assert freezes == [0]  # the loaded model out of the collections, before the server runs
    with TestClient(config.app, base_url="http://kg.example") as c:
        assert c.get("/health").status_code == 200
    caplog.clear()
    server_module.serve(predictor, "127.0.0.1", 8123, health_port=health_port)
    assert runs[-1][1] == [200, 503]  # answered while the main server runs; ready once its lifespan has started
    assert probe("/health") is None  # and gone with it
    server_module.serve(predictor, "0.0.0.0", 8123, api_key=KEY)
    assert "without an API key" not in caplog.text


def test_cli_serve_checks_key_and_hosts_before_loading(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Predictor, "from_pretrained", lambda *a, **k: pytest.fail("the model must not load"))
    assert main(["serve", "--model", str(tmp_path), "--allowed-host", "example.org:80"]) == 2
    assert "allowed host" in capsys.readouterr().err
    monkeypatch.setenv("KGDISTILL_API_KEY", "has space")
    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert "printable ASCII" in capsys.readouterr().err
    for flags in (["--receive-timeout", "0"], ["--header-timeout", "-1"], ["--health-port", "8000"],
                  ["--health-port", "70000"]):
        assert main(["serve", "--model", str(tmp_path), *flags]) == 2
        err = capsys.readouterr().err
        assert flags[0] in err and len(err.strip().splitlines()) == 1, err
