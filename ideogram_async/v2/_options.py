"""The options of Ideogram's v2 upscalers: one validated class per model, and the 8192 px rule.

``POST /v2/image/upscale/{model}`` takes the source image as the file part ``image``
and every option as a plain form field. Each model has its own class here; build one
and pass it to the client::

    TopazBloom2(prompt="crisp autumn leaves", creativity=4, upscale_factor="x4")

Values are checked when the options are built (a bad one raises
:class:`~ideogram_async.errors.ValidationError`, nothing is sent). Fields left
``None`` are not sent, so the service applies its own default (named in each field's
docstring). The attrs validators and the form encoding the classes share come first.

Every model but ``nano-banana-pro`` refuses an output wider or taller than 8192 px;
:func:`check_output_size` applies that rule to a source's size before anything is
uploaded.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, ClassVar, Literal, TypeAlias
from urllib.parse import urlsplit

import attrs

from ..errors import ValidationError
from ..models import SEED_MAX

__all__ = [
    "MAX_FILE_SIZE",
    "MAX_OUTPUT_SIDE",
    "MODELS",
    "AutoUpscaler",
    "Factor",
    "NanoBananaPro",
    "TopazBloom2",
    "TopazRedefine",
    "TopazStandard2",
    "TopazTextRefine",
    "TopazWonder35",
    "V2Options",
    "check_output_size",
    "check_webhook_url",
    "options_from_strings",
]

Factor: TypeAlias = Literal["x2", "x4", "x8"]
"""How much larger the output is on each side."""
SubjectDetection: TypeAlias = Literal["all", "foreground", "background"]
EnhancementStrength: TypeAlias = Literal["low", "medium", "high"]
ResolutionTier: TypeAlias = Literal["1K", "2K", "4K"]

MAX_OUTPUT_SIDE = 8192
"""The widest or tallest output, in pixels, of every model but ``nano-banana-pro``."""
MAX_FILE_SIZE = 50 * 1024 * 1024
"""The v2 upscalers' cap on an uploaded image (50 MB)."""
_WEBHOOK_URL_MAX = 2048
_FACTORS: dict[str, int] = {"x2": 2, "x4": 4, "x8": 8}
_DEFAULT_FACTOR: Factor = "x2"
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


@attrs.frozen(kw_only=True)
class V2Options:
    """What every v2 model takes; use one of the per-model subclasses.

    ``model`` is the model's name in the URL. ``private`` keeps the result out of
    public feeds; ``target_collection_id`` files it into one of your collections.
    """

    model: ClassVar[str] = ""
    takes_factor: ClassVar[bool] = True
    """Whether the model takes ``upscale_factor`` (and so obeys the 8192 px rule)."""

    private: bool | None = attrs.field(default=None, validator=flag)
    target_collection_id: str | None = attrs.field(default=None, validator=collection_id)

    def form_fields(self) -> dict[str, str]:
        """The form fields of the request, as text; unset fields are left out."""
        return {
            field.name: form_value(value)
            for field in attrs.fields(type(self))
            if (value := getattr(self, field.name)) is not None
        }

    @property
    def factor(self) -> Factor | None:
        """The factor the service will apply (``x2`` when unset); ``None`` if it takes none."""
        if not self.takes_factor:
            return None
        value: Factor | None = getattr(self, "upscale_factor", None)
        return value or _DEFAULT_FACTOR

    def check_source_size(self, width: int, height: int) -> None:
        """Refuse a source whose output would break the 8192 px rule (see
        :func:`check_output_size`)."""
        check_output_size(width, height, model=self.model, factor=self.factor)


def _face_enhancement(options: _FaceEnhancing) -> None:
    """``face_enhancement=True`` needs both strengths; they mean nothing without it."""
    given = [
        name
        for name in ("face_enhancement_strength", "face_enhancement_creativity")
        if getattr(options, name) is not None
    ]
    if options.face_enhancement:
        missing = [
            name
            for name in ("face_enhancement_strength", "face_enhancement_creativity")
            if name not in given
        ]
        if missing:
            raise ValidationError(
                f"face_enhancement=True requires {' and '.join(missing)} "
                f"(each from 0 to 1) on {options.model}"
            )
    elif given:
        raise ValidationError(
            f"{' and '.join(given)} {'applies' if len(given) == 1 else 'apply'} only with "
            f"face_enhancement=True on {options.model}; "
            f"set face_enhancement=True or leave them unset"
        )


