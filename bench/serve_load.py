"""Bounded loopback load test of ``kgdistill serve``, with the in-process latency of the same queries beside it.

Loads the model in this process and times ``Predictor.predict_tails`` (no HTTP); starts
``kgdistill serve --model DIR`` on 127.0.0.1 (or uses ``--url``, which must be a loopback address), waits for
/ready, then times (i) sequential ``/predict/tails`` requests (single-query latency) and (ii) a load phase of
``--seconds`` (or ``--requests`` requests, whichever comes first): ``--clients`` concurrent clients, or with
``--slow-senders M`` M connections that trickle a request body (a byte every ``--trickle-interval`` seconds,
reconnecting when answered) while one ordinary client sends requests. Throughout the load phase /health is polled
and timed: it must stay fast while the model is busy; with ``--health-port`` it is polled on the server's probe
listener as well, beside the main port, by a prober of its own. Then the server is stopped. Queries are (head, relation)
pairs of the dataset's test split (the dataset the predictor loads with ``load_dataset``), the same for every phase.
Prints a table; ``--json-out`` writes every number. Run it with nothing else using the CPU:

    python bench/serve_load.py --model runs/teacher-quick --clients 200 --seconds 60 --json-out runs/serve-load.json
    python bench/serve_load.py --model runs/teacher-quick --clients 200 --seconds 60 --health-port 0
    python bench/serve_load.py --model runs/teacher-quick --slow-senders 300 --seconds 60
"""
from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from kgdistill.data.dataset import KnowledgeGraph
from kgdistill.inference.predictor import Predictor
from kgdistill.inference.server import is_loopback

