"""The service's uvicorn listeners: the guarded h11 protocol (:class:`GuardedH11Protocol`) and the probe process.

With ``serve(health_port=...)``, /health and /ready are also answered by a small process of its own
(:func:`probe_process`), as gunicorn's arbiter watches its workers' heartbeats: a listener in a thread of the serving
process waited for the GIL under load (probe p99 50-78 ms at 200 clients, BENCHMARKS.md §6c). The serving process
writes its event loop's heartbeat and its readiness into shared memory (:class:`Liveness`); the probe process reads
them. This module imports no torch and no model code: the spawned probe process imports only it.
"""
from __future__ import annotations

import asyncio
import ctypes
import functools
import json
import multiprocessing
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any, Callable, Iterator, Sequence

from ..errors import KGDistillError

try:
    import h11
    import uvicorn
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.responses import Response
    from starlette.routing import Route
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.server import ServerState
except ImportError:  # pragma: no cover - exercised only without the extra
    uvicorn = None

DEFAULT_HEADER_TIMEOUT = 10.0  # seconds to receive a request's line and headers
LOOP_STALL_TIMEOUT = 10.0  # seconds without a heartbeat after which the probe port says the loop is stuck
PROBE_START_TIMEOUT = 60.0  # seconds the probe process may take to start and listen
PARENT_POLL = 1.0  # seconds between two checks of the probe process that its parent still lives
NOT_READY = "not ready: starting or shutting down"
OVERLOADED = "too many connections and requests in flight (the service is overloaded); retry later"
REFUSAL_REASONS = ("concurrency", "header_timeout")  # requests refused before an app saw them


def _json_bytes(content) -> bytes:
    """Strict, ASCII-escaped JSON: no NaN for strict parsers, and a lone surrogate cannot break the response."""
    return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


async def _reject(send, status: int, detail: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """Answer from a middleware, closing the connection: the request's body may be left unread."""
    body = _json_bytes({"detail": detail})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body})


class Liveness:
    """The serving process's state that its probes report, in shared memory so that the probe process reads it.

    ``heartbeat``: ``time.monotonic()`` when the main event loop last ran its heartbeat (CLOCK_MONOTONIC is
    system-wide, so the probe process compares it with its own clock); ``ready``: the app's lifespan has started and
    not ended; ``stopping``: the main server has begun to shut down; ``probe_refusals``: the probe port's refusals by
    reason, which the serving process's /metrics shows. Each is written by one process (the counts by the probe
    process's event loop alone) and read by the other, a single aligned word each: no lock needed. Passed to the
    probe process when it is spawned."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._heartbeat = ctx.RawValue(ctypes.c_double, time.monotonic())
        self._flags = ctx.RawArray(ctypes.c_bool, 2)  # ready, stopping
        self._probe_refused = ctx.RawArray(ctypes.c_uint64, len(REFUSAL_REASONS))

    @property
    def heartbeat(self) -> float:
        return self._heartbeat.value

    @heartbeat.setter
    def heartbeat(self, value: float) -> None:
        self._heartbeat.value = value

    @property
    def ready(self) -> bool:
        return self._flags[0]

    @ready.setter
    def ready(self, value: bool) -> None:
        self._flags[0] = value

    @property
    def stopping(self) -> bool:
        return self._flags[1]

    @stopping.setter
    def stopping(self, value: bool) -> None:
        self._flags[1] = value

    @property
    def serving(self) -> bool:
        """What /ready answers (before the heartbeat's check on the probe port)."""
        return self.ready and not self.stopping

    def count_probe_refusal(self, reason: str) -> None:
        self._probe_refused[REFUSAL_REASONS.index(reason)] += 1

    @property
    def probe_refusals(self) -> dict[str, int]:
        return dict(zip(REFUSAL_REASONS, self._probe_refused))


def json_response(status: int, content) -> "Response":
    """A strict JSON answer (see :func:`_json_bytes`)."""
    return Response(_json_bytes(content), status, media_type="application/json")


def create_probe_app(liveness: Liveness, health: dict, allowed_hosts: Sequence[str]) -> "Starlette":
    """/health and /ready of the probe port, from ``liveness`` (the serving process's) and ``health`` (the main
    port's /health answer, which does not change while it serves); Host headers outside ``allowed_hosts``: 400.

    Answered from another process, /health must still mean that the service is alive: it is 503 once the main event
    loop has not stamped its heartbeat for LOOP_STALL_TIMEOUT seconds (a wedged loop). /ready is 503 then too, and
    unless ``liveness.serving``."""

    def stalled() -> "Response | None":
        seconds = time.monotonic() - liveness.heartbeat
        if seconds > LOOP_STALL_TIMEOUT:
            return json_response(503, {"detail": f"the service's event loop has not run for {seconds:.0f} s"})
        return None

    async def health_route(request):
        return stalled() or json_response(200, health)

    async def ready_route(request):
        if not liveness.serving:
            return json_response(503, {"detail": NOT_READY})
        return stalled() or json_response(200, {"status": "ready"})

    return Starlette(routes=[Route("/health", health_route), Route("/ready", ready_route)],
                     middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts),
                                            www_redirect=False)])


