"""Request and response models (attrs) and the one cattrs converter that maps them.

Requests are validated when they are built, so a bad value fails at the boundary
with a :class:`~ideogram_async.errors.ValidationError` and nothing is ever sent.
Responses are structured leniently: unknown fields are ignored, every image field
is optional, and a body that is not the documented shape raises
:class:`~ideogram_async.errors.ResponseFormatError`.
"""

from __future__ import annotations

import enum
import functools
import json
from datetime import UTC, datetime
from typing import Any, TypeVar

import attrs
import cattrs

from .errors import ResponseFormatError, ValidationError, snippet

__all__ = ["MagicPrompt", "UpscaleRequest", "UpscaleResponse", "UpscaledImage"]

SEED_MAX = 2_147_483_647
MAX_PROMPT_LENGTH = 10_000
"""The longest prompt sent, in characters; a longer one is a mistake, not guidance."""


class MagicPrompt(enum.StrEnum):
    """Whether the service may rewrite the prompt (``magic_prompt_option``)."""

    AUTO = "AUTO"
    ON = "ON"
    OFF = "OFF"


def _to_magic(value: MagicPrompt | str | None) -> MagicPrompt | None:
    """Accept ``MagicPrompt`` members and their names in any case ("auto", "ON")."""
    if value is None or isinstance(value, MagicPrompt):
        return value
    if isinstance(value, str) and value.upper() in MagicPrompt.__members__:
        return MagicPrompt(value.upper())
    raise ValidationError(f"magic_prompt_option must be one of AUTO, ON, OFF, got {value!r}")


def _int_in(low: int, high: int) -> Any:
    """An attrs validator: ``None`` or an int (not a bool) in ``low..high``."""

    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None:
            return
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValidationError(
                f"{attribute.name} must be an int from {low} to {high}, "
                f"got {type(value).__name__} {value!r}"
            )
        if not low <= value <= high:
            raise ValidationError(
                f"{attribute.name} must be from {low} to {high}, got {value}; "
                f"pass a value in range or leave it unset for the service default"
            )

    return check


def _check_prompt(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise ValidationError(f"prompt must be a str, got {type(value).__name__} {value!r}")
    if value is not None and len(value) > MAX_PROMPT_LENGTH:
        raise ValidationError(
            f"prompt is {len(value)} characters, over the cap of {MAX_PROMPT_LENGTH}; "
            f"shorten it (a prompt guides the upscale, a few sentences are plenty)"
        )


@attrs.frozen(kw_only=True)
class UpscaleRequest:
    """The ``image_request`` options of an upscale; every field is optional.

    Unset fields (``None``) are omitted from the request so the service applies its
    own defaults. Values are checked here, before anything is sent.
    """

    prompt: str | None = attrs.field(default=None, validator=_check_prompt)
    """Text that guides the upscale; sent as ordinary JSON, never percent-encoded."""
    resemblance: int | None = attrs.field(default=None, validator=_int_in(1, 100))
    """How closely the result follows the input, 1..100 (service default 50)."""
    detail: int | None = attrs.field(default=None, validator=_int_in(1, 100))
    """How much detail is added, 1..100 (service default 50)."""
    magic_prompt_option: MagicPrompt | None = attrs.field(default=None, converter=_to_magic)
    """``AUTO``, ``ON`` or ``OFF`` (a :class:`MagicPrompt` or its name)."""
    seed: int | None = attrs.field(default=None, validator=_int_in(0, SEED_MAX))
    """Random seed, 0..2147483647, for repeatable results."""
    num_images: int | None = attrs.field(default=None, validator=_int_in(1, 8))
    """How many upscaled variants to return, 1..8."""

    def to_json(self) -> str:
        """The compact JSON string sent as the ``image_request`` form field.

        Encoded once for the last few distinct requests: the calls of a batch usually
        send equal options, and each call needs the string.
        """
        return _request_json(self)


@functools.lru_cache(maxsize=64)
def _request_json(request: UpscaleRequest) -> str:
    fields = {k: v for k, v in _converter.unstructure(request).items() if v is not None}
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)


@attrs.frozen(kw_only=True)
class UpscaledImage:
    """One result image. Every field is optional: the service may omit any of them.

    ``url`` is short-lived: download the picture soon (see ``IdeogramClient.download``).
    """

    url: str | None = None
    resolution: str | None = None
    seed: int | None = None
    prompt: str | None = None
    is_image_safe: bool | None = None


@attrs.frozen(kw_only=True)
class UpscaleResponse:
    """The service's answer: when it was created and the result images."""

    created: datetime
    data: list[UpscaledImage] = attrs.field(factory=list)


class _WrongType(TypeError):
    """A field of the wrong JSON type; the message says what was expected and what came."""


def _reason(exc: BaseException, kind: type | None) -> str:
    """One failure in a response's shape, in cattrs' words or, for a wrong type, ours."""
    return str(exc) if isinstance(exc, _WrongType) else cattrs.v.format_exception(exc, kind)


def _parse_created(value: object, _: type) -> datetime:
    """Parse both documented forms (``...T04:56:07.000Z`` and ``... 04:56:07+00:00``)."""
    if not isinstance(value, str):
        raise _WrongType(f"expected a date string, got {type(value).__name__}")
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _strict(kind: type) -> Any:
    """A structure hook that accepts only ``kind`` (cattrs would coerce "5" to 5)."""

    def hook(value: object, _: type) -> object:
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise _WrongType(f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    return hook


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter()
    # The type it structures is read from the hook's return annotation.
    converter.register_structure_hook(_parse_created)
    for kind in (str, int, bool):
        converter.register_structure_hook(kind, _strict(kind))
    return converter


_converter = _make_converter()


def parse_response(body: str, status: int = 200) -> UpscaleResponse:
    """Turn a 2xx body into an :class:`UpscaleResponse` or raise ``ResponseFormatError``."""
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to decode
        raise ResponseFormatError(
            f"the service answered HTTP {status} with a body that is not JSON: "
            f"{snippet(body)!r}; check base_url points at the upscale service",
            body=body,
            status=status,
        ) from None
    items = raw.get("data") if isinstance(raw, dict) else None
    if (
        not isinstance(raw, dict)
        or "created" not in raw
        or not isinstance(items, list)
        or not all(isinstance(item, dict) for item in items)
    ):
        raise ResponseFormatError(
            f"the service answered HTTP {status} without the documented 'created' field "
            f"and 'data' list of objects: {snippet(body)!r}",
            body=body,
            status=status,
        )
    return structure(raw, UpscaleResponse, body, status)


_A = TypeVar("_A")


def structure(raw: dict[str, Any], cls: type[_A], body: str, status: int) -> _A:
    """Build ``cls`` from a decoded 2xx body, or raise ``ResponseFormatError`` saying why not."""
    try:
        return _converter.structure(raw, cls)
    except cattrs.BaseValidationError as exc:  # cattrs wraps every failure of a field in one
        reasons = "; ".join(cattrs.transform_error(exc, format_exception=_reason))
        raise ResponseFormatError(
            f"the service answered HTTP {status} with a body of the wrong shape "
            f"({reasons}): {snippet(body)!r}",
            body=body,
            status=status,
        ) from None
