"""The HTTP contract beyond routing: exact request schemas, and content negotiation.

* :class:`ContractSchemas`: the OpenAPI schema of every query body is its model's
  :meth:`~service.tasks.base.Body.contract` under the served limits (``Limits.of(settings)``): item
  counts, text lengths, ranges, enums, either/or shapes (``oneOf``), no unknown fields. The models
  themselves parse loosely and leave every check to ``prepare``, so HTTP and ``ropenlp score`` report
  the same errors; the schema states exactly what those checks accept (``tests/service/test_contract.py``
  holds the server to it with schemathesis).
* :func:`negotiate` (a ``before_request`` hook, run before the body is read) on the documented routes:
  a body that is not JSON is :class:`UnsupportedMediaType` (415); an ``Accept`` header that admits no
  media type the route answers in is :class:`NotAcceptable` (406). A request without ``Content-Type``
  or ``Accept`` is taken as JSON.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from litestar import Request
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.plugins import OpenAPISchemaPlugin
from litestar.typing import FieldDefinition

from service.errors import NotAcceptable, UnsupportedMediaType
from service.jobs import Limits
from service.tasks.base import Body

_NESTED_MAPS = ("properties", "patternProperties", "dependentSchemas", "$defs")
_NESTED_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")


def openapi_schema(js: dict[str, Any], defs: dict[str, Any] | None = None) -> Schema:
    """A JSON schema (pydantic's) as Litestar's :class:`Schema`, ``$ref`` s to ``$defs`` inlined."""
    defs = {**(defs or {}), **js.get("$defs", {})}
    if "$ref" in js:
        return openapi_schema(defs[js["$ref"].rsplit("/", 1)[-1]], defs)
    aliases = Schema.field_aliases()
    out: dict[str, Any] = {}
    for key, value in js.items():
        if key == "$defs":
            continue
        if key in _NESTED_MAPS:
            value = {k: openapi_schema(v, defs) for k, v in value.items()}
        elif key in _NESTED_LISTS:
            value = [openapi_schema(v, defs) for v in value]
        elif isinstance(value, dict):  # items, not, additionalProperties, ...
            value = openapi_schema(value, defs)
        elif key == "type":
            value = [OpenAPIType(v) for v in value] if isinstance(value, list) else OpenAPIType(value)
        out[aliases.get(key, key)] = value
    return Schema(**out)


class ContractSchemas(OpenAPISchemaPlugin):
    """Documents every :class:`~service.tasks.base.Body` (a query model) by its contract under ``limits``."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    @staticmethod
    def is_plugin_supported_type(value: Any) -> bool:
        return isinstance(value, type) and issubclass(value, Body)

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Schema:
        """The contract, as a component of the document (``#/components/schemas/NerQuery``)."""
        schema = schema_creator.schema_registry.get_schema_for_field_definition(field_definition)
        contract = openapi_schema(field_definition.annotation.contract(self.limits))
        for f in dataclasses.fields(Schema):
            setattr(schema, f.name, getattr(contract, f.name))
        return schema


def _is_json(media_type: str) -> bool:
    essence = media_type.partition(";")[0].strip().lower()
    return essence == "application/json" or (essence.startswith("application/") and essence.endswith("+json"))


async def negotiate(request: Request) -> None:
    """415 for a body that is not JSON, 406 for an ``Accept`` the route cannot satisfy (module docstring)."""
    handler = request.route_handler
    if not handler.resolve_include_in_schema():  # the demo page, /metrics, /schema: not JSON routes
        return
    content_type = request.headers.get("content-type")
    if "data" in handler.parsed_fn_signature.parameters and content_type is not None and not _is_json(content_type):
        raise UnsupportedMediaType(
            f"the request body must be JSON (Content-Type: application/json), not {content_type}",
            field="content-type",
        )
    # MediaType.JSON, or '' for a handler returning a Response (ours are JSON)
    produces = getattr(handler.media_type, "value", handler.media_type) or "application/json"
    if "accept" in request.headers and request.accept.best_match([produces]) is None:
        raise NotAcceptable(
            f"this route answers in {produces}, which the Accept header ({request.headers['accept']}) excludes",
            field="accept",
        )
