"""The emulator's v2 routes: ``POST /v2/image/upscale/{model}`` and ``GET /v2/generations/{id}``.

An upscale checks the ``Api-Key``, streams the form (every option a plain field, the
image in the file part ``image``), applies the model's checks and the 8192 px rule,
and answers a result, a price quote (``?dry_run=true``) or, with ``async`` or a
``webhook_url``, a generation to poll. Polls obey the polling limit (429 with
``Retry-After``). Faults, latency, pause and the counters are the emulator's own.
"""

from __future__ import annotations

import asyncio
import io
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from ideogram_async.images import HEADER_BYTES, image_size, sniff

from ._answers import FIXED_PNG, drop
from ._faults import Fault, FaultPlan
from ._multipart import Parts, Reject, media_type, part_names, read_file_part
from ._places import Places
from ._stats import EmulatorStats, ReceivedV2Upload, Route
from ._store import ImageStore
from ._v2_service import (
    FAIL,
    WITHHOLD,
    Generations,
    PollWindow,
    V2Refusal,
    check_request,
    output_size,
    price,
)

__all__ = ["V2Routes"]

_MAX_FIELD_SIZE = 64 * 1024
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@attrs.define
class _Form(Parts):
    """The parts of one v2 multipart body, as streamed in."""

    fields: dict[str, str] = attrs.field(factory=dict)


class _Emulator(Protocol):
    """What the v2 routes share with the emulator they belong to."""

    _clock: Callable[[], float]
    _faults: FaultPlan | None
    _stats: EmulatorStats
    _rng: random.Random
    _upscale: bool
    _v2_max_file_size: int
    _images: ImageStore
    _places: Places

    async def _handle(self, request: web.Request, process: _Handler) -> web.StreamResponse: ...

    def _authorized(self, request: web.Request, route: Route) -> bool: ...

    def _received(self, size: int) -> None: ...

    async def _pace(
        self, request: web.Request, fault: Fault | None
    ) -> web.StreamResponse | None: ...


