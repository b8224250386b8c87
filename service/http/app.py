"""The app factory: ``create_app(settings=None, engine=None)``.

Settings are read here (``ROPENLP_*``), never at import; the engine is loaded in the lifespan hook (or
passed in, by tests and by ``ropenlp serve``), the batcher started and the model warmed up in the
background: ``/ready`` answers 503 until then. The OpenAPI schema documents every query body by its
contract under the limits these settings serve (``service.http.contract``) and, for ``/v1/embeddings``,
the served bundle (its manifest is read here; the ONNX sessions are not loaded). The :class:`~service.http.service.Service` reaches the
handlers by dependency injection (``Provide``). One outer layer (:class:`ServiceApp`) sees every
HTTP request, routed or not: ``x-total-time`` header, request metrics, one JSON access-log line.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.plugins.pydantic import PydanticPlugin

import ropenlp
from models.bundle import load_manifest
from service.core import Engine
from service.demo import demo_router
from service.http.contract import ContractSchemas, negotiate
from service.http.errors import ExceptionHandler
from service.http.openai import PREFIX, openai_error_response, openai_router
from service.http.routes import ApiKeyGuard, route_handlers
from service.http.service import Service
from service.jobs import Limits
from service.settings import Settings

access_log = logging.getLogger("ropenlp.access")


class ServiceApp(Litestar):
    """Litestar plus one outer layer that sees every HTTP request, routed or not (404s included):
    ``x-total-time`` header, request metrics by route and status, one JSON access-log line."""

    def __init__(self, service: Service, **kwargs) -> None:
        self.service = service
        super().__init__(**kwargs)

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
                    (b"x-total-time", f"{(time.perf_counter() - t0) * 1e3:.3f}".encode()),
                ]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await super().__call__(scope, receive, timed_send)
        finally:
            seconds = time.perf_counter() - t0
            route = scope.get("path_template") if "route_handler" in scope else "unmatched"
            self.service.metrics.observe_request(route, scope["method"], status, seconds)
            client = scope.get("client")
            access_log.info(
                "%s %s %d %.1fms", scope["method"], scope["path"], status, seconds * 1e3,
                extra={"method": scope["method"], "path": scope["path"], "route": route, "status": status,
                       "ms": round(seconds * 1e3, 3), "client": client[0] if client else None},
            )  # fmt: skip


class _Provider:
    """``Provide``'s callable: the app's one Service."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def __call__(self) -> Service:
        return self.service


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

    guard = ApiKeyGuard(settings.api_key)
    # the served bundle's manifest (a small JSON, no ONNX session): the /v1 contract depends on it
    manifest = load_manifest(settings.bundle_dir, verify_hashes=False) if engine is None else engine.manifest
    return ServiceApp(
        service,
        route_handlers=[*route_handlers(guard), openai_router(guard, manifest), demo_router()],
        dependencies={"service": Provide(_Provider(service), use_cache=True, sync_to_thread=False)},
        lifespan=[lifespan],
        # errors under /v1 in OpenAI's shape, routed or not (an unknown method there: 405)
        exception_handlers={
            Exception: ExceptionHandler(settings.max_body_bytes, shapes={PREFIX: openai_error_response})
        },
        before_request=negotiate,
        # the query bodies documented by their contract under the served limits (before pydantic's plugin)
        plugins=[ContractSchemas(Limits.of(settings)), PydanticPlugin(validate_strict=True)],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(title="ropenlp", version=ropenlp.__version__),
        logging_config=None,
    )
