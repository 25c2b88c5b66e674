"""The emulator's allowance: places (images) in flight, the service's 429 over them, and
waiting for a count (of requests or places) to be reached."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal

from aiohttp import web

from ._multipart import Body, parse_fields
from ._stats import EmulatorStats

__all__ = ["AllowanceBody", "Places", "Threshold", "places_of"]

AllowanceBody = Literal["full", "no-number", "empty"]
"""What an over-the-allowance 429 carries: the service's whole body, the body without
``max_inflight_requests`` (as a proxy may rewrite it), or no body at all."""


def places_of(body: Body) -> int:
    """The places a request takes: its ``num_images`` when a whole number, at least 1 (a bad
    one fails later)."""
    fields = parse_fields(body.image_request or "") or {}
    count = fields.get("num_images")
    return max(count, 1) if isinstance(count, int) and not isinstance(count, bool) else 1


def _over_allowance(allowance: int, what: AllowanceBody) -> web.Response:
    """The service's 429 ``inflight_limit``, or what ``what`` leaves of it."""
    if what == "empty":
        return web.Response(status=429)
    body: dict[str, Any] = {
        "error": f"Too many requests in flight: the organization's allowance is {allowance} images",
        "reject_reason": "inflight_limit",
        "max_inflight_requests": allowance,
        "task_completion_speed": "fast",
    }
    if what == "no-number":
        del body["max_inflight_requests"]
    return web.json_response(body, status=429)


class Threshold:
    """Tasks waiting for a counter to reach a value; :meth:`reached` wakes them."""

    def __init__(self) -> None:
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    async def wait(self, now: int, count: int) -> None:
        """Return once the counter (``now`` at the call) reaches ``count``."""
        if now >= count:
            return
        waiter = asyncio.get_running_loop().create_future()
        entry = (count, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        finally:
            self._waiters.remove(entry)

    def reached(self, now: int) -> None:
        """The counter is now ``now``: wake whoever waited for it."""
        for count, waiter in self._waiters:
            if now >= count and not waiter.done():
                waiter.set_result(None)


class Places:
    """The places held by the requests an emulator is working on, and its allowance.

    ``stats`` returns the emulator's current stats (they are replaced when reset).
    """

    def __init__(
        self,
        allowance: int | None,
        body: AllowanceBody,
        clock: Callable[[], float],
        stats: Callable[[], EmulatorStats],
    ) -> None:
        if allowance is not None and allowance < 1:
            raise ValueError(f"allowance must be >= 1 image in flight, got {allowance!r}")
        if body not in ("full", "no-number", "empty"):
            raise ValueError(f"allowance_body must be 'full', 'no-number' or 'empty', got {body!r}")
        self._allowance = allowance
        self._body = body
        self._clock = clock
        self._stats = stats
        self._reached = Threshold()

    def refuse(self, places: int) -> web.Response | None:
        """The service's 429 when ``places`` more do not fit the allowance, else ``None``."""
        stats = self._stats()
        if self._allowance is None or stats.places_in_use + places <= self._allowance:
            return None
        stats.rejected_over_allowance += 1
        return _over_allowance(self._allowance, self._body)

    @contextlib.contextmanager
    def holding(self, places: int) -> Iterator[None]:
        """Hold ``places`` for the block, counting them in the stats."""
        stats = self._stats()
        stats.places_in_use += places
        stats.peak_places_in_use = max(stats.peak_places_in_use, stats.places_in_use)
        self._reached.reached(stats.places_in_use)
        started = self._clock()
        try:
            yield
        finally:
            stats = self._stats()
            stats.places_in_use -= places
            stats.busy_place_seconds += places * (self._clock() - started)

    async def wait(self, count: int) -> None:
        """Return once at least ``count`` places are held."""
        await self._reached.wait(self._stats().places_in_use, count)