@attrs.frozen(kw_only=True)
class _FaceEnhancing(V2Options):
    """The Topaz fields shared by the faithful models and ``topaz-redefine``."""

    denoise: float | None = unit_field()
    """Noise removal, 0..1."""
    sharpen: float | None = unit_field()
    """Sharpening, 0..1."""
    subject_detection: SubjectDetection | None = attrs.field(
        default=None, validator=choice("all", "foreground", "background")
    )
    """Which part of the image to enhance: ``all``, ``foreground`` or ``background``."""
    face_enhancement: bool | None = attrs.field(default=None, validator=flag)
    """Enhance faces; when ``True``, both strengths below are required."""
    face_enhancement_strength: float | None = unit_field()
    """How strongly faces are enhanced, 0..1 (only with ``face_enhancement=True``)."""
    face_enhancement_creativity: float | None = unit_field()
    """How freely faces are redrawn, 0..1 (only with ``face_enhancement=True``)."""

    def __attrs_post_init__(self) -> None:
        _face_enhancement(self)


@attrs.frozen(kw_only=True)
class AutoUpscaler(V2Options):
    """``auto``: the service picks the model. Some keys are not allowed to use it (403)."""

    model: ClassVar[str] = "auto"

    upscale_factor: Factor | None = attrs.field(default=None, validator=choice(*_FACTORS))
    """``x2`` (the service default), ``x4`` or ``x8``."""
    seed: int | None = seed_field()
    """0..2147483647, for repeatable results."""
    internal: bool | None = attrs.field(default=None, validator=flag)
    """Service default ``False``."""


@attrs.frozen(kw_only=True)
class _Faithful(_FaceEnhancing):
    """The fields of the faithful Topaz models."""

    upscale_factor: Factor | None = attrs.field(default=None, validator=choice(*_FACTORS))
    """``x2`` (the service default), ``x4`` or ``x8``."""
    fix_compression: float | None = unit_field()
    """Removal of compression artefacts, 0..1."""
    strength: float | None = attrs.field(default=None, validator=number(0.01, 1))
    """Overall strength, 0.01..1."""


@attrs.frozen(kw_only=True)
class TopazStandard2(_Faithful):
    """``topaz-standard-2``: a faithful upscale that keeps the image as it is. Takes no seed."""

    model: ClassVar[str] = "topaz-standard-2"


@attrs.frozen(kw_only=True)
class TopazTextRefine(_Faithful):
    """``topaz-text-refine``: faithful, tuned for lettering; as :class:`TopazStandard2`
    plus a seed."""

    model: ClassVar[str] = "topaz-text-refine"

    seed: int | None = seed_field()
    """0..2147483647, for repeatable results."""


@attrs.frozen(kw_only=True)
class TopazWonder35(V2Options):
    """``topaz-wonder-3-5``: general enhancement with one strength setting."""

    model: ClassVar[str] = "topaz-wonder-3-5"

    upscale_factor: Factor | None = attrs.field(default=None, validator=choice(*_FACTORS))
    """``x2`` (the service default), ``x4`` or ``x8``."""
    seed: int | None = seed_field()
    """0..2147483647, for repeatable results."""
    enhancement_strength: EnhancementStrength | None = attrs.field(
        default=None, validator=choice("low", "medium", "high")
    )
    """``low``, ``medium`` or ``high`` (the service default)."""


@attrs.frozen(kw_only=True)
class TopazBloom2(V2Options):
    """``topaz-bloom-2``: a creative upscale that invents detail, guided by a prompt."""

    model: ClassVar[str] = "topaz-bloom-2"

    upscale_factor: Factor | None = attrs.field(default=None, validator=choice(*_FACTORS))
    """``x2`` (the service default), ``x4`` or ``x8``."""
    seed: int | None = seed_field()
    """0..2147483647, for repeatable results."""
    prompt: str | None = attrs.field(default=None, validator=text_up_to(1024))
    """Text that guides the upscale, at most 1024 characters."""
    creativity: int | None = attrs.field(default=None, validator=number(1, 9, integer=True))
    """How much is invented, 1..9 (service default 3)."""
    color_preservation: bool | None = attrs.field(default=None, validator=flag)
    """Keep the source's colours (service default ``True``)."""


