"""HTTP service over a :class:`~kgdistill.inference.predictor.Predictor` (``kgdistill serve``).

``create_app(predictor)`` builds the FastAPI app (tests drive it with ``fastapi.testclient``):

- ``POST /predict/tails``  ``{"head": "dog", "relation": "hypernym", "k": 5}``
- ``POST /predict/heads``  ``{"relation": "hypernym", "tail": "animal", "k": 5}``
- ``POST /score``          ``{"head": ..., "relation": ..., "tail": ...}``
- ``GET /entities/search?prefix=do&limit=20``
- ``GET /health`` (liveness), ``GET /ready`` (200 once serving, 503 before and after), ``GET /metrics``
  (Prometheus); the OpenAPI spec at ``/openapi.json``, its UI at ``/docs``.

``serve()`` can answer /health and /ready on a port of their own as well, from a process of its own that reads the
main loop's heartbeat and the readiness from shared memory (:mod:`~kgdistill.inference.listeners`): there a probe
waits neither for its turn among the busy connections of the main loop nor for the serving process's GIL.

An entity is an id, a name, or ``{"name": ..., "description": ...}`` for an entity the model has never seen.
Unknown entities and relations answer 404, ambiguous names and invalid values 422 (with the candidate ids; a
validation error names the field and the rule, never echoes the input), malformed JSON 422, a body over the size
limit 413, a body not received within the receive deadline 408, a request not answered within the deadline 503, a
non-finite score 500 (the model is broken). Under ``serve()``, a request head (line and headers) not received within
the header deadline gets 408 and its connection is closed, and a request past the concurrency limit 503
(:class:`~kgdistill.inference.listeners.GuardedH11Protocol`). With an API key every path but ``/health`` and
``/ready`` needs ``Authorization: Bearer KEY`` (else 401); a Host header outside the allowed hosts gets 400 (DNS
rebinding). Responses are strict JSON (no NaN). The predictor and its index are loaded before the app is built; no
endpoint touches the file system.

Prediction and score requests are resolved one by one (their errors are their own), then queued to a
:class:`~kgdistill.inference.batching.MicroBatcher`: requests that arrive while the model is busy are answered by one
batched query-encoder call. The batcher's one worker thread makes every predictor call, searches included (torch
already uses every core, and the predictor's lock would make them wait anyway), so no request holds a thread of the
server's pool while it waits, and every one has the same deadline.
"""
import asyncio
import functools
import gc
import hmac
import ipaddress
import logging
import math
import time
from contextlib import ExitStack, asynccontextmanager
from typing import Annotated, Any, Callable, Iterable, Literal, Union

from ..errors import KGDistillError
from .batching import MicroBatcher
from .listeners import (DEFAULT_HEADER_TIMEOUT, NOT_READY, REFUSAL_REASONS, Liveness, _json_bytes, _reject,
                        probe_process, uvicorn_config)
from .listeners import json_response as _json
from .predictor import Prediction, Predictor, ResolvedQuery
from .vocabulary import AmbiguousEntityError, UnknownEntityError, UnknownRelationError

try:
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from prometheus_client.core import CounterMetricFamily
    from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, StringConstraints, Tag
    from starlette.middleware.trustedhost import TrustedHostMiddleware
except ImportError:  # pragma: no cover - exercised only without the extra
    FastAPI = None
try:  # serve() only: the app itself runs without uvicorn (fastapi.testclient)
    import uvicorn
except ImportError:  # pragma: no cover - exercised only without the extra
    uvicorn = None

log = logging.getLogger("kgdistill")

MAX_ID_CHARS = 200
MAX_NAME_CHARS = 200
MAX_DESCRIPTION_CHARS = 2000
MAX_RELATION_CHARS = 200
MAX_PREFIX_CHARS = 100
MAX_K = 1000
DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_RECEIVE_TIMEOUT = 10.0  # seconds to receive a request body once its headers are in
DEFAULT_REQUEST_TIMEOUT = 30.0  # seconds a request may wait for and use the model
DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_WAIT_MS = 2.0
# Connections and requests in flight; more are answered 503 by uvicorn. Idle or trickling connections count too: at
# 256, 300 slow senders starved an ordinary client (93 % 503s); at 1024 it was served as if alone (BENCHMARKS.md §6c).
DEFAULT_LIMIT_CONCURRENCY = 1024
DEFAULT_KEEP_ALIVE = 5  # seconds an idle keep-alive connection is kept
DEFAULT_GRACEFUL_SHUTDOWN = 10  # seconds in-flight requests get to finish on shutdown
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
API_KEY_ENV = "KGDISTILL_API_KEY"
OPEN_PATHS = frozenset({"/health", "/ready"})  # answered without the API key: probes carry no credentials
HEARTBEAT_INTERVAL = 1.0  # seconds between two beats of the event loop's heartbeat
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServeUnavailableError(KGDistillError):
    """The HTTP service needs fastapi, uvicorn and prometheus-client."""


