"""The emulator's allowance: places (images) in flight, the service's 429 over them, and
waiting for a count (of requests or places) to be reached."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from aiohttp import web

from ._multipart import Body, parse_fields

__all__ = ["AllowanceBody", "Threshold", "over_allowance", "places_of"]

AllowanceBody = Literal["full", "no-number", "empty"]
"""What an over-the-allowance 429 carries: the service's whole body, the body without
``max_inflight_requests`` (as a proxy may rewrite it), or no body at all."""


def places_of(body: Body) -> int:
    """The places a request takes: its ``num_images`` when valid (else 1; it fails later)."""
    fields = parse_fields(body.image_request or "") or {}
    count = fields.get("num_images")
    return count if isinstance(count, int) and not isinstance(count, bool) and count >= 1 else 1


def over_allowance(allowance: int, what: AllowanceBody) -> web.Response:
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
