"""Bounded loopback load test of ``kgdistill serve``, with the in-process latency of the same queries beside it.

Loads the model in this process and times ``Predictor.predict_tails`` (no HTTP); starts
``kgdistill serve --model DIR`` on 127.0.0.1 (or uses ``--url``), waits for /health, then times (i) sequential
``/predict/tails`` requests (single-query latency) and (ii) ``--clients`` concurrent clients until ``--requests``
requests are answered or ``--duration`` seconds pass, whichever comes first; then stops the server. Queries are
(head, relation) pairs of the dataset's test split (the dataset the predictor loads with ``load_dataset``), the same
for every phase. Prints a table; ``--json-out`` writes every number. Run it with nothing else using the CPU:

    python bench/serve_load.py --model runs/teacher-quick --json-out runs/serve-load.json
"""
from __future__ import annotations

import argparse
import json
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="run or model folder (the served one; queries come from its data)")
    p.add_argument("--dataset", help="dataset name or folder (default: the model's)")
    p.add_argument("--checkpoint", default="last", choices=["last", "best"])
    p.add_argument("--device", help="cpu or cuda, for the server and the in-process predictor (default: theirs)")
    p.add_argument("--url", help="a server already running (default: start one on 127.0.0.1)")
    p.add_argument("--port", type=int, help="port of the started server (default: a free one)")
    p.add_argument("--serve-args", default="", help="more arguments for 'kgdistill serve', e.g. '--max-batch 16'")
    p.add_argument("--k", type=int, default=10, help="answers per query; default %(default)s")
    p.add_argument("--sequential", type=int, default=200,
                   help="sequential requests (and in-process queries) timed; default %(default)s")
    p.add_argument("--warmup", type=int, default=10, help="untimed queries before each phase; default %(default)s")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients; default %(default)s")
    p.add_argument("--requests", type=int, default=2000, help="requests of the concurrent phase; default %(default)s")
    p.add_argument("--duration", type=float, default=120.0,
                   help="the concurrent phase stops after this many seconds at the latest; default %(default)s")
    p.add_argument("--client-timeout", type=float, default=60.0, help="seconds a client waits for an answer")
    p.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to wait for the server's /health")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", help="write the report here")
    args = p.parse_args(argv)
    for name in ("k", "sequential", "clients", "requests", "duration", "client_timeout", "startup_timeout"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')}: must be positive")
    if args.warmup < 0:
        p.error("--warmup: must be 0 or more")
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


def _post(client: httpx.Client, query: dict) -> tuple[str, float]:
    """Status ('200', '503', or the client error's name) and seconds of one request."""
    start = time.perf_counter()
    try:
        status = str(client.post("/predict/tails", json=query).status_code)
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


def time_sequential(url: str, queries: list[dict], warmup: int, timeout: float) -> dict:
    with httpx.Client(base_url=url, timeout=timeout) as client:
        for q in queries[:warmup]:
            _post(client, q)
        start = time.perf_counter()
        answers = [_post(client, q) for q in queries]
        return _report(answers, time.perf_counter() - start)


def time_concurrent(url: str, queries: list[dict], clients: int, total: int, duration: float,
                    timeout: float) -> dict:
    """``clients`` threads, one keep-alive connection each, send queries until ``total`` or ``duration``."""
    lock = threading.Lock()
    answers: list[tuple[str, float]] = []
    sent = 0
    stop_at = time.perf_counter() + duration

    def client_loop() -> None:
        nonlocal sent
        with httpx.Client(base_url=url, timeout=timeout) as client:
            while True:
                with lock:
                    if sent >= total or time.perf_counter() >= stop_at:
                        return
                    query = queries[sent % len(queries)]
                    sent += 1
                answer = _post(client, query)
                with lock:
                    answers.append(answer)

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"clients": clients, **_report(answers, time.perf_counter() - start)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen | None, log: Path | None, timeout: float) -> dict:
    end = time.monotonic() + timeout
    while True:
        if server is not None and server.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise SystemExit(f"the server exited with status {server.returncode} (log: {log}):\n{tail}")
        try:
            response = httpx.get(f"{url}/health", timeout=5)
            if response.status_code == 200:
                return response.json()
        except httpx.HTTPError:
            pass
        if time.monotonic() > end:
            raise SystemExit(f"{url}/health did not answer within {timeout:g} s")
        time.sleep(0.25)


def start_server(args, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "kgdistill", "serve", "--model", args.model, "--checkpoint", args.checkpoint,
           "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--dataset", args.dataset] if args.dataset else []
    cmd += ["--device", args.device] if args.device else []
    cmd += shlex.split(args.serve_args)
    with log.open("wb") as out:  # a file, not a pipe: the access log must never block the server
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def print_table(report: dict) -> None:
    rows = [("in-process", report["in_process"]), ("http sequential", report["sequential"]),
            (f"http {report['concurrent']['clients']} clients", report["concurrent"])]
    print(f"{'phase':<18} {'n':>6} {'qps':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  status")
    for name, r in rows:
        stats = " ".join(f"{r[key]:8.2f}" if key in r else f"{'-':>8}" for key in ("qps", "p50_ms", "p99_ms", "max_ms"))
        status = ", ".join(f"{code}: {n}" for code, n in r.get("status", {}).items())
        print(f"{name:<18} {r.get('requests', r['n']):>6} {stats}  {status}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    predictor = Predictor.from_pretrained(args.model, args.dataset, args.checkpoint, device=args.device, progress=True)
    queries = draw_queries(predictor.kg, max(args.sequential, args.requests), args.k, args.seed)
    report = {"settings": {k: v for k, v in vars(args).items() if k != "json_out"}, "dataset": predictor.kg.name,
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
    try:
        report["server"] = {"url": url, "started": server is not None,
                            "health": wait_healthy(url, server, log, args.startup_timeout)}
        report["sequential"] = time_sequential(url, queries[:args.sequential], args.warmup, args.client_timeout)
        report["concurrent"] = time_concurrent(url, queries, args.clients, args.requests, args.duration,
                                               args.client_timeout)
    finally:
        if server is not None:
            stop_server(server)
    if log is not None:
        log.unlink()  # kept only when something failed
    report["errors_5xx"] = report["sequential"]["errors_5xx"] + report["concurrent"]["errors_5xx"]
    print_table(report)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
