"""Attrs validators and form encoding shared by the v2 options classes (``v2.py``)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import attrs

from .errors import ValidationError

SEED_MAX = 2_147_483_647
_WEBHOOK_URL_MAX = 2048

_Validator: TypeAlias = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def number(low: float, high: float, *, integer: bool = False) -> _Validator:
    """``None`` or a number (an int when ``integer``; never a bool) in ``low..high``."""
    kind_name = "an int" if integer else "a number"
    span = f"from {form_value(low)} to {form_value(high)}"

    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None:
            return
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (integer and not isinstance(value, int))
        ):
            raise ValidationError(
                f"{attribute.name} must be {kind_name} {span}, got {type(value).__name__} {value!r}"
            )
        if not low <= value <= high:
            raise ValidationError(
                f"{attribute.name} must be {span}, got {value!r}; "
                f"pass a value in range or leave it unset for the service default"
            )

    return check


def choice(*choices: str) -> _Validator:
    """``None`` or one of ``choices``, spelled exactly."""

    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is not None and value not in choices:
            raise ValidationError(
                f"{attribute.name} must be one of {', '.join(choices)}, got {value!r}"
            )

    return check


def flag(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, bool):
        raise ValidationError(
            f"{attribute.name} must be True or False, got {type(value).__name__} {value!r}"
        )


def text_up_to(limit: int) -> _Validator:
    """``None`` or a str of at most ``limit`` characters."""

    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None:
            return
        if not isinstance(value, str):
            raise ValidationError(
                f"{attribute.name} must be a str, got {type(value).__name__} {value!r}"
            )
        if len(value) > limit:
            raise ValidationError(
                f"{attribute.name} is {len(value)} characters long; this model takes at "
                f"most {limit}: shorten it"
            )

    return check


def collection_id(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValidationError(f"{attribute.name} must be a non-empty str, got {value!r}")


def unit_field() -> Any:
    """An optional float field from 0 to 1."""
    return attrs.field(default=None, validator=number(0, 1))


def seed_field() -> Any:
    """An optional seed field, 0..2147483647."""
    return attrs.field(default=None, validator=number(0, SEED_MAX, integer=True))


def form_value(value: object) -> str:
    """A field's value as its form text: bools as ``true``/``false``, numbers plainly."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        # Plain decimals, never exponents ("1e-07" might not parse on the other side).
        return format(Decimal(repr(value)).normalize(), "f")
    return str(value)


def check_webhook_url(url: object) -> str:
    """``url`` if it is an https URL of at most 2048 characters, else ``ValidationError``."""
    if not isinstance(url, str):
        raise ValidationError(f"webhook_url must be a str, got {type(url).__name__} {url!r}")
    if len(url) > _WEBHOOK_URL_MAX:
        raise ValidationError(
            f"webhook_url is {len(url)} characters long; the service takes at most "
            f"{_WEBHOOK_URL_MAX}"
        )
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValidationError(f"webhook_url must be an https:// URL with a host, got {url!r}")
    return url
