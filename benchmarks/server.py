"""A minimal upscale server for the workloads where the emulator's own CPU would dominate.

It does the least a faithful server must: check the key, stream the multipart body
(parsing the ``image_request`` JSON, reading and discarding ``image_file`` in chunks),
wait an optional latency and answer the documented JSON. It never decodes the image
and keeps nothing, so its CPU and memory stay flat however long a run is.

Run it as ``python -m benchmarks.server --port 0 [--latency S] [--fault-rate R]``;
it prints one line ending with its base URL once it listens, then serves until
SIGINT or SIGTERM. ``--fault-rate`` answers that share of requests with
``503`` and ``Retry-After: 0`` at once, like the emulator's status faults.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
from typing import Any

from aiohttp import BodyPartReader, web

__all__ = ["main"]

API_KEY = "test-key"
"""The key clients must send as ``Authorization: Bearer <key>``."""
UPSCALE_PATH = "/ideogram/upscale"
"""The proxy-flavor route."""
_CHUNK_SIZE = 256 * 1024
_CREATED = "2000-01-23T04:56:07.000Z"
_UNAUTHORIZED = json.dumps({"detail": "Invalid or missing API key"})
_FAULT = json.dumps({"detail": "Service Unavailable (injected fault)"})


async def _read_upload(request: web.Request) -> tuple[dict[str, Any], int]:
    """The parsed ``image_request`` object and the byte count of ``image_file``.

    Raises ``HTTPBadRequest`` unless both parts are there, the first a JSON object.
    """
    fields: Any = None
    size = 0
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise web.HTTPBadRequest(text="nested multipart is not expected")
        if part.name == "image_request":
            fields = json.loads(await part.text())
        elif part.name == "image_file":
            while chunk := await part.read_chunk(_CHUNK_SIZE):
                size += len(chunk)
        else:
            await part.release()
    if not isinstance(fields, dict) or not size:
        raise web.HTTPBadRequest(text="an image_request object and a non-empty image_file needed")
    return fields, size


def make_app(latency: float, fault_rate: float, seed: int) -> web.Application:
    """The application: one ``POST`` route answering the documented JSON."""
    rng = random.Random(seed)

    async def upscale(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return web.Response(status=401, text=_UNAUTHORIZED, content_type="application/json")
        fields, _ = await _read_upload(request)
        if fault_rate and rng.random() < fault_rate:
            return web.Response(
                status=503,
                text=_FAULT,
                content_type="application/json",
                headers={"Retry-After": "0"},
            )
        if latency:
            await asyncio.sleep(latency)
        item = {
            "seed": fields.get("seed", 1),
            "prompt": fields.get("prompt", "An upscaled image"),
            "resolution": "2048x2048",
            "url": f"http://{request.host}/images/{rng.getrandbits(64):016x}.png",
            "is_image_safe": True,
        }
        return web.json_response({"created": _CREATED, "data": [item]})

    app = web.Application()
    app.router.add_post(UPSCALE_PATH, upscale)
    return app


async def serve(port: int, latency: float, fault_rate: float, seed: int) -> None:
    """Serve on 127.0.0.1 until SIGINT or SIGTERM, printing the base URL once listening."""
    runner = web.AppRunner(make_app(latency, fault_rate, seed), access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        # A deep backlog: a fan-out opens all its connections at once.
        site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
        await site.start()
        port = runner.addresses[0][1]
        print(f"benchmark server listening on http://127.0.0.1:{port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.server``: parse the options and serve."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.server", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port [0]")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per answer [0]")
    parser.add_argument(
        "--fault-rate", type=float, default=0.0, help="share of 503 + Retry-After: 0 answers [0]"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault draws [0]")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.latency, args.fault_rate, args.seed))


if __name__ == "__main__":
    main()
