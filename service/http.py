"""The HTTP edge (Litestar): parse, call core through the batcher, render. No model logic here.

* ``create_app(settings=None, engine=None)``: settings are read here (``ROPENLP_*``), never at import;
  the engine is loaded in the lifespan hook (or passed in, by tests and by ``ropenlp serve``), the
  batcher started and the model warmed up in the background — ``/ready`` answers 503 until then.
* One table, :data:`ERROR_STATUS`, maps every error class to its status. The exception handler
  and each route's OpenAPI ``responses`` are both built from it, so the docs cannot drift.
  Litestar's own errors (validation, malformed JSON, body too large, 404, 405) are translated into
  the same classes, so every error body is ``{"error", "error_type", "field"?, "limit"?}``.
* Every response carries ``x-total-time``; inference responses also ``x-tokenize-time``,
  ``x-queue-time`` and ``x-inference-time`` (milliseconds); all are exported as metrics.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

from litestar import Litestar, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.handlers import BaseRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.params import JSONBody
from litestar.plugins.pydantic import PydanticPlugin
from pydantic import BaseModel, ConfigDict, Field

import ropenlp
from models.spans import Decode
from service.batching import Batcher, Timings
from service.core import Engine, Job
from service.demo import demo_router
from service.errors import (
    BodyTooLarge,
    ClientClosedRequest,
    EmptyInput,
    InferenceError,
    InternalError,
    InvalidRequest,
    MalformedBody,
    MethodNotAllowed,
    NotFound,
    NotReady,
    OutOfRange,
    Overloaded,
    ServiceError,
    TaskUnavailable,
    TextTooLong,
    TooManyEntities,
    TooManyItems,
    Unauthorized,
)
from service.metrics import CONTENT_TYPE, Metrics
from service.settings import Settings

log = logging.getLogger(__name__)
access_log = logging.getLogger("ropenlp.access")
R = TypeVar("R")

# --------------------------------------------------------------------------------------------
# The error table
# --------------------------------------------------------------------------------------------

ERROR_STATUS: dict[type[ServiceError], int] = {
    EmptyInput: 400,
    MalformedBody: 400,
    Unauthorized: 401,
    NotFound: 404,
    MethodNotAllowed: 405,
    BodyTooLarge: 413,
    TooManyItems: 413,
    TextTooLong: 413,
    InvalidRequest: 422,
    OutOfRange: 422,
    TooManyEntities: 422,
    Overloaded: 429,
    ClientClosedRequest: 499,  # nginx's convention; only the access log ever sees it
    InferenceError: 500,
    InternalError: 500,
    TaskUnavailable: 501,
    NotReady: 503,
}
# what every inference route can answer besides 200
INFERENCE_ERRORS = (
    EmptyInput, MalformedBody, Unauthorized, BodyTooLarge, TooManyItems, TextTooLong, InvalidRequest,
    Overloaded, InferenceError, InternalError, TaskUnavailable, NotReady,
)  # fmt: skip


def status_of(err: ServiceError) -> int:
    for cls in type(err).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return 500


class ErrorBody(BaseModel):
    error: str = Field(description="what went wrong, for humans")
    error_type: str = Field(description="stable snake_case name of the error class")
    field: str | None = Field(None, description="the offending request field, e.g. texts[3]")
    limit: int | float | None = Field(None, description="the limit that was exceeded")


def error_responses(*classes: type[ServiceError]) -> dict[int, ResponseSpec]:
    """OpenAPI ``responses`` for a route, from :data:`ERROR_STATUS`."""
    by_status: dict[int, list[str]] = {}
    for cls in classes:
        doc = (cls.__doc__ or "").strip().splitlines()
        by_status.setdefault(ERROR_STATUS[cls], []).append(
            f"`{cls.error_type}`" + (f": {doc[0]}" if doc else "")
        )
    return {
        status: ResponseSpec(data_container=ErrorBody, generate_examples=False, description="; ".join(lines))
        for status, lines in sorted(by_status.items())
    }


def _field(key: str | None) -> str | None:
    """Litestar's ``texts.0.x`` -> ``texts[0].x``."""
    if not key:
        return None
    out = ""
    for part in key.split("."):
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


