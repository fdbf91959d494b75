"""HTTP service over a :class:`~kgdistill.inference.predictor.Predictor` (``kgdistill serve``).

``create_app(predictor)`` builds the FastAPI app (tests drive it with ``fastapi.testclient``):

- ``POST /predict/tails``  ``{"head": "dog", "relation": "hypernym", "k": 5}``
- ``POST /predict/heads``  ``{"relation": "hypernym", "tail": "animal", "k": 5}``
- ``POST /score``          ``{"head": ..., "relation": ..., "tail": ...}``
- ``GET /entities/search?prefix=do&limit=20``
- ``GET /health``; the OpenAPI spec at ``/openapi.json``, its UI at ``/docs``.

An entity is an id, a name, or ``{"name": ..., "description": ...}`` for an entity the model has never seen.
Unknown entities and relations answer 404, ambiguous names and invalid values 422 (with the candidate ids),
malformed JSON 422, a body over the size limit 413, a request not answered within the deadline 503. The predictor
and its index are loaded before the app is built; no endpoint touches the file system.

Prediction requests are resolved one by one (their errors are their own), then queued to a
:class:`~kgdistill.inference.batching.MicroBatcher`: requests that arrive while the model is busy are answered by one
batched query-encoder call. One model call runs at a time (``/score`` takes the same lock): torch already uses every
core.
"""
import asyncio
import json
import threading
from contextlib import asynccontextmanager
from typing import Annotated, Literal, Union

from ..errors import KGDistillError
from .batching import MicroBatcher
from .predictor import Predictor, ResolvedQuery
from .vocabulary import AmbiguousEntityError, UnknownEntityError, UnknownRelationError

try:
    from fastapi import FastAPI, Query, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import Response
    from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, StringConstraints, Tag
except ImportError:  # pragma: no cover - exercised only without the extra
    FastAPI = None

MAX_ID_CHARS = 200
MAX_NAME_CHARS = 200
MAX_DESCRIPTION_CHARS = 2000
MAX_RELATION_CHARS = 200
MAX_PREFIX_CHARS = 100
MAX_K = 1000
DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_REQUEST_TIMEOUT = 30.0  # seconds a request may wait for and use the model
DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_WAIT_MS = 2.0
DEFAULT_LIMIT_CONCURRENCY = 256  # connections and requests in flight; more are answered 503 by uvicorn
DEFAULT_KEEP_ALIVE = 5  # seconds an idle keep-alive connection is kept


class ServeUnavailableError(KGDistillError):
    """The HTTP service needs fastapi and uvicorn."""


class RequestTimeoutError(KGDistillError):
    """A request was not answered within the service's deadline (the model is overloaded)."""


def _require_fastapi() -> None:
    if FastAPI is None:
        raise ServeUnavailableError("the HTTP service needs fastapi and uvicorn "
                                    "(pip install fastapi uvicorn; or pip install 'kgdistill[serve]')")