HEALTH_INTERVAL = 0.1  # seconds between /health probes during the load phase
SLOW_BODY_BYTES = 1000  # declared by each slow sender: far more than it sends before any deadline


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="run or model folder (the served one; queries come from its data)")
    p.add_argument("--dataset", help="dataset name or folder (default: the model's)")
    p.add_argument("--checkpoint", default="last", choices=["last", "best"])
    p.add_argument("--device", help="cpu or cuda, for the server and the in-process predictor (default: theirs)")
    p.add_argument("--url", help="a server already running on a loopback address (default: start one on 127.0.0.1)")
    p.add_argument("--port", type=int, help="port of the started server (default: a free one)")
    p.add_argument("--health-port", type=int,
                   help="the server's probe port ('kgdistill serve --health-port', given to a started server; 0: a "
                        "free one): /health is probed there too (default: the main port only)")
    p.add_argument("--serve-args", default="", help="more arguments for 'kgdistill serve', e.g. '--max-batch 16'")
    p.add_argument("--api-key", help="the server's API key (given to the started server, sent by every client)")
    p.add_argument("--k", type=int, default=10, help="answers per query; default %(default)s")
    p.add_argument("--sequential", type=int, default=200,
                   help="sequential requests (and in-process queries) timed; default %(default)s")
    p.add_argument("--warmup", type=int, default=10, help="untimed queries before each phase; default %(default)s")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients of the load phase; default %(default)s")
    p.add_argument("--seconds", type=float, default=30.0, help="length of the load phase; default %(default)s")
    p.add_argument("--requests", type=int, help="end the load phase after this many requests (default: no limit)")
    p.add_argument("--slow-senders", type=int, default=0,
                   help="instead of --clients: this many connections trickle a request body while one client "
                        "sends requests")
    p.add_argument("--trickle-interval", type=float, default=1.0,
                   help="seconds between a slow sender's bytes; default %(default)s")
    p.add_argument("--client-timeout", type=float, default=60.0, help="seconds a client waits for an answer")
    p.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to wait for the server's /ready")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", help="write the report here")
    args = p.parse_args(argv)
    for name in ("k", "sequential", "clients", "seconds", "trickle_interval", "client_timeout", "startup_timeout"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')}: must be positive")
    for name in ("warmup", "slow_senders"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')}: must be 0 or more")
    if args.requests is not None and args.requests < 1:
        p.error("--requests: must be positive")
    if args.health_port is not None and not 0 <= args.health_port <= 65535:
        p.error("--health-port: expected 0..65535")
    if args.url and args.health_port == 0:
        p.error("--health-port 0: a free port only for a started server (with --url, give the server's)")
    if args.url and not is_loopback(httpx.URL(args.url).host):
        p.error("--url: the load test only targets a loopback address (127.0.0.1, ::1, localhost)")
    return args


def draw_queries(kg: KnowledgeGraph, count: int, k: int, seed: int) -> list[dict]:
    """``count`` tail queries of the test split, shuffled, each triple once before any repeats."""
    triples = kg.splits["test"]
    if not len(triples):
        raise SystemExit(f"{kg.name}: the test split is empty; no queries to send")
    order = np.resize(np.random.default_rng(seed).permutation(len(triples)), count)
    return [{"head": kg.entity_ids[h], "relation": kg.relation_ids[r], "k": k} for h, r, _ in triples[order].tolist()]


def summary(seconds: list[float]) -> dict:
    if not seconds:
        return {"n": 0}
    ms = np.asarray(seconds) * 1000
    return {"n": len(ms), "mean_ms": float(ms.mean()), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}


def time_in_process(predictor: Predictor, queries: list[dict], warmup: int) -> dict:
    for q in queries[:warmup]:
        predictor.predict_tails(q["head"], q["relation"], q["k"])
    seconds = []
    for q in queries:
        start = time.perf_counter()
        predictor.predict_tails(q["head"], q["relation"], q["k"])
        seconds.append(time.perf_counter() - start)
    return {**summary(seconds), "qps": len(seconds) / sum(seconds)}


def _request(client: httpx.Client, method: str, path: str, query: dict | None = None) -> tuple[str, float]:
    """Status ('200', '503', or the client error's name) and seconds of one request."""
    start = time.perf_counter()
    try:
        status = str(client.request(method, path, json=query).status_code)
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    return status, time.perf_counter() - start


def _report(answers: list[tuple[str, float]], seconds: float) -> dict:
    """Latency of the 200 answers, every status counted (a refusal is fast: it would flatter the percentiles)."""
    statuses = Counter(status for status, _ in answers)
    ok = [s for status, s in answers if status == "200"]
    return {**summary(ok), "requests": len(answers), "seconds": seconds, "qps": len(ok) / seconds,
            "status": dict(sorted(statuses.items())),
            "errors_5xx": sum(n for status, n in statuses.items() if status.startswith("5"))}


def _client(url: str, timeout: float, headers: dict) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=timeout, headers=headers)


def time_sequential(url: str, queries: list[dict], warmup: int, timeout: float, headers: dict) -> dict:
    with _client(url, timeout, headers) as client:
        for q in queries[:warmup]:
            _request(client, "POST", "/predict/tails", q)
        start = time.perf_counter()
        answers = [_request(client, "POST", "/predict/tails", q) for q in queries]
        return _report(answers, time.perf_counter() - start)


def probe_health(url: str, stop, timeout: float, answers) -> None:
    """/health at once, then every HEALTH_INTERVAL seconds until ``stop``, on one keep-alive connection, as a prober
    would. It runs in a process of its own: a thread beside hundreds of client threads would time this process's GIL
    queue, not the server. What it inherits from this process is frozen: a collection scanning it would be timed too."""
    gc.freeze()
    with httpx.Client(base_url=url, timeout=timeout) as client:
        while True:
            answers.put(_request(client, "GET", "/health"))
            if stop.wait(HEALTH_INTERVAL):
                break
    answers.put(None)


def slow_sender(host: str, port: int, stop_at: float, interval: float, outcomes: Counter, lock: threading.Lock
                ) -> None:
    """Holds a connection by trickling a body a byte every ``interval`` seconds; reconnects when answered.

    An answer (408 when the service enforces a receive deadline) is counted by status; a refusal or error pauses the
    sender for ``interval`` seconds, so that the load generator does not spin on the CPU the server needs."""
    authority = f"[{host}]" if ":" in host else host  # an IPv6 literal in brackets, as in a URL
    head = (f"POST /predict/tails HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {SLOW_BODY_BYTES}\r\n\r\n").encode()
    while time.perf_counter() < stop_at:
        outcome = "unanswered"
        try:
            with socket.create_connection((host, port), timeout=interval) as conn:
                conn.sendall(head)
                while time.perf_counter() < stop_at:
                    try:
                        data = conn.recv(4096)
                    except socket.timeout:
                        conn.sendall(b" ")
                        continue
                    outcome = data.split(b" ", 2)[1].decode(errors="replace") if data else "closed"
                    break
        except OSError as exc:
            outcome = type(exc).__name__
        with lock:
            outcomes[outcome] += 1
        if outcome != "408":
            time.sleep(max(0.0, min(interval, stop_at - time.perf_counter())))


def time_load(url: str, queries: list[dict], args, headers: dict, health_url: str | None) -> dict:
    """The load phase: clients (or one client beside slow senders) until ``--seconds`` or ``--requests``, /health
    polled meanwhile on the main port (and on ``health_url``)."""
    lock = threading.Lock()
    answers: list[tuple[str, float]] = []
    slow: Counter = Counter()
    sent = 0
    stop_at = time.perf_counter() + args.seconds
    clients = 1 if args.slow_senders else args.clients

    def client_loop() -> None:
        nonlocal sent
        with _client(url, args.client_timeout, headers) as client:
            while True:
                with lock:
                    if (args.requests is not None and sent >= args.requests) or time.perf_counter() >= stop_at:
                        return
                    query = queries[sent % len(queries)]
                    sent += 1
                answer = _request(client, "POST", "/predict/tails", query)
                with lock:
                    answers.append(answer)

    target = httpx.URL(url)
    senders = [threading.Thread(target=slow_sender, daemon=True,
                                args=(target.host, target.port or 80, stop_at, args.trickle_interval, slow, lock))
               for _ in range(args.slow_senders)]
    for t in senders:
        t.start()
    if senders:
        time.sleep(min(args.trickle_interval, args.seconds / 4))  # the slow senders hold their connections first
    fork = multiprocessing.get_context("fork")  # a prober only speaks HTTP: no torch in the child
    stop_health = fork.Event()
    targets = {"health": url, **({"health_port": health_url} if health_url else {})}
    probers = {}
    for name, target_url in targets.items():
        queue = fork.Queue()
        prober = fork.Process(target=probe_health, args=(target_url, stop_health, args.client_timeout, queue),
                              daemon=True)
        prober.start()
        probers[name] = (prober, queue)
    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    stop_health.set()
    report = {"clients": clients, **_report(answers, seconds)}
    for name, (prober, queue) in probers.items():
        report[name] = _report(list(iter(queue.get, None)), seconds)
        prober.join()
    for t in senders:
        t.join(args.trickle_interval + args.client_timeout)
    if senders:
        report["slow_senders"] = {"connections": args.slow_senders, "trickle_interval": args.trickle_interval,
                                  "outcomes": dict(sorted(slow.items()))}
    return report


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, server: subprocess.Popen | None, log: Path | None, timeout: float) -> dict:
    """The server's /health once its /ready says it serves."""
    end = time.monotonic() + timeout
    while True:
        if server is not None and server.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise SystemExit(f"the server exited with status {server.returncode} (log: {log}):\n{tail}")
        try:
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                return httpx.get(f"{url}/health", timeout=5).json()
        except httpx.HTTPError:
            pass
        if time.monotonic() > end:
            raise SystemExit(f"{url}/ready did not answer 200 within {timeout:g} s")
        time.sleep(0.25)


