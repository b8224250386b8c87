"""OpenAI-compatible routes: ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /v1/models/{id}``.

RAG stacks (the ``openai`` client, LangChain, LlamaIndex) then use ropenlp's sentence vectors without
glue: ``OpenAI(base_url="http://HOST:8000/v1", api_key=KEY or "unused")``. The embeddings are the
``embed`` operation's (whitened, L2-normalised; through the same batcher), in the OpenAI shape:

* ``input``: a string or a list of strings (1 to ``max_items``, each at most ``max_chars``; empty
  strings are texts too). Token-id arrays are refused with a 400 saying so: they would be another
  tokenizer's ids; LangChain's ``OpenAIEmbeddings`` needs ``check_embedding_ctx_length=False``;
* ``encoding_format``: ``float`` or ``base64`` (little-endian float32, what the client decodes);
* ``dimensions``: whitening orders the output dimensions by decreasing variance, so the first ``d``
  dimensions, re-normalised, are exactly the vectors whitening with ``k = d`` gives (pinned by a test
  against the fp32 math); only for a whitened model, ``1 <= d <= dim``; otherwise null or absent;
* ``model`` and ``user`` are accepted and ignored: the served bundle answers (``/v1/models`` names it);
* ``usage``: tokens the model ran, counted by the bundle's tokenizer ([CLS] and [SEP] included, a
  text cut to ``max_length`` counted as cut).

The request schema is exact, as every query body's (``service.http.contract``): ``EmbeddingsRequest``
is a :class:`~service.tasks.base.Body` whose contract states the served limits and, from the bundle's
manifest (read when the app is made), the range of ``dimensions``: :meth:`EmbeddingsRequest.serving`.
A bundle without a similarity task answers 501 (``task_unavailable``).

Errors under ``/v1`` have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}`` (code:
our ``error_type``; 422 becomes OpenAI's 400), those that reach no route (404, 405) and those of content
negotiation (406, 415) included: the app's one exception handler renders every error under
:data:`PREFIX` with :func:`openai_error_response`. Each route's OpenAPI ``responses`` come from the error
table (``error_responses``) with this body. The rest of the API keeps its own error body.
``tests/service/test_contract.py`` fuzzes these routes with the others.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from litestar import Request, Response, Router, get, post
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody
from pydantic import BaseModel, Field

from models.bundle import Manifest
from service.errors import (
    InvalidRequest, MethodNotAllowed, NotAcceptable, NotFound, NotReady, OutOfRange, ServiceError,
    Unauthorized,
)  # fmt: skip
from service.http.errors import INFERENCE_ERRORS, error_headers, error_responses, status_of
from service.http.service import Service
from service.jobs import Limits
from service.tasks.base import Body, Integer, constrained, items_type, text_type
from service.tasks.similarity import EmbedQuery, EmbedResult

PREFIX = "/v1"

# --------------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------------


class EmbeddingsRequest(Body):
    """OpenAI's embeddings request. The model parses loosely (token-id arrays get through, to be refused
    with a message saying what to send); :meth:`contract` states what the route accepts, for the bundle
    that :meth:`serving` names."""

    max_dimensions: ClassVar[int | None] = None  # the served bundle's whitened dim; None: dimensions is null

    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="a text or a list of texts (token-id arrays are not supported)"
    )
    model: str | None = Field(None, description="accepted and ignored: the served bundle answers")
    encoding_format: Literal["float", "base64"] = Field("float", description="base64: little-endian float32")
    dimensions: Integer | None = Field(
        None, description="keep the first d whitened dimensions, re-normalised (= whitening with k = d); "
        "only for a whitened bundle"
    )  # fmt: skip
    user: str | None = Field(None, description="accepted and ignored")

    @classmethod
    def contract(cls, limits: Limits) -> dict[str, Any]:
        """``input``: a text or 1 to ``max_items`` texts as ``embed`` takes them (at most ``max_chars``
        each, empty ones too); ``dimensions``: in [1, dim] for a whitened bundle, else null or absent."""
        text = text_type(limits)
        d = cls.max_dimensions
        dimensions = None if d is None else Annotated[int, Field(ge=1, le=d)] | None
        return constrained(cls, {"input": text | items_type(text, limits), "dimensions": dimensions})

    @classmethod
    def serving(cls, manifest: Manifest) -> type[EmbeddingsRequest]:
        """This model for the bundle of ``manifest``: its contract's ``dimensions`` range is the bundle's."""
        spec = manifest.tasks.get("similarity")
        d = spec.dim if spec is not None and spec.whitening else None
        return type(cls.__name__, (cls,), {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                                           "__doc__": cls.__doc__, "max_dimensions": d})  # fmt: skip


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="the bundle's creation time, Unix seconds")
    owned_by: str = "ropenlp"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, not_found_error, ...")
    param: str | None = Field(None, description="the offending request field")
    code: str | None = Field(None, description="ropenlp's error_type")


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail


# --------------------------------------------------------------------------------------------
# Errors in OpenAI's shape
# --------------------------------------------------------------------------------------------

OPENAI_STATUS = {422: 400}  # OpenAI answers every invalid request with 400
OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                413: "invalid_request_error", 429: "rate_limit_error", 501: "invalid_request_error",
                503: "service_unavailable"}  # fmt: skip
EMBEDDINGS_ERRORS = (*INFERENCE_ERRORS, OutOfRange, MethodNotAllowed)
MODELS_ERRORS = (Unauthorized, MethodNotAllowed, NotAcceptable, NotReady)


def openai_status(err: ServiceError) -> int:
    status = status_of(err)
    return OPENAI_STATUS.get(status, status)


def openai_error_response(err: ServiceError) -> Response[OpenAIError]:
    """``err`` in OpenAI's shape, with the headers of any error answer (``error_headers``)."""
    status = openai_status(err)
    param, message = err.field, err.message
    if param is not None and param.startswith("texts"):  # the embed operation names its field "texts"
        param = "input" + param[len("texts") :]
        message = message.replace(err.field, param, 1)
    elif param is not None and param.startswith("input."):  # pydantic names the union member: input.str
        param = "input"
    kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": err.error_type}}
    return Response(body, status_code=status, headers=error_headers(err))


