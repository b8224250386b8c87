"""The HTTP edge (Litestar): parse, call core through the batcher, render. No model logic here.

* :mod:`~service.http.errors`: the error table (class -> status), the exception handler, OpenAPI responses;
* :mod:`~service.http.schemas`: the response models of the service's own routes (and ErrorBody);
* :mod:`~service.http.routes`: one route per registered operation + /health, /ready, /info, /metrics;
* :mod:`~service.http.openai`: the OpenAI-compatible ``/v1`` routes (OpenAI's request and error shapes);
* :mod:`~service.http.contract`: the exact request schemas (served limits) and content negotiation;
* :mod:`~service.http.service`: the Service object the routes get by dependency injection;
* :mod:`~service.http.app`: ``create_app`` and the outer layer (total time, request metrics, access log).
"""

from service.http.app import ServiceApp, create_app
from service.http.errors import ERROR_STATUS, INFERENCE_ERRORS, error_responses, status_of
from service.http.service import Service

__all__ = ["ERROR_STATUS", "INFERENCE_ERRORS", "Service", "ServiceApp", "create_app", "error_responses", "status_of"]
