"""What the emulator knows about v2 upscales: checks, output sizes, prices, generations.

Pure bookkeeping, no HTTP: the routes (``_v2_routes.py``) call it. Options are checked
with the library's own option classes (the same ranges the service documents). Prices
are made up but shaped like Ideogram's quotes: billed per started output megapixel,
exact for a named model, an estimate with an upper bound for ``auto``.

Prompt keywords trigger the service's safety outcomes on demand:
``[withhold]`` withholds the result image (``url`` null, still billed), ``[unsafe]``
fails the prompt's safety check (422), ``[fail]`` makes a background generation fail
with ``content_policy_violation``.
"""

from __future__ import annotations

import itertools
import math
import secrets
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import attrs

from ..errors import ValidationError
from ..v2 import MAX_OUTPUT_SIDE, MODELS, NanoBananaPro, options_from_strings

__all__ = ["Generations", "PollWindow", "V2Refusal", "check_request", "output_size", "price"]

WITHHOLD, UNSAFE, FAIL = "[withhold]", "[unsafe]", "[fail]"
_FACTORS = {"x2": 2, "x4": 4, "x8": 8}
_TIERS = {"1K": 1024, "2K": 2048, "4K": 4096}
# usd_micros per started output megapixel; nano-banana-pro is billed per image.
_RATE = {
    "auto": 10_000,
    "topaz-standard-2": 5_000,
    "topaz-text-refine": 6_000,
    "topaz-wonder-3-5": 8_000,
    "topaz-bloom-2": 12_000,
    "topaz-redefine": 15_000,
}
_NANO_PRICE = {"1K": 40_000, "2K": 60_000, "4K": 120_000}
_CREDIT_MICROS = 40_000  # one credit = $0.04, in the made-up price list


class V2Refusal(Exception):
    """The answer the service gives a bad v2 request: a status and a detail."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail


def check_request(model: str, fields: dict[str, str]) -> dict[str, str]:
    """Check a model's form fields as the service does; return the option fields.

    ``async`` and ``webhook_url`` are the call's, not the model's, and are taken out.
    Raises :class:`V2Refusal`: 404 for an unknown model, 400 for a bad option, 422
    for a prompt that fails the safety check.
    """
    if model not in MODELS:
        raise V2Refusal(404, f"Unknown upscale model {model!r}.")
    options = {k: v for k, v in fields.items() if k not in ("async", "webhook_url")}
    if fields.get("async", "false") not in ("true", "false"):
        raise V2Refusal(400, "async must be true or false.")
    webhook = fields.get("webhook_url")
    if webhook is not None and (not webhook.startswith("https://") or len(webhook) > 2048):
        raise V2Refusal(400, "webhook_url must be an https URL of at most 2048 characters.")
    try:
        options_from_strings(model, options)
    except ValidationError as exc:
        raise V2Refusal(400, str(exc)) from None
    if UNSAFE in options.get("prompt", ""):
        raise V2Refusal(422, "The prompt failed the safety check.")
    return options


def output_size(model: str, options: dict[str, str], width: int, height: int) -> tuple[int, int]:
    """The result's size, or :class:`V2Refusal` (400) past 8192 px or a reached tier."""
    if model == NanoBananaPro.model:
        # A tier is an area: 2K is about 2048 x 2048 pixels, in the source's proportions.
        tier = options.get("resolution_tier", "2K")
        area = _TIERS[tier] ** 2
        if width * height >= area:
            raise V2Refusal(400, f"The source ({width}x{height}) already reaches the {tier} tier.")
        # Below the tier's area, so the scale is over 1 and each side at least a pixel.
        scale = math.sqrt(area / (width * height))
        return round(width * scale), round(height * scale)
    factor = _FACTORS[options.get("upscale_factor", "x2")]
    out = (width * factor, height * factor)
    if max(out) > MAX_OUTPUT_SIDE:
        raise V2Refusal(
            400,
            f"The output ({out[0]}x{out[1]}) would exceed {MAX_OUTPUT_SIDE} px on a side.",
        )
    return out


def price(model: str, options: dict[str, str], size: tuple[int, int]) -> dict[str, Any]:
    """A price quote body (``object: price_quote``) for an output of ``size``."""
    if model == NanoBananaPro.model:
        tier = options.get("resolution_tier", "2K")
        quantity, micros = 1, _NANO_PRICE[tier]
    else:
        quantity = math.ceil(size[0] * size[1] / 1_000_000)
        micros = quantity * _RATE[model]
    quote: dict[str, Any] = {
        "object": "price_quote",
        "billing_identifier": f"upscale.{model}",
        "quantity": quantity,
        "usd_micros": micros,
        "credit_millis": micros * 1000 // _CREDIT_MICROS,
        "qualifier": "exact",
    }
    if model == "auto":
        quote["qualifier"] = "estimate"
        quote["upper_bound_usd_micros"] = quantity * max(_RATE.values())
    return quote


def created_now() -> str:
    """A ``created`` timestamp like the service's."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@attrs.define
class _Generation:
    created: str
    due: float
    items: list[dict[str, Any]]
    failure_reason: str | None
    cost: int


class Generations:
    """Background generations: each completes (or fails) ``delay`` seconds after submission."""

    def __init__(self, clock: Callable[[], float], delay: float) -> None:
        self._clock = clock
        self.delay = delay
        self._by_id: dict[str, _Generation] = {}
        self._serials = itertools.count()

    def submit(
        self, items: list[dict[str, Any]], *, fail: bool, cost: int, delay: float | None = None
    ) -> str:
        """Record a generation done after ``delay`` (default: the set one); return its id."""
        generation_id = f"gen-{next(self._serials)}-{secrets.token_hex(4)}"
        self._by_id[generation_id] = _Generation(
            created=created_now(),
            due=self._clock() + (self.delay if delay is None else delay),
            items=items,
            failure_reason="content_policy_violation" if fail else None,
            cost=cost,
        )
        return generation_id

    def state(self, generation_id: str) -> dict[str, Any] | None:
        """The body of ``GET /v2/generations/{id}``, or ``None`` for an unknown id."""
        generation = self._by_id.get(generation_id)
        if generation is None:
            return None
        body: dict[str, Any] = {
            "generation_id": generation_id,
            "status": "pending",
            "created": generation.created,
        }
        if self._clock() < generation.due:
            return body
        if generation.failure_reason is not None:
            return {**body, "status": "failed", "failure_reason": generation.failure_reason}
        return {
            **body,
            "status": "completed",
            "response_type": "url",
            "data": [{**item, "object_type": "image"} for item in generation.items],
            "usage_cost_usd_micros": generation.cost,
        }


class PollWindow:
    """At most ``limit`` polls in any ``period`` seconds (a sliding window)."""

    def __init__(self, clock: Callable[[], float], limit: int, period: float) -> None:
        self._clock = clock
        self.limit = limit
        self.period = period
        self._times: deque[float] = deque()

    def admit(self) -> float | None:
        """Count a poll and return ``None``, or refuse it: the seconds to wait instead."""
        now = self._clock()
        while self._times and self._times[0] <= now - self.period:
            self._times.popleft()
        if len(self._times) >= self.limit:
            return self._times[0] + self.period - now
        self._times.append(now)
        return None
