"""The error table of the HTTP edge: every :mod:`service.errors` class -> its status, in one place.

The exception handler and each route's OpenAPI ``responses`` are both built from :data:`ERROR_STATUS`,
so the docs cannot drift. Litestar's own errors (validation, malformed JSON, body too large, 404,
405) are translated into the same classes, so every error body is
``{"error", "error_type", "field"?, "limit"?}`` (:class:`~service.http.schemas.ErrorBody`).
"""

from __future__ import annotations

import logging
import math

from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.openapi import ResponseSpec

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


def error_responses(*classes: type[ServiceError]) -> dict[int, ResponseSpec]:
    """OpenAPI ``responses`` for a route, from :data:`ERROR_STATUS`."""
    by_status: dict[int, list[str]] = {}
    for cls in dict.fromkeys(classes):
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


def error_response(err: ServiceError) -> Response[ErrorBody]:
    headers = {}
    if err.retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(err.retry_after)))
    if isinstance(err, Unauthorized):
        headers["www-authenticate"] = 'Bearer realm="ropenlp"'
    if isinstance(err, MethodNotAllowed) and err.allow:
        headers["allow"] = err.allow  # RFC 9110: a 405 lists the methods the resource offers
    return Response(err.to_dict(), status_code=status_of(err), headers=headers)


class ExceptionHandler:
    """The app's one exception handler: any exception -> our error class -> its status and body."""

    def __init__(self, max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes

    def __call__(self, request: Request, exc: Exception) -> Response[ErrorBody]:
        return error_response(to_service_error(exc, max_body_bytes=self.max_body_bytes))