if uvicorn is not None:
    class GuardedH11Protocol(H11Protocol):
        """uvicorn's h11 protocol with what a service on a network needs and uvicorn lacks.

        - A deadline for the request head: a connection whose request line and headers are not all in within
          ``header_timeout`` seconds of its opening (or of the first byte of a later request on it) is answered 408
          and closed. uvicorn waits for ever: headers trickled a byte at a time would hold a connection, and a slot
          of the concurrency limit, for as long as the sender likes. (An idle keep-alive connection is uvicorn's:
          its keep-alive timeout closes it.)
        - The concurrency limit (``--limit-concurrency``) tested here, not by uvicorn: uvicorn answers its 503
          before the app, out of the metrics' sight; here each refusal is counted by ``count_refusal(reason)``
          (one of REFUSAL_REASONS) and answered in JSON like the app's errors.
        - ``log_requests=False``: no access log line (the probe listener's: a line per probe is noise).
        """

        def __init__(self, config: "uvicorn.Config", server_state: ServerState, app_state: dict[str, Any],
                     _loop: asyncio.AbstractEventLoop | None = None, *, header_timeout: float,
                     count_refusal: Callable[[str], None], log_requests: bool = True) -> None:
            super().__init__(config, server_state, app_state, _loop)
            self.header_timeout = header_timeout
            self.count_refusal = count_refusal
            self.access_log = self.access_log and log_requests
            self.concurrency_limit, self.limit_concurrency = self.limit_concurrency, None  # uvicorn's test is off
            self.admitted_app, self.app = self.app, self._admit
            self.head_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._watch_head()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head_deadline()
            super().connection_lost(exc)

        def _watch_head(self) -> None:
            """The deadline runs while a request head is awaited after a connection opens or once part of it is in,
            and stops when the whole head is in (h11 has left IDLE: the app has the request)."""
            if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
                self._stop_head_deadline()
            elif self.head_deadline is None:
                self.head_deadline = self.loop.call_later(self.header_timeout, self._head_timed_out)

        def _stop_head_deadline(self) -> None:
            if self.head_deadline is not None:
                self.head_deadline.cancel()
                self.head_deadline = None

        def _head_timed_out(self) -> None:
            """408 written as is (h11 has no request to answer) and the connection closed."""
            self.head_deadline = None
            if self.transport.is_closing():
                return
            self.count_refusal("header_timeout")
            body = _json_bytes({"detail": f"request head not received within {self.header_timeout:g} s"})
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
            self.transport.close()

        async def _admit(self, scope, receive, send) -> None:
            """uvicorn's test of the limit; ``tasks`` already holds this request's task, hence ``>``."""
            limit = self.concurrency_limit
            if limit is not None and (len(self.connections) >= limit or len(self.tasks) > limit):
                self.count_refusal("concurrency")
                await _reject(send, 503, OVERLOADED)
                return
            await self.admitted_app(scope, receive, send)


def uvicorn_config(app, host: str, port: int, count_refusal: Callable[[str], None], *,
                   header_timeout: float = DEFAULT_HEADER_TIMEOUT, log_requests: bool = True,
                   **options: Any) -> "uvicorn.Config":
    """uvicorn's settings for ``app`` on ``host:port`` with :class:`GuardedH11Protocol` (each refusal counted by
    ``count_refusal(reason)``); ``options``: the rest of ``uvicorn.Config``'s, ``limit_concurrency`` among them."""
    if not header_timeout > 0:
        raise ValueError(f"header_timeout: expected a positive number of seconds, got {header_timeout}")
    protocol = functools.partial(GuardedH11Protocol, header_timeout=header_timeout, count_refusal=count_refusal,
                                 log_requests=log_requests)
    return uvicorn.Config(app, host=host, port=port, http=protocol, **options)


def _run_probes(conn: Connection, liveness: Liveness, health: dict, allowed_hosts: list[str], host: str, port: int,
                options: dict[str, Any]) -> None:
    """The probe process: listens, reports the port (or why it could not) on ``conn``, then serves until ``conn``
    closes (the parent stops it, or died: even a SIGKILL closes it) or the parent is gone (a fork of it could hold
    ``conn`` open). Ctrl-C, sent to the whole process group, is the parent's to act on: the probes answer while it
    shuts down gracefully."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                    backlog=2048)
    except OSError as exc:
        conn.send(exc.strerror or str(exc))
        return
    server = uvicorn.Server(uvicorn_config(create_probe_app(liveness, health, allowed_hosts), host, port,
                                           liveness.count_probe_refusal,
                                           log_requests=False, lifespan="off", log_config=None,
                                           timeout_graceful_shutdown=1, **options))
    thread = threading.Thread(target=server.run, args=([sock],), name="kgdistill-probes")
    thread.start()  # not in the main thread: uvicorn takes no signal
    while not server.started:
        if not thread.is_alive():
            conn.send("the probe server stopped while starting")
            return
        time.sleep(0.01)
    conn.send(sock.getsockname()[1])
    while thread.is_alive() and not conn.poll(PARENT_POLL) and os.getppid() == parent:
        pass
    server.should_exit = True
    thread.join()


@contextmanager
def probe_process(liveness: Liveness, health: dict, allowed_hosts: Sequence[str], host: str, port: int,
                  **options: Any) -> Iterator[int]:
    """:func:`create_probe_app` on ``host:port`` (0: a free port) in a process of its own until the block ends;
    yields the port it listens on. Spawned, never forked: the serving process has torch's threads. ``options``:
    :func:`uvicorn_config`'s (header deadline, concurrency limit, keep-alive). A port it cannot listen on is a
    :class:`KGDistillError`."""
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    process = ctx.Process(target=_run_probes, name="kgdistill-probes", daemon=True,
                          args=(theirs, liveness, health, list(allowed_hosts), host, port, options))
    process.start()
    theirs.close()
    try:
        answer = ours.recv() if ours.poll(PROBE_START_TIMEOUT) else f"not started within {PROBE_START_TIMEOUT:g} s"
    except EOFError:
        answer = "the probe process exited while starting"
    try:
        if isinstance(answer, str):
            raise KGDistillError(f"health port {port}: could not listen on {host}: {answer}")
        yield answer
    finally:
        ours.close()  # the probe process stops
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join()
