"""One error class per failure the service reports (no HTTP here: the status table is in ``service.http.errors``).

Every error carries a human message, a stable ``error_type`` (snake_case, for clients to switch on),
and where it applies the offending ``field`` (``texts[3]``, ``threshold``) and the ``limit`` that was
exceeded. Core raises them; the HTTP edge and the batch CLI render them.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: ``str(err)`` is the message shown to the client."""

    error_type = "service_error"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        limit: float | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.limit = limit
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, object]:
        body: dict[str, object] = {"error": self.message, "error_type": self.error_type}
        if self.field is not None:
            body["field"] = self.field
        if self.limit is not None:
            body["limit"] = self.limit
        return body


# -- the request ------------------------------------------------------------------------------


class EmptyInput(ServiceError):
    """A list that must hold at least one item is empty."""

    error_type = "empty_input"


class MalformedBody(ServiceError):
    """The body is not JSON, not UTF-8, or not readable at all."""

    error_type = "malformed_body"


class InvalidRequest(ServiceError):
    """Well-formed JSON of the wrong shape: wrong types, nulls, missing or unknown fields, bad text."""

    error_type = "invalid_request"


class OutOfRange(ServiceError):
    """A number outside its allowed range (``threshold``, ``top_k``)."""

    error_type = "out_of_range"


class TooManyItems(ServiceError):
    """More texts / pairs / candidates in one request than ``max_items``."""

    error_type = "too_many_items"


class TextTooLong(ServiceError):
    """A text longer than ``max_chars`` characters."""

    error_type = "text_too_long"


class TooManyEntities(ServiceError):
    """More entities than ``max_entities`` in one NER answer (a threshold too low for these texts)."""

    error_type = "too_many_entities"


class BodyTooLarge(ServiceError):
    """A request body larger than ``max_body_bytes``."""

    error_type = "body_too_large"


class Unauthorized(ServiceError):
    """Missing or wrong API key."""

    error_type = "unauthorized"


class NotFound(ServiceError):
    error_type = "not_found"


class MethodNotAllowed(ServiceError):
    """A method the route does not offer; ``allow`` lists the ones it does (the ``Allow`` header)."""

    error_type = "method_not_allowed"

    def __init__(self, message: str, *, allow: str | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.allow = allow


class UnsupportedMediaType(ServiceError):
    """A request body that is not JSON (``Content-Type`` other than ``application/json`` or ``*/*+json``)."""

    error_type = "unsupported_media_type"


class NotAcceptable(ServiceError):
    """An ``Accept`` header that admits no media type the route can answer in (JSON)."""

    error_type = "not_acceptable"


class TaskUnavailable(ServiceError):
    """The loaded bundle has no graph for this task (e.g. /ner on a similarity-only bundle)."""

    error_type = "task_unavailable"


# -- the server -------------------------------------------------------------------------------


class NotReady(ServiceError):
    """The bundle is not loaded or not warmed up yet (or the server is shutting down)."""

    error_type = "not_ready"

    def __init__(
        self, message: str = "the model is not ready yet", *, retry_after: float = 1.0, **kw
    ) -> None:
        super().__init__(message, retry_after=retry_after, **kw)


class Unhealthy(ServiceError):
    """The inference worker makes no progress (a hung model call, a dead batcher): restart the process."""

    error_type = "unhealthy"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw) -> None:
        super().__init__(message, retry_after=retry_after, **kw)


class Overloaded(ServiceError):
    """The queue is full: refused at once instead of queueing without bound."""

    error_type = "overloaded"

    def __init__(
        self, message: str = "server overloaded, retry later", *, retry_after: float = 1.0, **kw
    ) -> None:
        super().__init__(message, retry_after=retry_after, **kw)


class InferenceError(ServiceError):
    """The model failed on a batch; details go to the log, never to the client."""

    error_type = "inference_error"

    def __init__(self, message: str = "inference failed", **kw) -> None:
        super().__init__(message, **kw)


class InternalError(ServiceError):
    """Any other unexpected failure (a bug): logged with its stack trace, reported without it."""

    error_type = "internal_error"

    def __init__(self, message: str = "internal server error", **kw) -> None:
        super().__init__(message, **kw)


class ClientClosedRequest(ServiceError):
    """The client went away before its answer was ready; its queued work was dropped."""

    error_type = "client_closed_request"
