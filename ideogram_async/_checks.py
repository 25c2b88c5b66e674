"""The small argument checks every setting and call uses, so each problem reads the same.

Each returns the value it checked or raises a
:class:`~ideogram_async.errors.ValidationError` that names the argument and what it
must be.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import attrs

from .errors import ValidationError

__all__ = ["int_at_least", "of_type", "positive_number", "seconds", "seconds_field"]

_T = TypeVar("_T")


def of_type(name: str, value: _T | None, kind: type[_T]) -> _T | None:
    """``value`` if it is ``None`` or a ``kind``, else a ``ValidationError`` naming ``name``."""
    if value is not None and not isinstance(value, kind):
        raise ValidationError(f"{name} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def int_at_least(name: str, value: object, low: int) -> int:
    """``value`` if it is an int (not a bool) ``>= low``, else a ``ValidationError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValidationError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def positive_number(name: str, value: object, *, or_none: bool = False) -> float | None:
    """``value`` if it is a finite number (not a bool) ``> 0`` (or ``None`` when allowed)."""
    if value is None and or_none:
        return None
    if not _finite(value) or value <= 0:  # type: ignore[operator]
        allowed = " or None" if or_none else ""
        raise ValidationError(f"{name} must be a number > 0{allowed}, got {value!r}")
    return value  # type: ignore[return-value]


def seconds(name: str, value: object, *, zero: bool = False, none: bool = False) -> float | None:
    """A duration: a finite number of seconds ``> 0`` (``>= 0`` with ``zero``).

    With ``none``, ``None`` (no limit) is accepted too.
    """
    if value is None and none:
        return None
    if not _finite(value) or value < 0 or (value == 0 and not zero):  # type: ignore[operator]
        bound = ">= 0" if zero else "> 0"
        unlimited = ", or None for no limit" if none else ""
        raise ValidationError(
            f"{name} must be a finite number of seconds {bound}{unlimited}, got {value!r}"
        )
    return value  # type: ignore[return-value]


def seconds_field(default: float | None, *, zero: bool = False, none: bool = False) -> Any:
    """An attrs field holding a duration checked by :func:`seconds` (named ``Class.field``)."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        seconds(f"{type(instance).__name__}.{attribute.name}", value, zero=zero, none=none)

    validator: Callable[[Any, attrs.Attribute[Any], Any], None] = check
    return attrs.field(default=default, validator=validator)


def _finite(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
