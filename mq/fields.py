"""Typed reads of a frame's `fields`, failing with an error that names the field.

Every request handler starts by pulling a few typed values out of an untrusted map; doing
it through these helpers keeps that one line per field and turns a bad request into
INVALID_REQUEST with a useful remark instead of a KeyError deep in a handler.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NAME_CHARS_MAX = 255
"""Longest cluster, group, topic or address string we accept in fields."""


class FieldError(ValueError):
    """A request's fields are missing, mistyped or out of range."""


_MISSING = object()


def get_str(
    fields: Mapping[Any, Any], key: str, *, default: Any = _MISSING, chars_max: int = NAME_CHARS_MAX
) -> str:
    value = fields.get(key, default)
    if value is _MISSING:
        raise FieldError(f"missing field {key!r}")
    if not isinstance(value, str):
        raise FieldError(f"field {key!r} must be a string")
    if len(value) > chars_max:
        raise FieldError(f"field {key!r} is longer than {chars_max} characters")
    return value


def get_name(fields: Mapping[Any, Any], key: str) -> str:
    """A non-empty identifier string (cluster, group, topic, address)."""
    value = get_str(fields, key)
    if not value:
        raise FieldError(f"field {key!r} must not be empty")
    return value


def get_int(
    fields: Mapping[Any, Any],
    key: str,
    *,
    default: Any = _MISSING,
    low: int = 0,
    high: int = 2**63 - 1,
) -> int:
    value = fields.get(key, default)
    if value is _MISSING:
        raise FieldError(f"missing field {key!r}")
    if not isinstance(value, int) or isinstance(value, bool):
        raise FieldError(f"field {key!r} must be an integer")
    if not low <= value <= high:
        raise FieldError(f"field {key!r} must be within [{low}, {high}], got {value}")
    return value


def get_map(fields: Mapping[Any, Any], key: str, *, default: Any = _MISSING) -> Mapping[Any, Any]:
    value = fields.get(key, default)
    if value is _MISSING:
        raise FieldError(f"missing field {key!r}")
    if not isinstance(value, Mapping):
        raise FieldError(f"field {key!r} must be a map")
    return value


def get_list(fields: Mapping[Any, Any], key: str, *, default: Any = _MISSING) -> list[Any]:
    value = fields.get(key, default)
    if value is _MISSING:
        raise FieldError(f"missing field {key!r}")
    if not isinstance(value, list | tuple):
        raise FieldError(f"field {key!r} must be a list")
    return list(value)
