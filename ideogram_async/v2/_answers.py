"""The typed answers of the v2 upscalers: results, price quotes and generations.

Structured with the package's one cattrs converter, as leniently as the v1 answer:
unknown fields are ignored, optional ones may be missing, and a body that is not the
documented shape raises :class:`~ideogram_async.errors.ResponseFormatError`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import attrs

from ..errors import ResponseFormatError, snippet
from ..models import UpscaledImage, structure

__all__ = [
    "Generation",
    "PriceQuote",
    "QuoteItem",
    "QuoteSummary",
    "V2UpscaleResponse",
    "V2UpscaledImage",
]

_MICRO = Decimal(1_000_000)


@attrs.frozen(kw_only=True)
class V2UpscaledImage(UpscaledImage):
    """One v2 result image; every field is optional.

    When the safety check withholds the image, ``url`` is null and ``is_image_safe``
    false: :attr:`withheld` is then true, there is nothing to download, and the
    upscale still ran and **is billed**. Result links expire after 24 hours.
    """

    object_type: str | None = None
    asset_id: str | None = None

    @property
    def withheld(self) -> bool:
        """Whether the safety check withheld this image (no URL; billed all the same)."""
        return self.is_image_safe is False or not self.url


@attrs.frozen(kw_only=True)
class V2UpscaleResponse:
    """The answer to a v2 upscale: the generation's id, the output size and the images.

    ``data`` is empty when the upscale was submitted to run in the background; the
    images then come with the finished :class:`Generation`.
    """

    generation_id: str
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    data: list[V2UpscaledImage] = attrs.field(factory=list)


@attrs.frozen(kw_only=True)
class PriceQuote:
    """What an upscale would cost, from a dry run that ran, stored and billed nothing.

    ``qualifier`` is ``exact`` or ``estimate``; an estimate may carry
    ``upper_bound_usd_micros``, the most it can cost. Amounts are integers:
    ``usd_micros`` 60000 is $0.06, ``credit_millis`` 1000 is one credit.
    """

    billing_identifier: str
    quantity: int
    usd_micros: int
    credit_millis: int
    qualifier: str
    upper_bound_usd_micros: int | None = None

    @property
    def exact(self) -> bool:
        """Whether the price is exact rather than an estimate."""
        return self.qualifier == "exact"

    @property
    def usd(self) -> Decimal:
        """The price in US dollars, exactly (``Decimal("0.06")``)."""
        return self.usd_micros / _MICRO

    @property
    def upper_bound_usd(self) -> Decimal:
        """The most it can cost in US dollars: the upper bound if given, else the price."""
        bound = self.upper_bound_usd_micros
        return (self.usd_micros if bound is None else bound) / _MICRO


@attrs.frozen(kw_only=True)
class QuoteItem:
    """The price of one image of a batch quote, or why it could not be priced."""

    index: int
    """Position of the image in the input (0-based)."""
    source: Any
    """The image as it was given."""
    quote: PriceQuote | None
    error: Exception | None
    """Why it was not priced (e.g. a ``ValidationError`` for an output over 8192 px)."""

    @property
    def ok(self) -> bool:
        """Whether the image was priced."""
        return self.error is None


@attrs.frozen(kw_only=True)
class QuoteSummary:
    """The prices of many images, in input order, with exact and estimated sums apart.

    ``total_usd`` is what the priced images are expected to cost; ``upper_bound_usd``
    the most they can (each estimate at its upper bound). Images that could not be
    priced (``failed``) are in neither sum.
    """

    items: list[QuoteItem]

    @property
    def failed(self) -> list[QuoteItem]:
        """The images that could not be priced."""
        return [item for item in self.items if not item.ok]

    def _sum(self, value: Callable[[PriceQuote], int], *, exact: bool | None = None) -> Decimal:
        micros = sum(
            value(item.quote)
            for item in self.items
            if item.quote is not None and exact in (None, item.quote.exact)
        )
        return micros / _MICRO

    @property
    def exact_usd(self) -> Decimal:
        """The sum of the exact prices, in US dollars."""
        return self._sum(lambda quote: quote.usd_micros, exact=True)

    @property
    def estimated_usd(self) -> Decimal:
        """The sum of the estimated prices, in US dollars."""
        return self._sum(lambda quote: quote.usd_micros, exact=False)

    @property
    def total_usd(self) -> Decimal:
        """Exact plus estimated, in US dollars."""
        return self._sum(lambda quote: quote.usd_micros)

    @property
    def upper_bound_usd(self) -> Decimal:
        """The most it can cost: exact prices plus each estimate's upper bound."""
        return self._sum(lambda quote: quote.upper_bound_usd_micros or quote.usd_micros)

    @property
    def credit_millis(self) -> int:
        """The credits of every priced image, in thousandths."""
        return sum(item.quote.credit_millis for item in self.items if item.quote is not None)


