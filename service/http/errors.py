"""The error table of the HTTP edge: every :mod:`service.errors` class -> its status, in one place.

The exception handler and each route's OpenAPI ``responses`` are both built from :data:`ERROR_STATUS`,
so the docs cannot drift. Litestar's own errors (validation, malformed JSON, body too large, 404,
405) are translated into the same classes, so every error body is
``{"error", "error_type", "field"?, "limit"?}`` (:class:`~service.http.schemas.ErrorBody`), except
under a path prefix that renders its own shape (``/v1``: OpenAI's, :mod:`service.http.openai`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping

from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.openapi import ResponseSpec
from pydantic import BaseModel

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
    NotAcceptable,
    NotReady,
    OutOfRange,
    Overloaded,
    ServiceError,
    TaskUnavailable,
    TextTooLong,
    TooManyEntities,
    TooManyItems,
    Unauthorized,
    Unhealthy,
    UnsupportedMediaType,
)
from service.http.schemas import ErrorBody

log = logging.getLogger(__name__)

ERROR_STATUS: dict[type[ServiceError], int] = {
    EmptyInput: 400,
    MalformedBody: 400,
    Unauthorized: 401,
    NotFound: 404,
    MethodNotAllowed: 405,
    NotAcceptable: 406,
    BodyTooLarge: 413,
    TooManyItems: 413,
    TextTooLong: 413,
    UnsupportedMediaType: 415,
    InvalidRequest: 422,
    OutOfRange: 422,
    TooManyEntities: 422,
    Overloaded: 429,
    ClientClosedRequest: 499,  # nginx's convention; only the access log ever sees it
    InferenceError: 500,
    InternalError: 500,
    TaskUnavailable: 501,
    NotReady: 503,
    Unhealthy: 503,
}
# what every inference route can answer besides 200 (an operation adds its own: Operation.errors)
INFERENCE_ERRORS = (
    EmptyInput, MalformedBody, Unauthorized, NotAcceptable, BodyTooLarge, TooManyItems, TextTooLong,
    UnsupportedMediaType, InvalidRequest, Overloaded, InferenceError, InternalError, TaskUnavailable, NotReady,
)  # fmt: skip


def status_of(err: ServiceError) -> int:
    for cls in type(err).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return 500


def error_responses(
    *classes: type[ServiceError], body: type[BaseModel] = ErrorBody, statuses: Mapping[int, int] | None = None
) -> dict[int, ResponseSpec]:
    """OpenAPI ``responses`` for a route, from :data:`ERROR_STATUS` (``body``: the error body's model;
    ``statuses``: a status answered as another, as the OpenAI routes answer 422 with 400)."""
    statuses = statuses or {}
    by_status: dict[int, list[str]] = {}
    for cls in dict.fromkeys(classes):
        doc = (cls.__doc__ or "").strip().splitlines()
        status = statuses.get(ERROR_STATUS[cls], ERROR_STATUS[cls])
        by_status.setdefault(status, []).append(f"`{cls.error_type}`" + (f": {doc[0]}" if doc else ""))
    return {
        status: ResponseSpec(data_container=body, generate_examples=False, description="; ".join(lines))
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


def to_service_error(exc: Exception, *, max_body_bytes: int) -> ServiceError:
    """Any exception reaching the edge -> one of our error classes (unknown ones are logged)."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, RequestEntityTooLarge):
        return BodyTooLarge(f"request body exceeds {max_body_bytes} bytes", field="body", limit=max_body_bytes)
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
        allow = (exc.headers or {}).get("allow")
        return MethodNotAllowed(f"method not allowed on this route (allowed: {allow or 'see /schema'})", allow=allow)
    if isinstance(exc, UnicodeDecodeError):
        return MalformedBody("request body is not valid UTF-8", field="body")
    if isinstance(exc, HTTPException) and 400 <= exc.status_code < 500:
        return MalformedBody(f"malformed request: {exc.detail}", field="body")
    log.error("unhandled %s: %s", type(exc).__name__, exc, exc_info=exc)
    return InternalError()


def error_headers(err: ServiceError) -> dict[str, str]:
    """The headers an error answer carries, whatever the body's shape."""
    headers = {}
    if err.retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(err.retry_after)))
    if isinstance(err, Unauthorized):
        headers["www-authenticate"] = 'Bearer realm="ropenlp"'
    if isinstance(err, MethodNotAllowed) and err.allow:
        headers["allow"] = err.allow  # RFC 9110: a 405 lists the methods the resource offers
    return headers


def error_response(err: ServiceError) -> Response[ErrorBody]:
    return Response(err.to_dict(), status_code=status_of(err), headers=error_headers(err))


class ExceptionHandler:
    """The app's one exception handler: any exception -> our error class -> its status and body.

    ``shapes``: path prefix -> how errors under it are rendered (``/v1``: OpenAI's shape). It applies
    to every request under the prefix, routed or not (an unknown path or method there too)."""

    def __init__(
        self, max_body_bytes: int, shapes: Mapping[str, Callable[[ServiceError], Response]] | None = None
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.shapes = dict(shapes or {})

    def __call__(self, request: Request, exc: Exception) -> Response:
        err = to_service_error(exc, max_body_bytes=self.max_body_bytes)
        path = request.scope["path"]
        for prefix, render in self.shapes.items():
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return render(err)
        return error_response(err)