def start_server(args, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "kgdistill", "serve", "--model", args.model, "--checkpoint", args.checkpoint,
           "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--dataset", args.dataset] if args.dataset else []
    cmd += ["--device", args.device] if args.device else []
    cmd += ["--health-port", str(args.health_port)] if args.health_port else []
    cmd += shlex.split(args.serve_args)
    env = {**os.environ, "KGDISTILL_API_KEY": args.api_key} if args.api_key else None  # kept out of ps
    with log.open("wb") as out:  # a file, not a pipe: the access log must never block the server
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def print_table(report: dict) -> None:
    load = report["load"]
    name = (f"http 1 client+{load['slow_senders']['connections']} slow" if "slow_senders" in load
            else f"http {load['clients']} clients")
    rows = [("in-process", report["in_process"]), ("http sequential", report["sequential"]), (name, load),
            ("/health meanwhile", load["health"])]
    if "health_port" in load:
        rows.append(("/health on health port", load["health_port"]))
    print(f"{'phase':<24} {'n':>6} {'qps':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  status")
    for label, r in rows:
        stats = " ".join(f"{r[key]:8.2f}" if key in r else f"{'-':>8}" for key in ("qps", "p50_ms", "p99_ms", "max_ms"))
        status = ", ".join(f"{code}: {n}" for code, n in r.get("status", {}).items())
        print(f"{label:<24} {r.get('requests', r['n']):>6} {stats}  {status}")
    if "slow_senders" in load:
        outcomes = ", ".join(f"{k}: {n}" for k, n in load["slow_senders"]["outcomes"].items())
        print(f"slow senders' connections ended by: {outcomes or 'nothing (still held at the end)'}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.health_port == 0:
        args.health_port = _free_port()
    predictor = Predictor.from_pretrained(args.model, args.dataset, args.checkpoint, device=args.device, progress=True)
    queries = draw_queries(predictor.kg, max(args.sequential, args.requests or 0), args.k, args.seed)
    report = {"settings": {k: v for k, v in vars(args).items() if k not in ("json_out", "api_key")},
              "dataset": predictor.kg.name,
              "in_process": time_in_process(predictor, queries[:args.sequential], args.warmup)}
    del predictor  # its memory and threads are not the server's to compete with
    server = log = None
    if args.url:
        url = args.url.rstrip("/")
    else:
        port = args.port or _free_port()
        url = f"http://127.0.0.1:{port}"
        fd, name = tempfile.mkstemp(prefix="serve-load-", suffix=".log")
        os.close(fd)
        log = Path(name)
        server = start_server(args, port, log)
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        report["server"] = {"url": url, "started": server is not None,
                            "health": wait_ready(url, server, log, args.startup_timeout)}
        report["sequential"] = time_sequential(url, queries[:args.sequential], args.warmup, args.client_timeout,
                                               headers)
        health_url = str(httpx.URL(url).copy_with(port=args.health_port)).rstrip("/") if args.health_port else None
        report["load"] = time_load(url, queries, args, headers, health_url)
    finally:
        if server is not None:
            stop_server(server)
    if log is not None:
        log.unlink()  # kept only when something failed
    report["errors_5xx"] = report["sequential"]["errors_5xx"] + report["load"]["errors_5xx"]
    print_table(report)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