@attrs.frozen(kw_only=True)
class Generation:
    """A v2 generation as polled: ``pending``, ``completed`` (with ``data``) or ``failed``.

    A failed generation carries ``failure_reason`` (e.g. ``content_policy_violation``)
    and is not billed; ``usage_cost_usd_micros`` is what a completed one cost, when
    the service says.
    """

    generation_id: str
    status: str
    created: datetime | None = None
    failure_reason: str | None = None
    response_type: str | None = None
    data: list[V2UpscaledImage] = attrs.field(factory=list)
    usage_cost_usd_micros: int | None = None

    @property
    def done(self) -> bool:
        """Whether the generation has finished, successfully or not."""
        return self.status in ("completed", "failed")


def _is(value: object, kind: type) -> bool:
    """``isinstance``, except that a bool is not an int."""
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def _load(body: str, status: int, required: dict[str, type], what: str) -> dict[str, Any]:
    """The JSON object of ``body``, with each ``required`` key present and of its type."""
    try:
        raw = json.loads(body)
    except ValueError:
        raise ResponseFormatError(
            f"the service answered HTTP {status} with a body that is not JSON: "
            f"{snippet(body)!r}; check base_url points at Ideogram's API",
            body=body,
            status=status,
        ) from None
    if not isinstance(raw, dict):
        raise ResponseFormatError(
            f"the service answered HTTP {status} with JSON that is not {what}: {snippet(body)!r}",
            body=body,
            status=status,
        )
    if what == "a price quote" and "generation_id" in raw and "usd_micros" not in raw:
        raise ResponseFormatError(
            f"the service answered a dry run (HTTP {status}) with an upscale result instead "
            f"of a price quote, so it may have run and billed the upscale; check base_url "
            f"points at Ideogram's API: {snippet(body)!r}",
            body=body,
            status=status,
        )
    wrong = [key for key, kind in required.items() if not _is(raw.get(key), kind)]
    if wrong:
        raise ResponseFormatError(
            f"the service answered HTTP {status} without {what}'s "
            f"{', '.join(repr(k) for k in wrong)}: {snippet(body)!r}",
            body=body,
            status=status,
        )
    return raw


def parse_upscale(body: str, status: int, *, background: bool = False) -> V2UpscaleResponse:
    """A v2 upscale answer; ``data`` is required unless it was submitted in the background."""
    required: dict[str, type] = {"generation_id": str}
    if not background:
        required["data"] = list
    raw = _load(body, status, required, "an upscale result")
    return structure(raw, V2UpscaleResponse, body, status)


def parse_quote(body: str, status: int) -> PriceQuote:
    """A dry run's price quote. An upscale result here means the dry run was not honoured."""
    required = {
        "billing_identifier": str,
        "quantity": int,
        "usd_micros": int,
        "credit_millis": int,
        "qualifier": str,
    }
    raw = _load(body, status, required, "a price quote")
    return structure(raw, PriceQuote, body, status)


def parse_generation(body: str, status: int) -> Generation:
    """A polled generation's state."""
    raw = _load(body, status, {"generation_id": str, "status": str}, "a generation")
    return structure(raw, Generation, body, status)
