"""The emulator: an aiohttp.web server that speaks both flavors of the upscale endpoint.

It checks the key, streams the multipart body (hashing the file as it arrives), answers
400/413/422 like the service, upscales 2x with Pillow in a worker thread, and serves the
results at short-lived URLs on its own host. Faults and latency are injected on demand,
and everything it sees is counted in :class:`EmulatorStats`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from ._answers import FIXED_PNG, FIXED_SIZE, TRUNCATED_JSON, created, drop, fault_response
from ._faults import Fault, FaultPlan
from ._images import require_pillow, upscale_2x
from ._multipart import UPSCALE_FIELDS, Body, Reject, check_upscale, parse_fields, read_body
from ._places import AllowanceBody, Places, Threshold, places_of
from ._stats import EmulatorStats, ReceivedUpload, Route
from ._store import ImageStore
from ._v2_routes import V2Routes

__all__ = ["Emulator"]

_PROXY_PATH = "/ideogram/upscale"
_OFFICIAL_PATH = "/upscale"
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_UNAUTHORIZED = "Invalid or missing API key"
_MADE_UP_PROMPT = "A crisp, detailed upscale of the original image, with sharp edges."
_log = logging.getLogger("ideogram_async.testing")
# Client address, request line (never a header, so never a key), status, size, seconds.
_LOG_FORMAT = '%a "%r" %s %b bytes %Tfs'


def _detail(status: int, detail: str) -> web.Response:
    return Reject(status, detail).response()


class Emulator:
    """A local Ideogram upscale service for tests, demos and benchmarks.

    ``async with Emulator() as emu:`` serves on ``emu.base_url`` (a free port by
    default): ``POST {base_url}/ideogram/upscale`` with ``Authorization: Bearer KEY``
    (proxy flavor), ``POST {base_url}/upscale`` with ``Api-Key: KEY`` (official flavor),
    and the results at ``GET {base_url}/images/{token}.png`` for ``image_ttl`` seconds.

    ``latency`` delays every normal answer (seconds, or a ``(min, max)`` range drawn
    from ``random.Random(seed)``). ``faults`` governs the upscale routes and
    ``image_faults`` the image routes. ``upscale=False`` skips decoding (no Pillow
    needed) and answers with a fixed 2x2 PNG. ``clock`` (seconds, monotonic) decides
    when result URLs expire; tests inject a fake one instead of sleeping.

    Ideogram's v2 upscalers are served too, with ``Api-Key: KEY``: ``POST
    {base_url}/v2/image/upscale/{model}`` (``?dry_run=true`` for a price quote) and
    ``GET {base_url}/v2/generations/{id}``. A background generation completes
    ``generation_delay`` seconds (by ``clock``) after it was submitted; polls over
    ``poll_limit`` ``(polls, seconds)`` get a 429 with ``Retry-After``. The prompt
    keywords ``[withhold]``, ``[unsafe]`` and ``[fail]`` trigger a withheld image, a
    failed prompt check (422) and a failed generation.

    ``allowance`` (images in flight) enforces the service's limit: a request holds
    ``num_images`` places (1 by default) from the moment its body is read until its
    answer, and one that does not fit is refused with the service's 429 ``{"error",
    "reject_reason": "inflight_limit", "max_inflight_requests": N,
    "task_completion_speed": "fast"}``, or what ``allowance_body`` leaves of it.
    Places are counted in :attr:`stats` with or without an allowance.
    """

    def __init__(
        self,
        api_key: str = "test-key",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float | tuple[float, float] = 0.0,
        faults: FaultPlan | None = None,
        image_faults: FaultPlan | None = None,
        upscale: bool = True,
        max_file_size: int = 25 * 1024 * 1024,
        image_ttl: float = 600.0,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        allowance: int | None = None,
        allowance_body: AllowanceBody = "full",
        generation_delay: float = 0.0,
        poll_limit: tuple[int, float] = (1000, 10.0),
    ) -> None:
        low, high = latency if isinstance(latency, tuple) else (latency, latency)
        if not 0 <= low <= high:
            raise ValueError(f"latency must be >= 0 seconds (min <= max), got {latency!r}")
        if upscale:
            require_pillow()
        self._api_key = api_key.encode()
        self._host = host
        self._port = port
        self._latency = (low, high)
        self._faults = faults
        self._image_faults = image_faults
        self._upscale = upscale
        self._max_file_size = max_file_size
        self._rng = random.Random(seed)
        self._clock = clock
        self._stats = EmulatorStats()
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._open = asyncio.Event()
        self._open.set()
        self._in_flight_reached = Threshold()
        self._places = Places(allowance, allowance_body, clock, lambda: self._stats)
        self._images = ImageStore(image_ttl, clock)
        self._v2_max_file_size = 50 * 1024 * 1024
        self._v2 = V2Routes(self, generation_delay=generation_delay, poll_limit=poll_limit)

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Start serving on ``host:port``."""
        if self._runner is not None:
            raise RuntimeError("The emulator is already running.")
        app = web.Application()
        for method, path, handler in self._routes():
            app.router.add_route(method, path, handler)
        # handler_cancellation: a client that gives up (a timeout test) ends its handler.
        # Each request is logged at INFO to "ideogram_async.testing" (silent unless enabled).
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=_log, access_log_format=_LOG_FORMAT
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        port = runner.addresses[0][1]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self._host, self._host)
        self._base_url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        self._runner = runner

    async def stop(self) -> None:
        """Stop serving: cancel the requests in progress and close every connection."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for task in self._handlers:
            task.cancel()
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- what tests use ----------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running emulator."""
        if self._base_url is None:
            raise RuntimeError("The emulator has not been started.")
        return self._base_url

    @property
    def api_key(self) -> str:
        """The key clients must send (``Authorization: Bearer`` or ``Api-Key``)."""
        return self._api_key.decode()

    @property
    def stats(self) -> EmulatorStats:
        """What the emulator saw since it was created or :meth:`reset_stats` was called."""
        return self._stats

    def reset_stats(self) -> None:
        """Start counting afresh (requests still in flight are carried over)."""
        old = self._stats
        self._stats = EmulatorStats(
            in_flight=old.in_flight,
            peak_in_flight=old.in_flight,
            places_in_use=old.places_in_use,
            peak_places_in_use=old.places_in_use,
        )

    def pause(self) -> None:
        """Hold upscale requests once their body is read, until :meth:`resume`.

        With :meth:`wait_in_flight` this makes concurrency tests deterministic: pause,
        fire requests, wait until N are held, assert, resume.
        """
        self._open.clear()

    def resume(self) -> None:
        """Let held and future upscale requests proceed."""
        self._open.set()

    async def wait_in_flight(self, count: int) -> None:
        """Wait until at least ``count`` upscale requests are inside the handler."""
        await self._in_flight_reached.wait(self._stats.in_flight, count)

    async def wait_places(self, count: int) -> None:
        """Wait until at least ``count`` places (images) are held by requests in progress.

        Unlike :meth:`wait_in_flight`, a request refused as over the allowance never
        counts, so ``pause(); ...; await wait_places(n)`` is exact.
        """
        await self._places.wait(count)

    # -- upscale routes ----------------------------------------------------------------

    def _routes(self) -> list[tuple[str, str, _Handler]]:
        """Every route served: (method, path, handler). A new route is one more entry."""
        return [
            ("POST", _PROXY_PATH, self._upscale_route("proxy")),
            ("POST", _OFFICIAL_PATH, self._upscale_route("official")),
            ("GET", "/images/{token}.png", self._image),
            *self._v2.routes(),
        ]

    def _upscale_route(self, route: Route) -> _Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle(request, lambda request: self._process(request, route))

        return handle

    def _authorized(self, request: web.Request, route: Route) -> bool:
        if route == "official":
            token = request.headers.get("Api-Key")
            if token is None:
                return False
        else:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer":
                return False
        return hmac.compare_digest(token.strip().encode("utf-8", "surrogateescape"), self._api_key)

    def _count_in_flight(self, delta: int) -> None:
        stats = self._stats
        stats.in_flight += delta
        stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
        self._in_flight_reached.reached(stats.in_flight)

    @contextlib.contextmanager
    def _cancellable(self) -> Iterator[None]:
        """Register the running handler so that :meth:`stop` can cancel it."""
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            yield
        finally:
            self._handlers.discard(task)

    async def _handle(self, request: web.Request, process: _Handler) -> web.StreamResponse:
        """Count an upscale request (v1 or v2) in flight while ``process`` answers it."""
        self._stats.requests += 1
        self._count_in_flight(1)
        try:
            with self._cancellable():
                response = await process(request)
        except Reject as reject:
            response = reject.response()
        finally:
            self._count_in_flight(-1)
        if request.transport is not None and not request.transport.is_closing():
            self._stats.responses_by_status[response.status] += 1
        return response

    async def _process(self, request: web.Request, route: Route) -> web.StreamResponse:
        """Auth, fault decision, body, pause, fault, latency, validation, upscale."""
        if not self._authorized(request, route):
            return _detail(401, _UNAUTHORIZED)
        plan = self._faults
        fault = plan.next_fault() if plan is not None and not plan.per_upload else None
        if fault is not None and fault.kind == "drop_before_body":
            self._stats.faults_injected[fault.kind] += 1
            return drop(request)
        body = await read_body(
            request, max_file_size=self._max_file_size, keep=self._upscale, received=self._received
        )
        if plan is not None and plan.per_upload:
            fault = plan.next_fault(body.sha256)
        if body.image_request is not None and body.has_file:
            self._record(request, route, body)
        places = places_of(body)
        refused = self._places.refuse(places)
        if refused is not None:
            return refused
        with self._places.holding(places):
            return await self._run(request, route, body, fault)

    async def _run(
        self, request: web.Request, route: Route, body: Body, fault: Fault | None
    ) -> web.StreamResponse:
        """Pause, fault, latency and upscale of a request that holds its places."""
        faulty = await self._pace(request, fault)
        if faulty is not None:
            return faulty
        return await self._success(request, route, body)

    async def _pace(self, request: web.Request, fault: Fault | None) -> web.StreamResponse | None:
        """Wait while paused, then the fault's answer (if it makes one) or the latency."""
        await self._open.wait()
        if fault is not None:
            faulty = await self._inject(request, fault, TRUNCATED_JSON, "application/json")
            if faulty is not None:
                return faulty
        low, high = self._latency
        if high:
            await asyncio.sleep(self._rng.uniform(low, high))
        return None

    def _received(self, size: int) -> None:
        self._stats.bytes_received += size

    def _record(self, request: web.Request, route: Route, body: Body) -> None:
        assert body.image_request is not None
        upload = ReceivedUpload(
            route=route,
            headers={name.lower(): value for name, value in request.headers.items()},
            fields=parse_fields(body.image_request) or {},
            image_request_raw=body.image_request,
            field_content_type=body.field_content_type,
            filename=body.filename,
            content_type=body.content_type,
            size=body.size,
            sha256=body.sha256,
            part_names=body.part_names,
        )
        self._stats.uploads.append(upload)
        self._stats.last_upload = upload

    async def _success(self, request: web.Request, route: Route, body: Body) -> web.Response:
        """Validate the request, upscale the image and describe the results."""
        fields = check_upscale(body, UPSCALE_FIELDS)
        png, (width, height) = FIXED_PNG, FIXED_SIZE
        if body.data is not None:
            try:
                png, width, height = await asyncio.to_thread(upscale_2x, body.data)
            except Exception as exc:  # Pillow raises many types for undecodable data
                raise Reject(400, f"image_file could not be decoded as an image: {exc}") from exc
        origin = f"{request.scheme}://{request.host}"
        items = []
        for _ in range(fields.get("num_images", 1)):
            item: dict[str, Any] = {
                "seed": fields["seed"] if "seed" in fields else self._rng.randrange(2**31),
                "prompt": fields.get("prompt") or _MADE_UP_PROMPT,
                "resolution": f"{width}x{height}",
                "url": f"{origin}/images/{self._images.put(png)}.png",
                "is_image_safe": True,
            }
            if route == "official":
                item["style_type"] = "AUTO"  # the official API adds fields clients must ignore
            items.append(item)
        return web.json_response({"created": created(route), "data": items})

    async def _inject(
        self, request: web.Request, fault: Fault, sample: bytes, sample_type: str
    ) -> web.StreamResponse | None:
        """Count ``fault`` and inject it: its answer, or ``None`` once a slow one has waited."""
        self._stats.faults_injected[fault.kind] += 1
        if fault.kind == "slow":
            await asyncio.sleep(fault.delay)
            return None
        return await fault_response(request, fault, sample, sample_type)

    # -- image route -------------------------------------------------------------------

    async def _image(self, request: web.Request) -> web.StreamResponse:
        with self._cancellable():
            return await self._serve_image(request)

    async def _serve_image(self, request: web.Request) -> web.StreamResponse:
        self._stats.image_requests.append(
            {name.lower(): value for name, value in request.headers.items()}
        )
        token = request.match_info["token"]
        plan = self._image_faults
        fault = plan.next_fault(token) if plan is not None else None
        if fault is not None:
            faulty = await self._inject(request, fault, FIXED_PNG, "image/png")
            if faulty is not None:
                return faulty
        image = self._images.get(token)
        if image == "expired":
            return _detail(410, "This image URL has expired.")
        if image == "missing":
            return _detail(404, "No image at this URL.")
        self._stats.image_downloads += 1
        return web.Response(body=image, content_type="image/png")
