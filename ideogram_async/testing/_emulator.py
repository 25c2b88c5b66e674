"""The emulator: an aiohttp.web server that speaks both flavors of the upscale endpoint.

It checks the key, streams the multipart body (hashing the file as it arrives), answers
400/413/422 like the service, upscales 2x with Pillow in a worker thread, and serves the
results at short-lived URLs on its own host. Faults and latency are injected on demand,
and everything it sees is counted in :class:`EmulatorStats`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import random
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import attrs
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from ._faults import Fault, FaultPlan
from ._images import SNIFF_BYTES, require_pillow, sniff_image_type, solid_png, upscale_2x
from ._stats import EmulatorStats, ReceivedUpload, Route

__all__ = ["Emulator"]

_PROXY_PATH = "/ideogram/upscale"
_OFFICIAL_PATH = "/upscale"
_CHUNK_SIZE = 64 * 1024
_MAX_FIELD_SIZE = 1024 * 1024
_UNAUTHORIZED = "Invalid or missing API key"
_MADE_UP_PROMPT = "A crisp, detailed upscale of the original image, with sharp edges."
# Constraints of image_request values: name -> (lowest, highest) for the integers.
_INT_RANGES = {
    "resemblance": (1, 100),
    "detail": (1, 100),
    "seed": (0, 2_147_483_647),
    "num_images": (1, 8),
}
_MAGIC_PROMPT_OPTIONS = ("AUTO", "ON", "OFF")
# The result of upscale=False: a fixed 2x2 PNG, as if a 1x1 input had been upscaled.
_FIXED_PNG = solid_png(2, 2)
_FIXED_SIZE = (2, 2)
# What a truncated upscale answer starts to send.
_TRUNCATED_JSON = json.dumps(
    {
        "created": "2000-01-23T04:56:07.000Z",
        "data": [{"seed": 1, "prompt": "truncated", "resolution": "2x2", "is_image_safe": True}],
    }
).encode()


class _Reject(Exception):
    """Ends the handling of a request early with a JSON ``{"detail": ...}`` answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@attrs.define
class _Body:
    """The parts of one multipart body, as streamed in."""

    part_names: list[str] = attrs.field(factory=list)
    image_request: str | None = None
    field_content_type: str | None = None
    has_file: bool = False
    filename: str | None = None
    content_type: str | None = None
    size: int = 0
    sha256: str = ""
    head: bytes = b""
    data: bytes | None = None


def _detail(status: int, detail: str) -> web.Response:
    return web.json_response({"detail": detail}, status=status)