@attrs.frozen(kw_only=True)
class TopazRedefine(_FaceEnhancing):
    """``topaz-redefine``: a creative upscale with texture and detail controls."""

    model: ClassVar[str] = "topaz-redefine"

    upscale_factor: Factor | None = attrs.field(default=None, validator=choice(*_FACTORS))
    """``x2`` (the service default), ``x4`` or ``x8``."""
    seed: int | None = seed_field()
    """0..2147483647, for repeatable results."""
    prompt: str | None = attrs.field(default=None, validator=text_up_to(1024))
    """Text that guides the upscale, at most 1024 characters; not with ``autoprompt``."""
    autoprompt: bool | None = attrs.field(default=None, validator=flag)
    """Let the service write the prompt (service default ``False``)."""
    creativity: int | None = attrs.field(default=None, validator=number(1, 9, integer=True))
    """How much is invented, 1..9 (service default 3)."""
    texture: int | None = attrs.field(default=None, validator=number(1, 5, integer=True))
    """Amount of texture, 1..5 (service default 1)."""
    detail: bool | None = attrs.field(default=None, validator=flag)
    """Add fine detail (service default ``False``)."""
    detail_strength: float | None = attrs.field(default=None, validator=number(0, 10))
    """How much fine detail, 0..10."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.autoprompt and self.prompt is not None:
            raise ValidationError(
                "topaz-redefine ignores prompt when autoprompt=True; pass one or the other"
            )


@attrs.frozen(kw_only=True)
class NanoBananaPro(V2Options):
    """``nano-banana-pro``: upscales to a resolution tier instead of by a factor.

    It takes no ``upscale_factor`` and is not bound by the 8192 px rule; the service
    refuses a tier the source already reaches.
    """

    model: ClassVar[str] = "nano-banana-pro"
    takes_factor: ClassVar[bool] = False

    seed: int | None = seed_field()
    """0..2147483647, for repeatable results."""
    prompt: str | None = attrs.field(default=None, validator=text_up_to(2000))
    """Text that guides the upscale, at most 2000 characters."""
    resolution_tier: ResolutionTier | None = attrs.field(
        default=None, validator=choice("1K", "2K", "4K")
    )
    """``1K``, ``2K`` (the service default) or ``4K``."""


MODELS: dict[str, type[V2Options]] = {
    cls.model: cls
    for cls in (
        AutoUpscaler,
        TopazStandard2,
        TopazTextRefine,
        TopazWonder35,
        TopazBloom2,
        TopazRedefine,
        NanoBananaPro,
    )
}
"""Every v2 model by its name in the URL."""


def check_output_size(width: int, height: int, *, model: str, factor: str | None) -> None:
    """Raise :class:`ValidationError` when ``model`` at ``factor`` would output over 8192 px.

    ``width`` and ``height`` are the source's, in pixels; ``factor`` ``None`` means
    the service default (``x2``). ``nano-banana-pro`` has no such limit. The message
    names the limit, the image's size and the largest factor that fits, or says that
    none does.
    """
    if model == NanoBananaPro.model:
        return
    factor = factor or _DEFAULT_FACTOR
    if factor not in _FACTORS:
        raise ValidationError(f"upscale_factor must be one of x2, x4, x8, got {factor!r}")
    multiple = _FACTORS[factor]
    side = max(width, height)
    if side * multiple <= MAX_OUTPUT_SIDE:
        return
    fitting = [name for name, m in _FACTORS.items() if side * m <= MAX_OUTPUT_SIDE]
    if fitting:
        fix = f"the largest factor that fits is {fitting[-1]}"
    else:
        most = math.floor(MAX_OUTPUT_SIDE / min(_FACTORS.values()))
        fix = (
            f"no factor fits (even x2 needs a source of at most {most} px a side): "
            f"shrink the image or use nano-banana-pro"
        )
    raise ValidationError(
        f"{model} refuses outputs over {MAX_OUTPUT_SIDE} px on either side, and this "
        f"{width}x{height} image at {factor} would be {width * multiple}x{height * multiple}; "
        f"{fix}"
    )


def options_from_strings(model: str, values: Mapping[str, str]) -> V2Options:
    """Build ``model``'s options from text values, as a command line gives them.

    ``values`` maps field names to text: ``true``/``false`` for flags, decimal
    numbers, plain text otherwise; ``upscale_factor`` is accepted like any field.
    Unknown models and fields raise :class:`ValidationError` listing the known ones.
    """
    cls = MODELS.get(model)
    if cls is None:
        raise ValidationError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    hints = typing.get_type_hints(cls)
    known = [field.name for field in attrs.fields(cls)]
    fields: dict[str, Any] = {}
    for name, text in values.items():
        if name not in known:
            raise ValidationError(
                f"{model} has no option {name!r}; its options are {', '.join(known)}"
            )
        kinds = set(typing.get_args(hints[name])) - {type(None)}
        fields[name] = _from_text(name, text, kinds)
    return cls(**fields)


def _from_text(name: str, text: str, kinds: set[object]) -> object:
    """``text`` as the value of a field of the given types (bool, int, float or text).

    Text that is not a number stays text, for the field's check to refuse.
    """
    kind = next((k for k in (bool, int, float) if k in kinds), str)
    if kind is bool:
        lowered = text.strip().lower()
        if lowered not in ("true", "false"):
            raise ValidationError(f"{name} must be true or false, got {text!r}")
        return lowered == "true"
    if kind is str:
        return text
    try:
        return int(text) if kind is int else float(text)
    except ValueError:
        # Left as text, the field's own check refuses it, naming the range it takes.
        return text
