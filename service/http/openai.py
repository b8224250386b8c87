"""OpenAI-compatible routes: ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /v1/models/{id}``.

RAG stacks (the ``openai`` client, LangChain, LlamaIndex) then use ropenlp's sentence vectors without
glue: ``OpenAI(base_url="http://HOST:8000/v1", api_key=KEY or "unused")``. The embeddings are the
``embed`` operation's (whitened, L2-normalised; through the same batcher), in the OpenAI shape:

* ``input``: a string or a list of strings (token-id arrays are refused: they would be another
  tokenizer's ids; LangChain's ``OpenAIEmbeddings`` needs ``check_embedding_ctx_length=False``);
* ``encoding_format``: ``float`` or ``base64`` (little-endian float32, what the client decodes);
* ``dimensions``: whitening orders the output dimensions by decreasing variance, so the first ``d``
  dimensions, re-normalised, are exactly the vectors whitening with ``k = d`` gives (pinned by a test
  against the fp32 math); only for a whitened model, ``1 <= d <= dim``;
* ``model`` and ``user`` are accepted and ignored: the served bundle answers (``/v1/models`` names it);
* ``usage``: tokens the model ran, counted by the bundle's tokenizer ([CLS] and [SEP] included, a
  text cut to ``max_length`` counted as cut).

Errors on these routes have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}`` (code:
our ``error_type``; 422 becomes OpenAI's 400); the rest of the API keeps its own error body.
"""

from __future__ import annotations

import base64
import math
from datetime import datetime
from typing import Literal

import numpy as np
from litestar import Request, Response, Router, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody
from pydantic import BaseModel, ConfigDict, Field

from service.errors import InvalidRequest, NotFound, OutOfRange, ServiceError, Unauthorized
from service.http.errors import status_of, to_service_error
from service.http.service import Service
from service.tasks.similarity import EmbedQuery, EmbedResult

# --------------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------------


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="a text or a list of texts (token-id arrays are not supported)"
    )
    model: str | None = Field(None, description="accepted and ignored: the served bundle answers")
    encoding_format: Literal["float", "base64"] = Field("float", description="base64: little-endian float32")
    dimensions: int | None = Field(
        None, description="keep the first d whitened dimensions, re-normalised (= whitening with k = d)"
    )
    user: str | None = Field(None, description="accepted and ignored")


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

OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                413: "invalid_request_error", 429: "rate_limit_error", 501: "invalid_request_error",
                503: "service_unavailable"}  # fmt: skip


def openai_status(err: ServiceError) -> int:
    status = status_of(err)
    return 400 if status == 422 else status


def openai_error_response(err: ServiceError) -> Response[OpenAIError]:
    status = openai_status(err)
    param, message = err.field, err.message
    if param is not None and param.startswith("texts"):  # the embed operation names its field "texts"
        param = "input" + param[len("texts") :]
        message = message.replace(err.field, param, 1)
    elif param is not None and param.startswith("input."):  # pydantic names the union member: input.str
        param = "input"
    kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": err.error_type}}
    headers = {}
    if err.retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(err.retry_after)))
    if isinstance(err, Unauthorized):
        headers["www-authenticate"] = 'Bearer realm="ropenlp"'
    return Response(body, status_code=status, headers=headers)


class OpenAIExceptionHandler:
    def __init__(self, max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes

    def __call__(self, request: Request, exc: Exception) -> Response[OpenAIError]:
        return openai_error_response(to_service_error(exc, max_body_bytes=self.max_body_bytes))


def _responses(*statuses: int) -> dict[int, ResponseSpec]:
    return {s: ResponseSpec(data_container=OpenAIError, generate_examples=False,
                            description=f"OpenAI error shape ({OPENAI_TYPES.get(s, 'server_error')})")
            for s in statuses}  # fmt: skip


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


def openai_router(guard, max_body_bytes: int) -> Router:
    """The ``/v1`` routes, guarded like the inference routes, with OpenAI-shaped errors."""

    @post("/embeddings", status_code=200, guards=[guard], summary="Embeddings (OpenAI-compatible)",
          responses=_responses(400, 401, 413, 429, 500, 501, 503))  # fmt: skip
    async def embeddings(
        request: Request, data: JSONBody[EmbeddingsRequest], service: NamedDependency[Service]
    ) -> EmbeddingsResponse:
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

    @get("/models", summary="The served bundle, as an OpenAI model list", guards=[guard],
         responses=_responses(401, 503))  # fmt: skip
    async def models(service: NamedDependency[Service]) -> ModelList:
        return ModelList(data=[_card(service)])

    @get("/models/{model_id:str}", summary="One model (the served bundle)", guards=[guard],
         responses=_responses(401, 404, 503))  # fmt: skip
    async def model(model_id: FromPath[str], service: NamedDependency[Service]) -> ModelCard:
        card = _card(service)
        if model_id != card.id:
            raise NotFound(f"model {model_id!r} not found: this server serves {card.id!r}", field="model")
        return card

    return Router(path="/v1", route_handlers=[embeddings, models, model],
                  exception_handlers={Exception: OpenAIExceptionHandler(max_body_bytes)})  # fmt: skip


def _card(service: Service) -> ModelCard:
    if service.engine is None:
        raise service.not_ready()
    m = service.engine.manifest
    try:
        created = int(datetime.fromisoformat(m.provenance.created).timestamp())
    except ValueError:
        created = 0
    return ModelCard(id=m.name, created=created)


__all__ = ["EmbeddingsRequest", "EmbeddingsResponse", "ModelList", "OpenAIError", "openai_router", "shorten"]