def to_service_error(exc: Exception, settings: Settings) -> ServiceError:
    """Any exception reaching the edge -> one of our error classes (unknown ones are logged)."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, RequestEntityTooLarge):
        n = settings.max_body_bytes
        return BodyTooLarge(f"request body exceeds {n} bytes", field="body", limit=n)
    if isinstance(exc, ValidationException):
        problems = exc.extra if isinstance(exc.extra, list) else []
        first = problems[0] if problems and isinstance(problems[0], dict) else {}
        field = _field(first.get("key"))
        if field in (None, "data"):
            return InvalidRequest(
                "the request body must be a JSON object with the documented fields", field="body"
            )
        return InvalidRequest(f"{field}: {first.get('message', 'invalid value')}", field=field)
    if isinstance(exc, NotFoundException):
        return NotFound("no such route (see /schema)")
    if isinstance(exc, MethodNotAllowedException):
        return MethodNotAllowed("method not allowed on this route (see /schema)")
    if isinstance(exc, UnicodeDecodeError):
        return MalformedBody("request body is not valid UTF-8", field="body")
    if isinstance(exc, HTTPException) and 400 <= exc.status_code < 500:
        return MalformedBody(f"malformed request: {exc.detail}", field="body")
    log.error("unhandled %s: %s", type(exc).__name__, exc, exc_info=exc)
    return InternalError()


def error_response(err: ServiceError) -> Response:
    headers = {}
    if err.retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(err.retry_after)))
    if isinstance(err, Unauthorized):
        headers["www-authenticate"] = 'Bearer realm="ropenlp"'
    return Response(err.to_dict(), status_code=status_of(err), headers=headers)


def _exception_handler(request: Request, exc: Exception) -> Response:
    return error_response(to_service_error(exc, request.app.state.service.settings))


# --------------------------------------------------------------------------------------------
# Request / response models
# --------------------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NerRequest(_Body):
    texts: list[str] = Field(description="texts to tag (long ones are windowed, never truncated)")
    threshold: float | None = Field(None, description="span score threshold; default: the bundle's")
    decode: Decode | None = Field(
        None,
        description="nested: every span above the threshold; flat: greedy non-overlapping spans "
        "(best score first, the rest dropped). Default: the bundle's (see /info)",
    )


class SimilarityRequest(_Body):
    pairs: list[Annotated[list[str], Field(min_length=2, max_length=2)]] | None = Field(
        None, description="[[a, b], ...]: one cosine score per pair"
    )
    query: str | None = Field(None, description="rank candidates against this text")
    candidates: list[str] | None = None
    top_k: int | None = Field(None, description="how many ranked candidates to return; default all")

    def form(self) -> str:
        """'pairs' or 'rank'; both forms at once, or neither, is an error naming the fields."""
        has_pairs = self.pairs is not None
        has_rank = self.query is not None or self.candidates is not None or self.top_k is not None
        if has_pairs == has_rank:
            which = "both" if has_pairs else "neither"
            raise InvalidRequest(
                f"give either 'pairs', or 'query' and 'candidates' (+ 'top_k'); got {which}",
                field="pairs|query,candidates",
            )
        if has_rank and (self.query is None or self.candidates is None):
            missing = "query" if self.query is None else "candidates"
            raise InvalidRequest(f"'{missing}' is required with 'query' / 'candidates'", field=missing)
        return "pairs" if has_pairs else "rank"


class EmbedRequest(_Body):
    texts: list[str]


class EntityOut(BaseModel):
    start: int = Field(description="character offset into the original text")
    end: int = Field(description="exclusive")
    label: str
    text: str
    score: float


class NerItem(BaseModel):
    entities: list[EntityOut] = Field(
        description="sorted by start then end; nested spans all listed unless decode is flat"
    )


class NerResponse(BaseModel):
    results: list[NerItem] = Field(description="one per input text, in input order")


class PairsResponse(BaseModel):
    scores: list[float]
    truncated: list[bool] = Field(description="per pair: a or b was cut to the model's max_length")


class RankedOut(BaseModel):
    index: int
    text: str
    score: float
    truncated: bool


class RankResponse(BaseModel):
    results: list[RankedOut] = Field(description="best first")
    query_truncated: bool


class EmbedResponse(BaseModel):
    vectors: list[list[float]] = Field(description="whitened, L2-normalised: cosine = dot")
    dim: int
    truncated: list[bool] = Field(description="per text: cut to the model's max_length tokens")


# --------------------------------------------------------------------------------------------
# The service object on app.state
# --------------------------------------------------------------------------------------------


class Service:
    """Settings, metrics, engine, batcher and readiness of one app."""

    def __init__(self, settings: Settings, engine: Engine | None) -> None:
        self.settings, self.engine = settings, engine
        self.metrics = Metrics()
        self.batcher: Batcher | None = None
        self.ready, self.error = False, None
        self.started = time.perf_counter()
        self.warm_up_ms: float | None = None
        self._warm: asyncio.Task | None = None

    async def start(self) -> None:
        s = self.settings
        if self.engine is None:
            self.engine = await asyncio.to_thread(Engine.from_settings, s)
        self.batcher = Batcher(
            self.engine.run_batch,
            batch_tokens=s.batch_tokens,
            max_wait_ms=s.max_wait_ms,
            max_queue=s.max_queue,
            retry_after_s=s.retry_after_s,
            observer=self.metrics,
        )
        await self.batcher.start()
        info = self.engine.info()
        precision = ",".join(f"{k}={v}" for k, v in info["precision"].items())
        self.metrics.info.labels(info["name"], info["provider"], precision, ropenlp.__version__).set(1)
        self._warm = asyncio.create_task(self._warm_up())

    async def _warm_up(self) -> None:
        try:
            seconds = await self.batcher.run_in_worker(self.engine.warm_up)
        except Exception as e:
            self.error = f"warm-up failed: {type(e).__name__}: {e}"
            log.error("%s", self.error, exc_info=e)
            return
        self.warm_up_ms = seconds * 1e3
        self.ready = True
        self.metrics.ready.set(1)
        log.info(
            "ready: bundle %s on %s, warm-up %.0f ms, %.0f ms after start",
            self.engine.manifest.name,
            self.engine.info()["provider"],
            self.warm_up_ms,
            (time.perf_counter() - self.started) * 1e3,
        )

    async def stop(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        if self._warm is not None:
            self._warm.cancel()
        if self.batcher is not None:
            await self.batcher.stop()

    def not_ready(self) -> NotReady:
        reason = self.error or "the model is loading / warming up"
        return NotReady(f"not ready: {reason}", retry_after=self.settings.retry_after_s)

    async def infer(self, request: Request, prepare: Callable[[Engine], Job[R]]) -> tuple[R, Timings]:
        """Run one request through the batcher; give up (and drop its queued work) if the client leaves."""
        if not self.ready:
            raise self.not_ready()
        engine = self.engine
        result, t = await _cancel_on_disconnect(request, self.batcher.execute(lambda: prepare(engine)))
        route = request.scope.get("path_template", request.url.path)
        self.metrics.observe_stages(
            route, tokenize_s=t.tokenize_s, queue_s=t.queue_s, inference_s=t.inference_s
        )
        return result, t


def _svc(connection: ASGIConnection) -> Service:
    return connection.app.state.service


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def _ok(body: dict[str, Any], t: Timings) -> Response:
    headers = {
        "x-tokenize-time": _ms(t.tokenize_s),
        "x-queue-time": _ms(t.queue_s),
        "x-inference-time": _ms(t.inference_s),
    }
    return Response(body, status_code=200, headers=headers)


async def _wait_disconnect(receive: Callable[[], Awaitable[dict]]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _cancel_on_disconnect(request: Request, work: Awaitable[R]) -> R:
    """Await ``work`` unless the client disconnects first (then cancel it: its queued rows are skipped)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_wait_disconnect(request.receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled():
        raise ClientClosedRequest("the client closed the connection; its work was dropped")
    return task.result()


def require_api_key(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Guard of the inference routes: ``Authorization: Bearer <key>`` when an API key is configured."""
    key = _svc(connection).settings.api_key
    if key is None:
        return
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), key.get_secret_value().encode()
    ):
        raise Unauthorized(
            "missing or invalid API key (send 'Authorization: Bearer <key>')", field="authorization"
        )


# --------------------------------------------------------------------------------------------
# Routes
# --------------------------------------------------------------------------------------------

_INFER = {"status_code": 200, "guards": [require_api_key], "responses": error_responses(*INFERENCE_ERRORS)}
_INFER_NER = {**_INFER, "responses": error_responses(*INFERENCE_ERRORS, OutOfRange, TooManyEntities)}
_INFER_SIM = {**_INFER, "responses": error_responses(*INFERENCE_ERRORS, OutOfRange)}


@post("/ner", **_INFER_NER, summary="Nested named entities")
async def ner(request: Request, data: JSONBody[NerRequest]) -> Response[NerResponse]:
    """Entities of every text: character offsets into the original text (end exclusive); nested spans
    all listed, or only non-overlapping ones with ``decode: "flat"``."""
    result, t = await _svc(request).infer(
        request, lambda e: e.prepare_ner(data.texts, data.threshold, data.decode)
    )
    body = {"results": [{"entities": [e.to_dict() for e in ents]} for ents in result.entities]}
    return _ok(body, t)


@post("/similarity", **_INFER_SIM, summary="Cosine similarity of pairs, or candidates ranked against a query")
async def similarity(
    request: Request, data: JSONBody[SimilarityRequest]
) -> Response[PairsResponse | RankResponse]:
    """Either ``pairs`` -> ``scores``, or ``query`` + ``candidates`` (+ ``top_k``) -> ranked ``results``."""
    if data.form() == "pairs":
        pairs, t = await _svc(request).infer(request, lambda e: e.prepare_pairs(data.pairs))
        return _ok({"scores": pairs.scores, "truncated": pairs.truncated}, t)
    ranked, t = await _svc(request).infer(
        request, lambda e: e.prepare_rank(data.query, data.candidates, data.top_k)
    )
    results = [
        {"index": r.index, "text": r.text, "score": r.score, "truncated": r.truncated} for r in ranked.results
    ]
    return _ok({"results": results, "query_truncated": ranked.query_truncated}, t)


@post("/embed", **_INFER, summary="Sentence vectors")
async def embed(request: Request, data: JSONBody[EmbedRequest]) -> Response[EmbedResponse]:
    """Whitened, L2-normalised sentence vectors (cosine = dot product)."""
    result, t = await _svc(request).infer(request, lambda e: e.prepare_embed(data.texts))
    body = {
        "vectors": result.vectors.tolist(),
        "dim": int(result.vectors.shape[1]),
        "truncated": result.truncated,
    }
    return _ok(body, t)


@get("/health", summary="Liveness: the process answers")
async def health() -> dict[str, str]:
    return {"status": "alive"}


@get("/ready", summary="Readiness: bundle loaded and warmed up", responses=error_responses(NotReady))
async def ready(request: Request) -> dict[str, Any]:
    svc = _svc(request)
    if not svc.ready:
        raise svc.not_ready()
    info = svc.engine.info()
    return {"status": "ready", "bundle": info["name"], "provider": info["provider"],
            "precision": info["precision"], "warm_up_ms": round(svc.warm_up_ms, 3)}  # fmt: skip


@get("/info", summary="Model, labels, limits, version", responses=error_responses(NotReady))
async def info(request: Request) -> dict[str, Any]:
    svc = _svc(request)
    if svc.engine is None:
        raise svc.not_ready()
    s = svc.settings
    limits = {"max_body_bytes": s.max_body_bytes, "max_queue": s.max_queue, "max_wait_ms": s.max_wait_ms}
    out = svc.engine.info()
    out["limits"] |= limits
    return out | {"version": ropenlp.__version__, "ready": svc.ready, "auth": s.api_key is not None}


@get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(request: Request) -> Response[bytes]:
    return Response(_svc(request).metrics.render(), media_type=CONTENT_TYPE)


# --------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------


class ServiceApp(Litestar):
    """Litestar plus one outer layer that sees every HTTP request, routed or not (404s included):
    ``x-total-time`` header, request metrics by route and status, one JSON access-log line."""

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[override]
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def timed_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [
                    *message.get("headers", ()),
                    (b"x-total-time", _ms(time.perf_counter() - t0).encode()),
                ]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await super().__call__(scope, receive, timed_send)
        finally:
            seconds = time.perf_counter() - t0
            route = scope.get("path_template") if "route_handler" in scope else "unmatched"
            self.state.service.metrics.observe_request(route, scope["method"], status, seconds)
            client = scope.get("client")
            access_log.info(
                "%s %s %d %.1fms", scope["method"], scope["path"], status, seconds * 1e3,
                extra={"method": scope["method"], "path": scope["path"], "route": route, "status": status,
                       "ms": round(seconds * 1e3, 3), "client": client[0] if client else None},
            )  # fmt: skip


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> Litestar:
    """The app. ``settings`` default to ``Settings.from_env()``; ``engine`` defaults to loading
    ``settings.bundle_dir`` in the lifespan hook."""
    settings = settings if settings is not None else Settings.from_env()
    service = Service(settings, engine)

    @asynccontextmanager
    async def lifespan(app: Litestar):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    return ServiceApp(
        route_handlers=[ner, similarity, embed, health, ready, info, metrics, demo_router()],
        lifespan=[lifespan],
        state=State({"service": service}),
        exception_handlers={Exception: _exception_handler},
        plugins=[PydanticPlugin(validate_strict=True)],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(title="ropenlp", version=ropenlp.__version__),
        logging_config=None,
    )