def _utf8(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


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
        filtered: list[FilteredOut] = Field(description="known answers removed from among the results")
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

    class ErrorOut(BaseModel):
        detail: str
        candidates: list[str] | None = None


class BodySizeLimit:
    """ASGI middleware: answers 413 to a request body over ``max_bytes`` (declared or streamed)."""

    def __init__(self, app, max_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, send, status: int = 413, detail: str | None = None) -> None:
        body = json.dumps({"detail": detail or f"request body exceeds {self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await self._reject(send, 400, "invalid Content-Length header")
                return
            if size > self.max_bytes:
                await self._reject(send)
                return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._reject(send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _entity_arg(value):
    return value.model_dump() if isinstance(value, BaseModel) else value


def _json(status: int, content) -> "Response":
    """ASCII-escaped JSON: a lone surrogate echoed from the request cannot break the response."""
    return Response(json.dumps(content, ensure_ascii=True), status_code=status, media_type="application/json")


def _error(exc: Exception) -> "Response":
    if isinstance(exc, RequestTimeoutError):
        return _json(503, {"detail": str(exc)})
    status = 404 if isinstance(exc, (UnknownEntityError, UnknownRelationError)) else 422
    body = {"detail": str(exc)}
    if isinstance(exc, AmbiguousEntityError):
        body["candidates"] = exc.candidates[:100]
    return _json(status, body)


def create_app(predictor: Predictor, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               request_timeout: float = DEFAULT_REQUEST_TIMEOUT, max_batch: int = DEFAULT_MAX_BATCH,
               max_wait_ms: float = DEFAULT_MAX_WAIT_MS) -> "FastAPI":
    """The FastAPI app serving ``predictor`` (already loaded, index included).

    ``request_timeout``: seconds a request may wait for the model and use it before it is answered 503 (a queued
    one is then dropped, not computed); ``max_batch``, ``max_wait_ms``: see :class:`MicroBatcher`.
    """
    _require_fastapi()
    from .._version import __version__

    if request_timeout <= 0:
        raise ValueError(f"request_timeout: expected a positive number of seconds, got {request_timeout}")
    lock = threading.Lock()  # one model call at a time: the CPU is already used by torch's own threads

    def run_batch(queries: list[ResolvedQuery]):
        with lock:
            return predictor.predict_resolved(queries)

    batcher = MicroBatcher(run_batch, max_batch, max_wait_ms)

    @asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.to_thread(batcher.close)

    app = FastAPI(title="kgdistill", version=__version__, lifespan=lifespan,
                  description="Knowledge graph completion with a trained SimKGC / PMD bi-encoder: tail and head "
                              "prediction, triple scores. An entity is an id, a name, or {name, description} "
                              "for an unseen entity.")
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.state.predictor = predictor
    app.state.batcher = batcher
    timeout_detail = f"not answered within {request_timeout:g} s (the service is overloaded); retry later"
    errors = {404: {"model": ErrorOut, "description": "unknown entity or relation"},
              413: {"model": ErrorOut, "description": "request body too large"},
              422: {"description": "invalid request (validation error, ambiguous name)"},
              503: {"model": ErrorOut, "description": "not answered within the deadline, or too many requests"}}

    @app.exception_handler(KGDistillError)
    async def _user_error(request: Request, exc: KGDistillError):
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _json(422, {"detail": jsonable_encoder(exc.errors())})

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):  # never leak a traceback
        return _json(500, {"detail": "internal error"})

    async def _predict(query: ResolvedQuery) -> dict:
        """Queue a resolved query to the batcher; past the deadline its future is cancelled (dropped if queued)."""
        try:
            pred = await asyncio.wait_for(asyncio.wrap_future(batcher.submit(query)), request_timeout)
        except asyncio.TimeoutError:
            raise RequestTimeoutError(timeout_detail) from None
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
    def score(query: ScoreQuery):
        head = predictor.resolve_entity(_entity_arg(query.head), "head")
        tail = predictor.resolve_entity(_entity_arg(query.tail), "tail")
        relation = predictor.resolve_relation(query.relation)
        if not lock.acquire(timeout=request_timeout):
            raise RequestTimeoutError(timeout_detail)
        try:
            value = predictor.score(_entity_arg(query.head), query.relation, _entity_arg(query.tail))
        finally:
            lock.release()

        def describe(e):
            return {"id": e.id, "name": e.name} if e.id is not None else {"name": e.name, "text": e.text}

        return {"head": describe(head), "relation": predictor.texts.relation_text(relation), "tail": describe(tail),
                "score": value}

    @app.get("/entities/search", response_model=SearchOut, summary="entities whose id or name starts with prefix")
    def search(prefix: Annotated[_text(1, MAX_PREFIX_CHARS), Query(description="start of an id or name")],
               limit: Annotated[int, Query(ge=1, le=100)] = 20):
        return {"entities": predictor.search_entities(prefix, limit)}

    @app.get("/health", response_model=HealthOut)
    def health():
        return {"status": "ok", "dataset": predictor.kg.name, "entities": predictor.num_entities,
                "relations": predictor.kg.num_relations, "model_fingerprint": predictor.fingerprint,
                "index": predictor.index.faiss_kind or "exact"}

    return app


def serve(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000,
          max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
          max_batch: int = DEFAULT_MAX_BATCH, max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
          limit_concurrency: int = DEFAULT_LIMIT_CONCURRENCY, timeout_keep_alive: int = DEFAULT_KEEP_ALIVE) -> None:
    """Run the app with uvicorn (blocking); over ``limit_concurrency`` connections or requests uvicorn answers 503,
    so an overload costs refusals, not unbounded memory."""
    _require_fastapi()
    try:
        import uvicorn
    except ImportError:
        raise ServeUnavailableError("kgdistill serve needs uvicorn (pip install uvicorn)") from None
    uvicorn.run(create_app(predictor, max_body_bytes, request_timeout, max_batch, max_wait_ms), host=host, port=port,
                log_level="info", limit_concurrency=limit_concurrency, timeout_keep_alive=timeout_keep_alive)
