"""The routes: one ``POST /<operation>`` per registered operation (``service.tasks``), and the service's own.

Handlers receive the :class:`~service.http.service.Service` by dependency injection and the request
body as the operation's typed query; they return the operation's response model (``Operation.render``),
so the OpenAPI schema is what is serialised. Every inference response also carries
``x-tokenize-time``, ``x-queue-time`` and ``x-inference-time`` (milliseconds).
"""

from __future__ import annotations

import hmac
from typing import Any

import anyio.to_thread

from litestar import Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.handlers import BaseRouteHandler, HTTPRouteHandler
from litestar.params import JSONBody
from pydantic import SecretStr

import ropenlp
from service.batching import Timings
from service.errors import (
    EmptyInput, InvalidRequest, MalformedBody, NotAcceptable, NotReady, TextTooLong, TooManyItems, Unauthorized,
    Unhealthy,
)  # fmt: skip
from service.http.errors import INFERENCE_ERRORS, error_responses
from service.http.schemas import Health, Info, Ready
from service.http.service import Service
from service.metrics import CONTENT_TYPE
from service.tasks import OPERATIONS, Operation
from service.tokenize import TokenizeQuery, TokenizeResponse, tokenize


class ApiKeyGuard:
    """Guard of the inference routes: ``Authorization: Bearer <key>`` when an API key is configured."""

    def __init__(self, key: SecretStr | None) -> None:
        self.key = key

    def __call__(self, connection: ASGIConnection, _: BaseRouteHandler) -> None:
        if self.key is None:
            return
        scheme, _, token = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.key.get_secret_value().encode()
        ):
            raise Unauthorized(
                "missing or invalid API key (send 'Authorization: Bearer <key>')", field="authorization"
            )


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def timing_headers(t: Timings) -> dict[str, str]:
    return {"x-tokenize-time": _ms(t.tokenize_s), "x-queue-time": _ms(t.queue_s),
            "x-inference-time": _ms(t.inference_s)}


def inference_route(op: Operation, guard: ApiKeyGuard) -> HTTPRouteHandler:
    """``POST /<op.name>``: the body is ``op.query``, the answer ``op.response``."""

    async def handler(request: Request, data: Any, service: NamedDependency[Service]) -> Any:
        result, t = await service.infer(request, op.name, data)
        return Response(op.render(result), status_code=200, headers=timing_headers(t))

    # the typed signature Litestar reads (body model, response model), from the operation
    handler.__annotations__ = {
        "request": Request, "data": JSONBody[op.query], "service": NamedDependency[Service],
        "return": Response[op.response],
    }  # fmt: skip
    handler.__name__ = handler.__qualname__ = op.name
    handler.__doc__ = op.__doc__
    return post(
        f"/{op.name}", name=op.name, status_code=200, guards=[guard], summary=op.summary,
        responses=error_responses(*INFERENCE_ERRORS, *op.errors),
    )(handler)  # fmt: skip


def tokenize_route(guard: ApiKeyGuard) -> HTTPRouteHandler:
    """``POST /tokenize``: tokens, ids, offsets and NER windows of each text (no model run)."""

    async def tokenize_handler(data: JSONBody[TokenizeQuery], service: NamedDependency[Service]) -> TokenizeResponse:
        """What the model sees of each text: the normalised text, tokens, ids, character offsets into the
        original text, [UNK] count, the NER windows and the similarity truncation (``service.tokenize``)."""
        if service.engine is None:
            raise service.not_ready()
        return await anyio.to_thread.run_sync(tokenize, service.engine, data)

    return post(
        "/tokenize", name="tokenize", status_code=200, guards=[guard], summary="Tokens, offsets and windows",
        responses=error_responses(EmptyInput, MalformedBody, InvalidRequest, TooManyItems, TextTooLong,
                                  Unauthorized, NotReady),
    )(tokenize_handler)  # fmt: skip


@get("/health", summary="Liveness: the process answers and its inference worker makes progress",
     responses=error_responses(NotAcceptable, Unhealthy))  # fmt: skip
async def health(service: NamedDependency[Service]) -> Health:
    if (err := service.unhealthy()) is not None:
        raise err
    return Health(status="alive")


@get("/ready", summary="Readiness: bundle loaded, warmed up, worker making progress",
     responses=error_responses(NotAcceptable, NotReady))  # fmt: skip
async def ready(service: NamedDependency[Service]) -> Ready:
    if not service.ready or service.stalled():
        raise service.not_ready()
    info = service.engine.info()
    return Ready(status="ready", bundle=info["name"], provider=info["provider"], precision=info["precision"],
                 warm_up_ms=round(service.warm_up_ms, 3))  # fmt: skip


@get("/info", summary="Model, labels, limits, version", responses=error_responses(NotAcceptable, NotReady))
async def info(service: NamedDependency[Service]) -> Info:
    if service.engine is None:
        raise service.not_ready()
    s = service.settings
    out = service.engine.info()
    out["limits"] |= {"max_body_bytes": s.max_body_bytes, "max_queue": s.max_queue, "max_wait_ms": s.max_wait_ms}
    return Info(**out, version=ropenlp.__version__, ready=service.ready, auth=s.api_key is not None)


@get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(service: NamedDependency[Service]) -> Response[bytes]:
    return Response(service.metrics.render(), media_type=CONTENT_TYPE)


def route_handlers(guard: ApiKeyGuard) -> list[HTTPRouteHandler]:
    """Every registered operation's route, then the service's own."""
    return [*(inference_route(op, guard) for op in OPERATIONS.values()), tokenize_route(guard), health, ready, info,
            metrics]  # fmt: skip
