"""HTTP service over a :class:`~kgdistill.inference.predictor.Predictor` (``kgdistill serve``).

``create_app(predictor)`` builds the FastAPI app (tests drive it with ``fastapi.testclient``):

- ``POST /predict/tails``  ``{"head": "dog", "relation": "hypernym", "k": 5}``
- ``POST /predict/heads``  ``{"relation": "hypernym", "tail": "animal", "k": 5}``
- ``POST /score``          ``{"head": ..., "relation": ..., "tail": ...}``
- ``GET /entities/search?prefix=do&limit=20``
- ``GET /health``; the OpenAPI spec at ``/openapi.json``, its UI at ``/docs``.

An entity is an id, a name, or ``{"name": ..., "description": ...}`` for an entity the model has never seen.
Unknown entities and relations answer 404, ambiguous names and invalid values 422 (with the candidate ids),
malformed JSON 422, a body over the size limit 413. The predictor and its index are loaded before the app is built;
no endpoint touches the file system.
"""
import json
import threading
from typing import Annotated, Literal, Union

from ..errors import KGDistillError
from .predictor import AmbiguousEntityError, Predictor, UnknownEntityError, UnknownRelationError

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


class ServeUnavailableError(KGDistillError):
    """The HTTP service needs fastapi and uvicorn."""


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
    status = 404 if isinstance(exc, (UnknownEntityError, UnknownRelationError)) else 422
    body = {"detail": str(exc)}
    if isinstance(exc, AmbiguousEntityError):
        body["candidates"] = exc.candidates[:100]
    return _json(status, body)


def create_app(predictor: Predictor, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> "FastAPI":
    """The FastAPI app serving ``predictor`` (already loaded, index included)."""
    _require_fastapi()
    from .. import __version__

    app = FastAPI(title="kgdistill", version=__version__,
                  description="Knowledge graph completion with a trained SimKGC / PMD bi-encoder: tail and head "
                              "prediction, triple scores. An entity is an id, a name, or {name, description} "
                              "for an unseen entity.")
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.state.predictor = predictor
    lock = threading.Lock()  # one model call at a time: the CPU is already used by torch's own threads
    errors = {404: {"model": ErrorOut, "description": "unknown entity or relation"},
              413: {"model": ErrorOut, "description": "request body too large"},
              422: {"description": "invalid request (validation error, ambiguous name)"}}

    @app.exception_handler(KGDistillError)
    async def _user_error(request: Request, exc: KGDistillError):
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _json(422, {"detail": jsonable_encoder(exc.errors())})

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):  # never leak a traceback
        return _json(500, {"detail": "internal error"})

    def _prediction(pred) -> dict:
        return pred.to_dict()

    @app.post("/predict/tails", response_model=PredictionOut, responses=errors, summary="(head, relation, ?)")
    def predict_tails(query: TailQuery):
        with lock:
            pred = predictor.predict_tails(_entity_arg(query.head), query.relation, query.k, query.filter_known)
        return _prediction(pred)

    @app.post("/predict/heads", response_model=PredictionOut, responses=errors, summary="(?, relation, tail)")
    def predict_heads(query: HeadQuery):
        with lock:
            pred = predictor.predict_heads(query.relation, _entity_arg(query.tail), query.k, query.filter_known)
        return _prediction(pred)

    @app.post("/score", response_model=ScoreOut, responses=errors, summary="cosine score of a triple")
    def score(query: ScoreQuery):
        with lock:
            head = predictor.resolve_entity(_entity_arg(query.head), "head")
            tail = predictor.resolve_entity(_entity_arg(query.tail), "tail")
            relation = predictor.resolve_relation(query.relation)
            value = predictor.score(_entity_arg(query.head), query.relation, _entity_arg(query.tail))

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
          max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
    """Run the app with uvicorn (blocking)."""
    _require_fastapi()
    try:
        import uvicorn
    except ImportError:
        raise ServeUnavailableError("kgdistill serve needs uvicorn (pip install uvicorn)") from None
    uvicorn.run(create_app(predictor, max_body_bytes), host=host, port=port, log_level="info")