def openai_responses(*classes: type[ServiceError]) -> dict[int, ResponseSpec]:
    """A /v1 route's OpenAPI ``responses``: the error table's, in OpenAI's shape and statuses."""
    return error_responses(*classes, body=OpenAIError, statuses=OPENAI_STATUS)


# --------------------------------------------------------------------------------------------
# Routes
# --------------------------------------------------------------------------------------------


def texts_of(value: object) -> list[str]:
    """``input`` as a list of texts; token-id arrays refused with a message saying what to send."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return value
    raise InvalidRequest(
        "input must be a string or a list of strings: token-id arrays are not supported (they would be another "
        "tokenizer's ids; with LangChain's OpenAIEmbeddings set check_embedding_ctx_length=False)",
        field="input",
    )


def check_dimensions(service: Service, dimensions: object) -> int | None:
    if dimensions is None:
        return None
    if isinstance(dimensions, bool) or not isinstance(dimensions, int):
        raise InvalidRequest("dimensions must be an integer", field="dimensions")
    if service.engine is None:
        raise service.not_ready()
    spec = service.engine.task("similarity").spec
    if not spec.whitening:
        raise InvalidRequest(
            f"dimensions needs a whitened model (its dimensions ordered by variance); bundle "
            f"{service.engine.manifest.name!r} is not whitened: leave dimensions out", field="dimensions"
        )
    if not 1 <= dimensions <= spec.dim:
        raise OutOfRange(f"dimensions must be in [1, {spec.dim}], got {dimensions}", field="dimensions",
                         limit=spec.dim if dimensions > spec.dim else 1)  # fmt: skip
    return dimensions


def shorten(vectors: np.ndarray, d: int | None) -> np.ndarray:
    """The first ``d`` dimensions of L2-normalised whitened vectors, re-normalised (= whitening with k = d)."""
    if d is None or d == vectors.shape[1]:
        return vectors
    v = vectors[:, :d].astype(np.float64)
    return (v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _encode(v: np.ndarray, fmt: str) -> list[float] | str:
    return base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") if fmt == "base64" else v.tolist()


def embeddings_route(guard, manifest: Manifest) -> HTTPRouteHandler:
    """``POST /embeddings``: the body is :class:`EmbeddingsRequest` as ``manifest``'s bundle serves it."""

    async def embeddings(request: Request, data: Any, service: NamedDependency[Service]) -> EmbeddingsResponse:
        """Sentence vectors of ``input`` in the OpenAI shape (see the module docstring of service.http.openai)."""
        texts = texts_of(data.input)
        if not texts:
            raise InvalidRequest("input is empty: give at least one text", field="input")
        d = check_dimensions(service, data.dimensions)
        result: EmbedResult
        result, _ = await service.infer(request, "embed", EmbedQuery.model_construct(texts=texts))
        vectors = shorten(result.vectors, d)
        tokens = int(sum(result.tokens))
        return EmbeddingsResponse(
            data=[Embedding(index=k, embedding=_encode(v, data.encoding_format)) for k, v in enumerate(vectors)],
            model=service.engine.manifest.name,
            usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
        )

    # the typed signature Litestar reads: the body model of the served bundle
    embeddings.__annotations__ = {
        "request": Request, "data": JSONBody[EmbeddingsRequest.serving(manifest)],
        "service": NamedDependency[Service], "return": EmbeddingsResponse,
    }  # fmt: skip
    return post("/embeddings", status_code=200, guards=[guard], summary="Embeddings (OpenAI-compatible)",
                responses=openai_responses(*EMBEDDINGS_ERRORS))(embeddings)  # fmt: skip


def openai_router(guard, manifest: Manifest) -> Router:
    """The ``/v1`` routes for the bundle of ``manifest``, guarded like the inference routes. Their errors
    take OpenAI's shape in the app's exception handler (``ExceptionHandler(shapes={PREFIX: ...})``)."""

    @get("/models", summary="The served bundle, as an OpenAI model list", guards=[guard],
         responses=openai_responses(*MODELS_ERRORS))  # fmt: skip
    async def models(service: NamedDependency[Service]) -> ModelList:
        return ModelList(data=[_card(service)])

    # 400: a path Litestar cannot parse into model_id (its ValidationException: invalid_request)
    @get("/models/{model_id:str}", summary="One model (the served bundle)", guards=[guard],
         responses=openai_responses(*MODELS_ERRORS, InvalidRequest, NotFound))  # fmt: skip
    async def model(model_id: FromPath[str], service: NamedDependency[Service]) -> ModelCard:
        card = _card(service)
        if model_id != card.id:
            raise NotFound(f"model {model_id!r} not found: this server serves {card.id!r}", field="model")
        return card

    return Router(path=PREFIX, route_handlers=[embeddings_route(guard, manifest), models, model])


def _card(service: Service) -> ModelCard:
    if service.engine is None:
        raise service.not_ready()
    m = service.engine.manifest
    try:
        created = int(datetime.fromisoformat(m.provenance.created).timestamp())
    except ValueError:
        created = 0
    return ModelCard(id=m.name, created=created)


__all__ = ["EmbeddingsRequest", "EmbeddingsResponse", "ModelList", "OpenAIError", "PREFIX",
           "openai_error_response", "openai_router", "shorten"]  # fmt: skip