def _resize(data: bytes, size: tuple[int, int]) -> bytes:
    """Decode an image and resize it to ``size`` as PNG (needs Pillow; run in a thread)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as opened:
        image: Image.Image = opened
        # What PNG cannot store: 16-bit grey (a PNG) and CMYK (a JPEG), neither with alpha.
        if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
            image = image.convert("RGB")
        resized = image.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    resized.save(out, format="PNG", compress_level=1)
    return out.getvalue()


class V2Routes:
    """The v2 part of one emulator, sharing its key, faults, store and stats."""

    def __init__(
        self, emulator: _Emulator, *, generation_delay: float, poll_limit: tuple[int, float]
    ) -> None:
        if not 0 <= generation_delay < math.inf:
            raise ValueError(f"generation_delay must be >= 0 seconds, got {generation_delay!r}")
        polls, period = poll_limit
        if isinstance(polls, bool) or not isinstance(polls, int) or polls < 1 or not period > 0:
            raise ValueError(f"poll_limit must be (polls >= 1, seconds > 0), got {poll_limit!r}")
        self._emu = emulator
        self.generations = Generations(emulator._clock, generation_delay)
        self.polls = PollWindow(emulator._clock, *poll_limit)

    def routes(self) -> list[tuple[str, str, _Handler]]:
        return [
            ("POST", "/v2/image/upscale/{model}", self._upscale),
            ("GET", "/v2/generations/{generation_id}", self._poll),
        ]

    async def _upscale(self, request: web.Request) -> web.StreamResponse:
        return await self._emu._handle(request, self._process)

    async def _process(self, request: web.Request) -> web.StreamResponse:
        emu = self._emu
        if not emu._authorized(request, "official"):
            raise Reject(401, "Invalid or missing API key")
        plan = emu._faults
        fault = plan.next_fault() if plan is not None and not plan.per_upload else None
        if fault is not None and fault.kind == "drop_before_body":
            emu._stats.faults_injected[fault.kind] += 1
            return drop(request)
        form = await self._read(request)
        if plan is not None and plan.per_upload:
            fault = plan.next_fault(form.sha256)
        model = request.match_info["model"]
        dry_run = request.query.get("dry_run", "false").lower() == "true"
        if form.filename is not None:
            emu._stats.v2_uploads.append(
                ReceivedV2Upload(
                    model=model,
                    dry_run=dry_run,
                    headers={name.lower(): value for name, value in request.headers.items()},
                    fields=dict(form.fields),
                    filename=form.filename,
                    content_type=form.content_type,
                    size=form.size,
                    sha256=form.sha256,
                    part_names=form.part_names,
                )
            )
        refused = emu._places.refuse(1)  # one image a request, quotes included
        if refused is not None:
            return refused
        with emu._places.holding(1):
            faulty = await emu._pace(request, fault)
            if faulty is not None:
                return faulty
            try:
                return await self._answer(request, model, form, dry_run)
            except V2Refusal as refusal:
                raise Reject(refusal.status, refusal.detail) from None

    async def _read(self, request: web.Request) -> _Form:
        """Stream the form: plain fields as text, the ``image`` file hashed as it arrives."""
        if (media := media_type(request)) != "multipart/form-data":
            raise Reject(
                400, f"Expected a multipart/form-data body, got {media or 'no Content-Type'!r}."
            )
        form = _Form()
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                name, filename = part_names(part)
                if not name or not isinstance(part, BodyPartReader):
                    raise Reject(400, "Every part needs a name.")
                form.part_names.append(name)
                if name in form.part_names[:-1]:
                    raise Reject(400, f"The {name} part was sent more than once.")
                if filename is not None:
                    if name != "image":
                        raise Reject(400, f"Unexpected file part {name!r}; send 'image'.")
                    await self._read_file(part, filename, form)
                    continue
                text = await part.read(decode=True)
                if len(text) > _MAX_FIELD_SIZE:
                    raise Reject(413, f"{name} is larger than {_MAX_FIELD_SIZE} bytes.")
                form.fields[name] = text.decode(part.get_charset("utf-8"))
        except (ValueError, LookupError, HttpProcessingError, RequestPayloadError) as exc:
            raise Reject(400, f"Malformed multipart body: {exc}") from exc
        return form

    async def _read_file(self, part: BodyPartReader, filename: str, form: _Form) -> None:
        emu = self._emu
        file = await read_file_part(
            part,
            max_size=emu._v2_max_file_size,
            too_large=f"image is larger than {emu._v2_max_file_size} bytes.",
            head_bytes=HEADER_BYTES,
            keep=emu._upscale,
            received=emu._received,
        )
        form.keep_file(filename, part, file)

    async def _answer(
        self, request: web.Request, model: str, form: _Form, dry_run: bool
    ) -> web.Response:
        emu = self._emu
        options = check_request(model, form.fields)
        if form.filename is None:
            raise V2Refusal(400, "Missing the image file part.")
        if sniff(form.head) is None:  # an empty file included
            raise V2Refusal(400, "image is not a JPEG, PNG or WebP image.")
        source = image_size(form.head)
        if source is None or min(source) < 1:
            raise V2Refusal(400, "Could not read the image's size.")
        width, height = output_size(model, options, *source)
        quote = price(model, options, (width, height))
        if dry_run:
            emu._stats.quotes += 1
            return web.json_response(quote)
        png = FIXED_PNG
        if form.data is not None:
            try:
                png = await asyncio.to_thread(_resize, form.data, (width, height))
            except Exception as exc:  # Pillow raises many types for undecodable data
                raise V2Refusal(400, f"image could not be decoded: {exc}") from exc
        prompt = options.get("prompt", "")
        seed = int(options["seed"]) if "seed" in options else emu._rng.randrange(2**31)
        withheld = WITHHOLD in prompt
        origin = f"{request.scheme}://{request.host}"
        item: dict[str, Any] = {
            "url": None if withheld else f"{origin}/images/{emu._images.put(png)}.png",
            "resolution": f"{width}x{height}",
            "seed": seed,
            "is_image_safe": not withheld,
        }
        background = form.fields.get("async") == "true" or "webhook_url" in form.fields
        fail = background and FAIL in prompt
        if not fail:
            emu._stats.billed_usd_micros += quote["usd_micros"]
            emu._stats.withheld += withheld
        generation_id = self.generations.submit(
            [item],
            fail=fail,
            cost=quote["usd_micros"],
            delay=None if background else 0.0,
        )
        answer: dict[str, Any] = {
            "generation_id": generation_id,
            "width": width,
            "height": height,
            "seed": seed,
        }
        if not background:
            answer["data"] = [item]
        return web.json_response(answer)

    async def _poll(self, request: web.Request) -> web.StreamResponse:
        emu = self._emu
        if not emu._authorized(request, "official"):
            return Reject(401, "Invalid or missing API key").response()
        wait = self.polls.admit()
        if wait is not None:
            emu._stats.polls_refused += 1
            return web.json_response(
                {"error": "Too many generation polls; slow down."},
                status=429,
                headers={"Retry-After": str(math.ceil(wait))},  # wait > 0: at least 1
            )
        emu._stats.polls += 1
        state = self.generations.state(request.match_info["generation_id"])
        if state is None:
            return Reject(404, "No generation with this id.").response()
        return web.json_response(state)