class RequestTimeoutError(KGDistillError):
    """A request was not answered within the service's deadline (the model is overloaded)."""


class NonFiniteScoreError(KGDistillError):
    """The model produced NaN or infinity: its weights or its index are broken."""


def _require_fastapi() -> None:
    if FastAPI is None:
        raise ServeUnavailableError("the HTTP service needs fastapi, uvicorn and prometheus-client "
                                    "(pip install 'kgdistill[serve]')")


def _utf8(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


def check_api_key(key: str) -> None:
    """An API key must survive an HTTP header unchanged: printable ASCII, no spaces."""
    if not key or not all("!" <= c <= "~" for c in key):
        raise KGDistillError("API key: expected printable ASCII characters without spaces")


def host_patterns(hosts: Iterable[str]) -> list[str]:
    """Host header patterns as TrustedHostMiddleware compares them (an IPv6 literal in brackets, no port)."""
    patterns = []
    for host in hosts:
        pattern = host.strip().lower()
        bad = not pattern or "*" in pattern[1:] or (pattern.startswith("*") and pattern != "*"
                                                     and not pattern.startswith("*."))
        if not bad and ":" in pattern:
            try:
                pattern = f"[{ipaddress.IPv6Address(pattern.strip('[]'))}]"
            except ValueError:
                bad = True  # a port, or not an address
        if bad:
            raise KGDistillError(f"allowed host {host!r}: expected a name or address without a port, "
                                 "'*.example.com' or '*'")
        patterns.append(pattern)
    return patterns


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (localhost or a loopback address)."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


if FastAPI is not None:
    def _text(min_length: int, max_length: int):
        return Annotated[str, StringConstraints(min_length=min_length, max_length=max_length), AfterValidator(_utf8)]

    EntityKey = Annotated[_text(1, MAX_ID_CHARS), Field(description="an entity id or name", examples=["dog"])]
    RelationKey = Annotated[_text(1, MAX_RELATION_CHARS), Field(description="a relation id or text",
                                                                 examples=["hypernym"])]
    K = Annotated[int, Field(ge=1, le=MAX_K, strict=True, description="number of answers")]

    class NewEntity(BaseModel):
        """An entity the model has never seen, encoded from its text."""

        model_config = ConfigDict(extra="forbid")
        name: _text(1, MAX_NAME_CHARS)
        description: _text(0, MAX_DESCRIPTION_CHARS) = ""

    def _entity_kind(value) -> str:
        return "new_entity" if isinstance(value, (dict, BaseModel)) else "id_or_name"

    EntityRef = Annotated[Union[Annotated[EntityKey, Tag("id_or_name")], Annotated[NewEntity, Tag("new_entity")]],
                          Discriminator(_entity_kind)]

    class TailQuery(BaseModel):
        model_config = ConfigDict(extra="forbid", json_schema_extra={
            "examples": [{"head": "dog", "relation": "hypernym", "k": 5}]})
        head: EntityRef
        relation: RelationKey
        k: K = 10
        filter_known: bool = Field(True, strict=True, description="drop answers known from train/valid/test")

    class HeadQuery(BaseModel):
        model_config = ConfigDict(extra="forbid", json_schema_extra={
            "examples": [{"relation": "hypernym", "tail": "animal", "k": 5}]})
        relation: RelationKey
        tail: EntityRef
        k: K = 10
        filter_known: bool = Field(True, strict=True, description="drop answers known from train/valid/test")

    class ScoreQuery(BaseModel):
        model_config = ConfigDict(extra="forbid")
        head: EntityRef
        relation: RelationKey
        tail: EntityRef

    class ResultOut(BaseModel):
        id: str
        name: str
        score: float
        rank: int

    class FilteredOut(BaseModel):
        id: str
        name: str
        score: float
        splits: list[str]

    class PredictionOut(BaseModel):
        direction: Literal["tail", "head"]
        entity: dict[str, str]
        relation: str
        relation_id: str
        results: list[ResultOut]
        filtered: list[FilteredOut] = Field(description="known answers removed from among the results: at most k, "
                                                        "the best")
        num_filtered: int = Field(description="all known answers removed from the ranking")

    class ScoreOut(BaseModel):
        head: dict[str, str]
        relation: str
        tail: dict[str, str]
        score: float

    class EntityOut(BaseModel):
        id: str
        name: str

    class SearchOut(BaseModel):
        entities: list[EntityOut]

    class HealthOut(BaseModel):
        status: Literal["ok"]
        dataset: str
        entities: int
        relations: int
        model_fingerprint: str
        index: str

    class ReadyOut(BaseModel):
        status: Literal["ready"]

    class ErrorOut(BaseModel):
        detail: str
        candidates: list[str] | None = None

    class StrictJSONResponse(JSONResponse):
        """Every JSON answer: strict (a NaN fails loudly instead of turning into null) and ASCII-escaped."""

        def render(self, content) -> bytes:
            return _json_bytes(content)


class BodyLimits:
    """ASGI middleware: reads the whole request body before the app sees it; 413 past ``max_bytes`` (declared or
    streamed), 408 when it is not in within ``receive_timeout`` seconds (uvicorn has no such deadline: slow senders
    would hold their connections, and the concurrency limit, for ever)."""

    def __init__(self, app, max_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 receive_timeout: float = DEFAULT_RECEIVE_TIMEOUT):
        self.app = app
        self.max_bytes = max_bytes
        self.receive_timeout = receive_timeout
        self.too_large = f"request body exceeds {max_bytes} bytes"

    async def _read(self, receive) -> bytes | None:
        """The body (only its start once that passes ``max_bytes``); None when the client left."""
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if len(body) > self.max_bytes or not message.get("more_body", False):
                return bytes(body)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _reject(send, 400, "invalid Content-Length header")
                return
            if size > self.max_bytes:
                await _reject(send, 413, self.too_large)
                return
        try:
            body = await asyncio.wait_for(self._read(receive), self.receive_timeout)
        except asyncio.TimeoutError:
            await _reject(send, 408, f"request body not received within {self.receive_timeout:g} s")
            return
        if body is None:
            return
        if len(body) > self.max_bytes:
            await _reject(send, 413, self.too_large)
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class ApiKeyAuth:
    """ASGI middleware: 401 unless ``Authorization: Bearer KEY`` (compared in constant time); ``open_paths`` need
    none. It runs before the body is read: an unauthenticated client costs no buffering."""

    def __init__(self, app, key: str, open_paths: frozenset[str] = OPEN_PATHS):
        self.app = app
        self.key = key.encode()
        self.open_paths = open_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in self.open_paths:
            scheme, _, token = dict(scope.get("headers") or []).get(b"authorization", b"").partition(b" ")
            if not (scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)):
                await _reject(send, 401, "missing or wrong API key (Authorization: Bearer KEY)",
                              [(b"www-authenticate", b"Bearer")])
                return
        await self.app(scope, receive, send)