def _show(value: object) -> str:
    """A short JSON rendering of a value for an error message."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _field_problems(fields: dict[str, Any]) -> list[str]:
    """Check the ``image_request`` values; return one message per bad value."""
    problems = []
    for name, (low, high) in _INT_RANGES.items():
        value = fields.get(name, low)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            problems.append(f"{name} must be an integer from {low} to {high}, got {_show(value)}")
    option = fields.get("magic_prompt_option", "AUTO")
    if option not in _MAGIC_PROMPT_OPTIONS:
        problems.append(f"magic_prompt_option must be one of AUTO, ON, OFF, got {_show(option)}")
    if "prompt" in fields and not isinstance(fields["prompt"], str):
        problems.append(f"prompt must be a string, got {_show(fields['prompt'])}")
    return problems


def _parse_fields(raw: str) -> dict[str, Any] | None:
    """Parse ``image_request`` into a dict, or None if it is not a JSON object."""
    try:
        parsed = json.loads(raw)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _created(route: Route) -> str:
    """The ``created`` timestamp in the style of each flavor."""
    now = datetime.now(UTC)
    if route == "proxy":
        return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
    return now.replace(microsecond=0).isoformat(sep=" ")


async def _read_field(part: BodyPartReader) -> str:
    """Read a text part, refusing more than ``_MAX_FIELD_SIZE`` bytes."""
    data = bytearray()
    while not part.at_eof():
        data += await part.read_chunk(_CHUNK_SIZE)
        if len(data) > _MAX_FIELD_SIZE:
            raise _Reject(413, f"{part.name} is larger than {_MAX_FIELD_SIZE} bytes.")
    try:
        return data.decode(part.get_charset("utf-8"))
    except (LookupError, UnicodeDecodeError) as exc:
        raise _Reject(400, f"{part.name} is not valid text: {exc}") from exc


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
        self._image_ttl = image_ttl
        self._rng = random.Random(seed)
        self._clock = clock
        self._stats = EmulatorStats()
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._open = asyncio.Event()
        self._open.set()
        self._in_flight_waiters: list[tuple[int, asyncio.Future[None]]] = []
        # Results: token -> (expiry time, PNG), plus the tokens in order of expiry.
        self._images: dict[str, tuple[float, bytes]] = {}
        self._expiries: deque[tuple[float, str]] = deque()
        self._serials = itertools.count()
        self._issued = 0

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Start serving on ``host:port``."""
        if self._runner is not None:
            raise RuntimeError("The emulator is already running.")
        app = web.Application()
        app.router.add_post(_PROXY_PATH, self._proxy_upscale)
        app.router.add_post(_OFFICIAL_PATH, self._official_upscale)
        app.router.add_get("/images/{token}.png", self._image)
        # handler_cancellation: a client that gives up (a timeout test) ends its handler.
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
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
    def stats(self) -> EmulatorStats:
        """What the emulator saw since it was created or :meth:`reset_stats` was called."""
        return self._stats

    def reset_stats(self) -> None:
        """Start counting afresh (requests still in flight are carried over)."""
        in_flight = self._stats.in_flight
        self._stats = EmulatorStats(in_flight=in_flight, peak_in_flight=in_flight)

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
        if self._stats.in_flight >= count:
            return
        waiter = asyncio.get_running_loop().create_future()
        entry = (count, waiter)
        self._in_flight_waiters.append(entry)
        try:
            await waiter
        finally:
            self._in_flight_waiters.remove(entry)

    # -- upscale routes ----------------------------------------------------------------

    async def _proxy_upscale(self, request: web.Request) -> web.StreamResponse:
        return await self._handle_upscale(request, "proxy")

    async def _official_upscale(self, request: web.Request) -> web.StreamResponse:
        return await self._handle_upscale(request, "official")

    def _authorized(self, request: web.Request, route: Route) -> bool:
        if route == "proxy":
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer":
                return False
        else:
            token = request.headers.get("Api-Key", "")
        return hmac.compare_digest(token.strip().encode("utf-8", "surrogateescape"), self._api_key)

    def _count_in_flight(self, delta: int) -> None:
        stats = self._stats
        stats.in_flight += delta
        stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
        for count, waiter in self._in_flight_waiters:
            if stats.in_flight >= count and not waiter.done():
                waiter.set_result(None)

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

    async def _handle_upscale(self, request: web.Request, route: Route) -> web.StreamResponse:
        self._stats.requests += 1
        self._count_in_flight(1)
        try:
            with self._cancellable():
                response = await self._process(request, route)
        except _Reject as reject:
            response = _detail(reject.status, reject.detail)
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
            return self._drop(request, fault)
        body = await self._read_body(request)
        if plan is not None and plan.per_upload:
            fault = plan.next_fault(body.sha256)
        if body.image_request is not None and body.has_file:
            self._record(request, route, body)
        await self._open.wait()
        if fault is not None:
            if fault.kind != "slow":
                return await self._answer_with_fault(
                    request, fault, _TRUNCATED_JSON, "application/json"
                )
            self._stats.faults_injected[fault.kind] += 1
            await asyncio.sleep(fault.delay)
        low, high = self._latency
        if high:
            await asyncio.sleep(self._rng.uniform(low, high))
        return await self._success(request, route, body)

    async def _read_body(self, request: web.Request) -> _Body:
        """Stream the multipart body part by part, hashing the file as it arrives."""
        if request.content_type != "multipart/form-data":
            raise _Reject(
                400,
                "Expected a multipart/form-data body with an image_request field "
                f"and an image_file file part, got {request.content_type!r}.",
            )
        body = _Body()
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                name = part.name if isinstance(part, BodyPartReader) else None
                body.part_names.append(name or "")
                if not isinstance(part, BodyPartReader) or name not in (
                    "image_request",
                    "image_file",
                ):
                    continue  # unknown parts are skipped, like the service does
                if name in body.part_names[:-1]:
                    raise _Reject(400, f"The {name} part was sent more than once.")
                if name == "image_request":
                    if part.filename is not None:
                        raise _Reject(
                            400, "image_request must be a plain form field, not a file part."
                        )
                    body.field_content_type = part.headers.get("Content-Type")
                    body.image_request = await _read_field(part)
                else:
                    await self._read_file(part, body)
        except (ValueError, HttpProcessingError, RequestPayloadError) as exc:
            raise _Reject(400, f"Malformed multipart body: {exc}") from exc
        return body

    async def _read_file(self, part: BodyPartReader, body: _Body) -> None:
        if part.filename is None:
            raise _Reject(400, "image_file must be a file part with a filename.")
        body.has_file = True
        body.filename = part.filename
        body.content_type = part.headers.get("Content-Type")
        digest = hashlib.sha256()
        kept: list[bytes] = []
        while not part.at_eof():
            chunk = await part.read_chunk(_CHUNK_SIZE)
            body.size += len(chunk)
            self._stats.bytes_received += len(chunk)
            if body.size > self._max_file_size:
                raise _Reject(
                    413, f"image_file is larger than the limit of {self._max_file_size} bytes."
                )
            digest.update(chunk)
            if len(body.head) < SNIFF_BYTES:
                body.head += chunk[: SNIFF_BYTES - len(body.head)]
            if self._upscale:
                kept.append(chunk)
        body.sha256 = digest.hexdigest()
        body.data = b"".join(kept) if self._upscale else None

    def _record(self, request: web.Request, route: Route, body: _Body) -> None:
        assert body.image_request is not None
        upload = ReceivedUpload(
            route=route,
            headers={name.lower(): value for name, value in request.headers.items()},
            fields=_parse_fields(body.image_request) or {},
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

    async def _success(self, request: web.Request, route: Route, body: _Body) -> web.Response:
        """Validate the request, upscale the image and describe the results."""
        if body.image_request is None:
            raise _Reject(400, "Missing the image_request form field (a JSON object string).")
        if not body.has_file:
            raise _Reject(400, "Missing the image_file file part.")
        fields = _parse_fields(body.image_request)
        if fields is None:
            raise _Reject(400, "image_request must be a JSON object string.")
        problems = _field_problems(fields)
        if problems:
            raise _Reject(422, "; ".join(problems) + ".")
        if body.size == 0:
            raise _Reject(400, "image_file is empty.")
        if sniff_image_type(body.head) is None:
            raise _Reject(
                400, "image_file is not a JPEG, PNG or WebP image (judged by its first bytes)."
            )
        png, (width, height) = _FIXED_PNG, _FIXED_SIZE
        if body.data is not None:
            try:
                png, width, height = await asyncio.to_thread(upscale_2x, body.data)
            except Exception as exc:  # Pillow raises many types for undecodable data
                raise _Reject(400, f"image_file could not be decoded as an image: {exc}") from exc
        origin = f"{request.scheme}://{request.host}"
        items = []
        for _ in range(fields.get("num_images", 1)):
            item: dict[str, Any] = {
                "seed": fields["seed"] if "seed" in fields else self._rng.randrange(2**31),
                "prompt": fields.get("prompt") or _MADE_UP_PROMPT,
                "resolution": f"{width}x{height}",
                "url": f"{origin}/images/{self._store(png)}.png",
                "is_image_safe": True,
            }
            if route == "official":
                item["style_type"] = "AUTO"  # the official API adds fields clients must ignore
            items.append(item)
        return web.json_response({"created": _created(route), "data": items})

    # -- faults ------------------------------------------------------------------------

    def _drop(self, request: web.Request, fault: Fault) -> web.Response:
        """Close the connection without answering (the returned response is never sent)."""
        self._stats.faults_injected[fault.kind] += 1
        if request.transport is not None:
            request.transport.close()
        return web.Response()

    async def _answer_with_fault(
        self, request: web.Request, fault: Fault, sample: bytes, sample_type: str
    ) -> web.StreamResponse:
        """Answer as ``fault`` says; a truncated answer sends half of ``sample``."""
        if fault.kind in ("drop", "drop_before_body"):
            return self._drop(request, fault)
        self._stats.faults_injected[fault.kind] += 1
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

    # -- image route -------------------------------------------------------------------

    def _store(self, png: bytes) -> str:
        """Keep a result for ``image_ttl`` seconds and return its URL token."""
        self._evict()
        serial = next(self._serials)
        self._issued = serial + 1
        token = f"{serial:x}-{secrets.token_hex(8)}"
        expiry = self._clock() + self._image_ttl
        self._images[token] = (expiry, png)
        self._expiries.append((expiry, token))
        return token

    def _evict(self) -> None:
        now = self._clock()
        while self._expiries and self._expiries[0][0] <= now:
            self._images.pop(self._expiries.popleft()[1], None)

    def _was_issued(self, token: str) -> bool:
        """Whether a token is one this emulator handed out (its serial is past)."""
        serial, sep, _ = token.partition("-")
        try:
            return bool(sep) and int(serial, 16) < self._issued
        except ValueError:
            return False

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
            if fault.kind != "slow":
                return await self._answer_with_fault(request, fault, _FIXED_PNG, "image/png")
            self._stats.faults_injected[fault.kind] += 1
            await asyncio.sleep(fault.delay)
        self._evict()
        entry = self._images.get(token)
        if entry is None or entry[0] <= self._clock():
            if entry is not None or self._was_issued(token):
                return _detail(410, "This image URL has expired.")
            return _detail(404, "No image at this URL.")
        self._stats.image_downloads += 1
        return web.Response(body=entry[1], content_type="image/png")
