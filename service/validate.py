"""Validation of request values: the same checks for HTTP bodies and CLI lines (both may hold anything).

Each check raises the :mod:`service.errors` class the HTTP edge maps to a status, naming the field
(``texts[3]``) and the limit.
"""

from __future__ import annotations

import math

from service.errors import EmptyInput, InvalidRequest, OutOfRange, TextTooLong, TooManyItems
from service.jobs import Limits


def type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def check_items(value: object, field: str, limits: Limits) -> list:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise InvalidRequest(f"{field} must be a list, got {type_name(value)}", field=field)
    if not value:
        raise EmptyInput(f"{field} is empty: give at least one item", field=field)
    if len(value) > limits.max_items:
        raise TooManyItems(
            f"{field} has {len(value)} items; at most {limits.max_items} per request",
            field=field,
            limit=limits.max_items,
        )
    return list(value)


def check_text(value: object, field: str, limits: Limits) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a string, got {type_name(value)}", field=field)
    if len(value) > limits.max_chars:
        raise TextTooLong(
            f"{field} has {len(value)} characters; at most {limits.max_chars} per text",
            field=field,
            limit=limits.max_chars,
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidRequest(
            f"{field} is not valid Unicode ({e.reason} at character {e.start})", field=field
        ) from None
    return value


def check_texts(value: object, field: str, limits: Limits) -> list[str]:
    return [check_text(t, f"{field}[{k}]", limits) for k, t in enumerate(check_items(value, field, limits))]


def check_number(value: object, field: str, *, integer: bool) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        raise InvalidRequest(
            f"{field} must be {'an integer' if integer else 'a number'}, got {type_name(value)}", field=field
        )
    if not math.isfinite(value):
        raise OutOfRange(f"{field} must be finite", field=field)
    return value
