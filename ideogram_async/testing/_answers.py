"""What the emulator sends back: canned results, timestamps and injected faulty answers."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from aiohttp import web

from ._faults import Fault
from ._images import solid_png
from ._stats import Route

__all__ = ["FIXED_PNG", "FIXED_SIZE", "TRUNCATED_JSON", "created", "drop", "fault_response"]

FIXED_PNG = solid_png(2, 2)
"""The result of ``upscale=False``: a 2x2 PNG, as if a 1x1 input had been upscaled."""
FIXED_SIZE = (2, 2)
TRUNCATED_JSON = json.dumps(
    {
        "created": "2000-01-23T04:56:07.000Z",
        "data": [{"seed": 1, "prompt": "truncated", "resolution": "2x2", "is_image_safe": True}],
    }
).encode()
"""What a truncated upscale answer starts to send."""


def created(route: Route) -> str:
    """The ``created`` timestamp in the style of each flavor."""
    now = datetime.now(UTC)
    if route == "proxy":
        return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
    return now.replace(microsecond=0).isoformat(sep=" ")


def drop(request: web.Request) -> web.Response:
    """Close the connection without answering (the returned response is never sent)."""
    if request.transport is not None:
        request.transport.close()
    return web.Response()


async def fault_response(
    request: web.Request, fault: Fault, sample: bytes, sample_type: str
) -> web.StreamResponse:
    """Answer as ``fault`` (any kind but ``slow``) says; a truncated answer sends half of
    ``sample``, of content type ``sample_type``."""
    if fault.kind in ("drop", "drop_before_body"):
        return drop(request)
    if fault.kind != "truncate":
        return web.Response(
            status=fault.code,
            text=fault.body,
            content_type=fault.content_type,
            headers=dict(fault.headers),
        )
    response = web.StreamResponse(headers={"Content-Type": sample_type})
    response.content_length = len(sample)
    response.force_close()
    await response.prepare(request)
    await response.write(sample[: len(sample) // 2])
    if request.transport is not None:
        request.transport.close()
    return response