class ProbeRefusals:
    """A Prometheus collector of the probe port's refusals, read from the shared memory the probe process counts
    them in (that process has no registry of its own to scrape)."""

    def __init__(self, liveness: Liveness):
        self.liveness = liveness

    def collect(self):
        family = CounterMetricFamily("kgdistill_probe_refused", "requests to the probe port (--health-port) refused "
                                     "before its app saw them, by reason", labels=["reason"])
        for reason, count in self.liveness.probe_refusals.items():
            family.add_metric([reason], count)
        yield family


class Metrics:
    """The app's Prometheus metrics, in a registry of its own (two apps in one process keep their own counts)."""

    def __init__(self, batcher: MicroBatcher, liveness: Liveness):
        self.registry = CollectorRegistry()
        self.requests = Counter("kgdistill_http_requests", "HTTP requests answered, by path and status",
                                ["path", "status"], registry=self.registry)
        self.latency = Histogram("kgdistill_http_request_seconds", "seconds to answer an HTTP request, by path",
                                 ["path"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("kgdistill_batcher_queue_depth", "requests queued for the model",
                                 registry=self.registry)
        self.queue_depth.set_function(batcher.pending)
        self.batch_size = Histogram("kgdistill_batch_size", "requests taken together by the model's worker",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.refused = Counter("kgdistill_http_refused", "requests refused before the app saw them: past the "
                               "concurrency limit (503), request head not received in time (408)", ["reason"],
                               registry=self.registry)
        for reason in REFUSAL_REASONS:  # every series from the start, so that a rate() sees the first refusal
            self.refused.labels(reason)
        self.registry.register(ProbeRefusals(liveness))

    def count_refusal(self, reason: str) -> None:
        self.refused.labels(reason).inc()


class RequestMetrics:
    """ASGI middleware, outermost: counts and times every answer, refusals of the other middlewares included.

    Paths outside ``paths`` count as 'other' (the label set stays bounded); an exception that escapes counts as 500
    (the error handler outside answers it), a client that left before any answer as 499."""

    def __init__(self, app, metrics: Metrics, paths: frozenset[str]):
        self.app = app
        self.metrics = metrics
        self.paths = paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in self.paths else "other"
        status = "499"
        start = time.perf_counter()

        async def send_counted(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        except Exception:
            status = "500"
            raise
        finally:
            self.metrics.requests.labels(path, status).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)


def _entity_arg(value):
    return value.model_dump() if isinstance(value, BaseModel) else value


def _error(exc: KGDistillError) -> "Response":
    status = next((code for kind, code in ((RequestTimeoutError, 503), (NonFiniteScoreError, 500),
                                           ((UnknownEntityError, UnknownRelationError), 404))
                   if isinstance(exc, kind)), 422)
    body = {"detail": str(exc)}
    if isinstance(exc, AmbiguousEntityError):
        body["candidates"] = exc.candidates[:100]
    return _json(status, body)


def _check_finite(scores: Iterable[float]) -> None:
    if not all(math.isfinite(x) for x in scores):
        raise NonFiniteScoreError("the model produced a non-finite score (NaN or infinity): its weights or its "
                                  "entity index are broken")


def health_info(predictor: Predictor) -> dict:
    """/health's answer: what is served (the same on the main port and the probe port)."""
    return {"status": "ok", "dataset": predictor.kg.name, "entities": predictor.num_entities,
            "relations": predictor.kg.num_relations, "model_fingerprint": predictor.fingerprint,
            "index": predictor.index.faiss_kind or "exact"}


def create_app(predictor: Predictor, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               request_timeout: float = DEFAULT_REQUEST_TIMEOUT, max_batch: int = DEFAULT_MAX_BATCH,
               max_wait_ms: float = DEFAULT_MAX_WAIT_MS, receive_timeout: float = DEFAULT_RECEIVE_TIMEOUT,
               api_key: str | None = None, allowed_hosts: Iterable[str] = LOCAL_HOSTS) -> "FastAPI":
    """The FastAPI app serving ``predictor`` (already loaded, index included).

    ``request_timeout``: seconds a request may wait for the model and use it before it is answered 503 (a queued
    one is then dropped, not computed); ``max_batch``, ``max_wait_ms``: see :class:`MicroBatcher`;
    ``receive_timeout``: seconds to receive a body (else 408); ``api_key``: required as ``Authorization: Bearer``
    on every path but /health and /ready; ``allowed_hosts``: accepted Host headers (``'*'``: any).
    """
    _require_fastapi()
    from .._version import __version__

    for name, value in (("request_timeout", request_timeout), ("receive_timeout", receive_timeout)):
        if not value > 0:
            raise ValueError(f"{name}: expected a positive number of seconds, got {value}")
    if api_key is not None:
        check_api_key(api_key)
    hosts = host_patterns(allowed_hosts)

    def run_batch(items: list) -> list:
        """One query-encoder call for the batch's predictions; any other item (a score, a search) is a call of its
        own, queued like them: every predictor call is made by the batcher's worker, under the same deadline."""
        metrics.batch_size.observe(len(items))
        queries = [x for x in items if isinstance(x, ResolvedQuery)]
        predictions = iter(predictor.predict_resolved(queries) if queries else [])
        return [next(predictions) if isinstance(x, ResolvedQuery) else x() for x in items]

    batcher = MicroBatcher(run_batch, max_batch, max_wait_ms)
    liveness = Liveness()
    metrics = Metrics(batcher, liveness)

    async def heartbeat() -> None:
        """Stamps ``liveness.heartbeat`` while the event loop runs: the probe process's sign of a loop not stuck."""
        while True:
            liveness.heartbeat = time.monotonic()
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    @asynccontextmanager
    async def lifespan(app):
        beating = asyncio.create_task(heartbeat())
        liveness.ready = True
        yield
        liveness.ready = False
        beating.cancel()
        await asyncio.wait([beating])
        await asyncio.to_thread(batcher.close)

    app = FastAPI(title="kgdistill", version=__version__, lifespan=lifespan, default_response_class=StrictJSONResponse,
                  description="Knowledge graph completion with a trained SimKGC / PMD bi-encoder: tail and head "
                              "prediction, triple scores. An entity is an id, a name, or {name, description} "
                              "for an unseen entity." + (" Every path but /health and /ready needs "
                                                         "'Authorization: Bearer KEY'." if api_key else ""))
    app.state.predictor = predictor
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.liveness = liveness
    app.state.allowed_hosts = hosts
    timeout_detail = f"not answered within {request_timeout:g} s (the service is overloaded); retry later"
    errors = {404: {"model": ErrorOut, "description": "unknown entity or relation"},
              408: {"model": ErrorOut, "description": "request head or body not received within its deadline"},
              413: {"model": ErrorOut, "description": "request body too large"},
              422: {"description": "invalid request (validation error, ambiguous name)"},
              500: {"model": ErrorOut, "description": "the model produced a non-finite score"},
              503: {"model": ErrorOut, "description": "not answered within the deadline, or too many requests"}}
    if api_key:
        errors[401] = {"model": ErrorOut, "description": "missing or wrong API key"}

    @app.exception_handler(KGDistillError)
    async def _user_error(request: Request, exc: KGDistillError):
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):  # the rule broken, never the input
        return _json(422, {"detail": [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                                      for e in exc.errors()]})

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):  # never leak a traceback
        log.error("internal error answering %s", request.url.path, exc_info=exc)
        return _json(500, {"detail": "internal error"})

    async def _run(item: ResolvedQuery | Callable[[], Any]):
        """Queue an item to the batcher; past the deadline its future is cancelled (dropped if queued)."""
        try:
            return await asyncio.wait_for(asyncio.wrap_future(batcher.submit(item)), request_timeout)
        except asyncio.TimeoutError:
            raise RequestTimeoutError(timeout_detail) from None

    async def _predict(query: ResolvedQuery) -> dict:
        pred: Prediction = await _run(query)
        _check_finite(r.score for r in pred.results + pred.filtered)
        return pred.to_dict()

    @app.post("/predict/tails", response_model=PredictionOut, responses=errors, summary="(head, relation, ?)")
    async def predict_tails(query: TailQuery):
        return await _predict(predictor.resolve_query(_entity_arg(query.head), query.relation, "tail", query.k,
                                                      query.filter_known))

    @app.post("/predict/heads", response_model=PredictionOut, responses=errors, summary="(?, relation, tail)")
    async def predict_heads(query: HeadQuery):
        return await _predict(predictor.resolve_query(_entity_arg(query.tail), query.relation, "head", query.k,
                                                      query.filter_known))

    @app.post("/score", response_model=ScoreOut, responses=errors, summary="cosine score of a triple")
    async def score(query: ScoreQuery):
        head_arg, tail_arg = _entity_arg(query.head), _entity_arg(query.tail)
        head = predictor.resolve_entity(head_arg, "head")
        tail = predictor.resolve_entity(tail_arg, "tail")
        relation = predictor.resolve_relation(query.relation)
        value = await _run(functools.partial(predictor.score, head_arg, query.relation, tail_arg))
        _check_finite([value])

        def describe(e):
            return {"id": e.id, "name": e.name} if e.id is not None else {"name": e.name, "text": e.text}

        return {"head": describe(head), "relation": predictor.texts.relation_text(relation), "tail": describe(tail),
                "score": value}

    @app.get("/entities/search", response_model=SearchOut, responses={503: errors[503]},
             summary="entities whose id or name starts with prefix")
    async def search(prefix: Annotated[_text(1, MAX_PREFIX_CHARS), Query(description="start of an id or name")],
                     limit: Annotated[int, Query(ge=1, le=100)] = 20):
        return {"entities": await _run(functools.partial(predictor.search_entities, prefix, limit))}

    @app.get("/health", response_model=HealthOut, summary="liveness: the process answers")
    async def health():  # on the event loop: no thread of the pool to wait for
        return health_info(predictor)

    @app.get("/ready", response_model=ReadyOut, summary="readiness: model and index loaded, the service started",
             responses={503: {"model": ErrorOut, "description": "starting or shutting down"}})
    async def ready():
        if not liveness.serving:
            return _json(503, {"detail": NOT_READY})
        return {"status": "ready"}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # the last added runs first: metrics count every answer, hosts and keys are checked before a body is read
    app.add_middleware(BodyLimits, max_bytes=max_body_bytes, receive_timeout=receive_timeout)
    if api_key:
        app.add_middleware(ApiKeyAuth, key=api_key)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False)
    app.add_middleware(RequestMetrics, metrics=metrics, paths=frozenset(r.path for r in app.routes))
    return app


if uvicorn is not None:
    class _Server(uvicorn.Server):
        """uvicorn's server that marks ``liveness`` stopping once it decides to exit, before its graceful wait: the
        probe port's /ready answers 503 while in-flight requests finish."""

        def __init__(self, config: "uvicorn.Config", liveness: Liveness) -> None:
            super().__init__(config)
            self.liveness = liveness

        async def on_tick(self, counter: int) -> bool:
            exiting = await super().on_tick(counter)
            self.liveness.stopping = exiting
            return exiting


def serve(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000, *,
          allowed_hosts: Iterable[str] = (), api_key: str | None = None,
          limit_concurrency: int = DEFAULT_LIMIT_CONCURRENCY, timeout_keep_alive: int = DEFAULT_KEEP_ALIVE,
          graceful_shutdown: int = DEFAULT_GRACEFUL_SHUTDOWN, header_timeout: float = DEFAULT_HEADER_TIMEOUT,
          health_port: int | None = None, **app_args) -> None:
    """Run the app with uvicorn (blocking); over ``limit_concurrency`` connections or requests it answers 503, so an
    overload costs refusals, not unbounded memory; a request head not in within ``header_timeout`` seconds gets 408;
    on shutdown in-flight requests get ``graceful_shutdown`` seconds. With ``health_port``, /health and /ready are
    answered on that port too, by :func:`~kgdistill.inference.listeners.probe_process` (a process of its own: their
    answers there stay fast when the main loop is busy; it is spawned, so a script that calls ``serve`` with it
    needs the ``if __name__ == "__main__":`` guard). The Host headers accepted are the local names, ``host`` and
    ``allowed_hosts``; ``app_args``: the rest of :func:`create_app`'s options."""
    _require_fastapi()
    if uvicorn is None:
        raise ServeUnavailableError("kgdistill serve needs uvicorn (pip install uvicorn)")
    if not api_key and not is_loopback(host):
        log.warning("kgdistill serve: listening on %s without an API key: anyone who reaches the port can use the "
                    "model (set %s or --api-key)", host, API_KEY_ENV)
    app = create_app(predictor, api_key=api_key, allowed_hosts=[*LOCAL_HOSTS, host, *allowed_hosts], **app_args)
    # The model's, the index's and the app's objects live as long as the process (about 440,000 for WN18RR): out of
    # every later collection, which would otherwise scan them all, holding the GIL for about 0.3 s and stalling every
    # request with it (BENCHMARKS.md §6c).
    gc.collect()
    gc.freeze()
    listener = {"header_timeout": header_timeout, "limit_concurrency": limit_concurrency,
                "timeout_keep_alive": timeout_keep_alive}
    liveness = app.state.liveness
    server = _Server(uvicorn_config(app, host, port, app.state.metrics.count_refusal, log_level="info",
                                    timeout_graceful_shutdown=graceful_shutdown, **listener), liveness)
    with ExitStack() as stack:
        if health_port is not None:
            stack.enter_context(probe_process(liveness, health_info(predictor), app.state.allowed_hosts, host,
                                              health_port, **listener))
        server.run()
