"""One attempt at the service, and the call around it: the path every request takes.

An upload call (a v1 or v2 upscale, a v2 quote) goes: check and prepare the image
(:mod:`~ideogram_async.uploads`), then, within the call's deadline and retry policy,
attempts until one succeeds. Each attempt: take places (the allowance) → build the
multipart body → send (the transport) → map a non-2xx status to its error → parse the
answer. A poll of a v2 generation is an attempt without an image or places.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import aiohttp
import attrs
from aiolimiter import AsyncLimiter

from . import telemetry
from ._checks import of_type
from ._settings import Settings, Timeouts
from ._transport import Transport
from .errors import RateLimitError
from .limits import Allowance
from .retry import Deadline, RetryPolicy, retried
from .uploads import ImageInput, PreparedImage, prepare_image

__all__ = ["Attempts", "hold_and_send"]

logger = logging.getLogger("ideogram_async")

_T = TypeVar("_T")
Parse = Callable[[str, int], _T]
"""Turns a 2xx answer's text and status into the call's typed result."""


@attrs.frozen
class Attempts:
    """How a client makes its calls: its transport, and the limits its clients share.

    Frozen: ``with_options`` and a call's own ``timeouts`` make a new one over the
    same pool, allowance and rates.
    """

    transport: Transport
    allowance: Allowance
    limiter: AsyncLimiter | None
    """The start rate of requests (``requests_per_second``), if any."""
    polls: AsyncLimiter
    """The one rate of every generation poll (``poll_limit``)."""
    checks: asyncio.Semaphore
    """Inputs checked at once (twice the allowance's maximum): a gather of many calls
    checks its files as places come free, not all before the first request goes out."""

    @property
    def settings(self) -> Settings:
        """The client's one settings object."""
        return self.transport.settings

    def policy(self, retry: RetryPolicy | None) -> RetryPolicy:
        """The retry policy of one call: its own override, else the client's."""
        return of_type("retry", retry, RetryPolicy) or self.settings.retry

    def timed(self, timeouts: Timeouts | None) -> Attempts:
        """These attempts with a call's own ``timeouts`` (itself when ``None``)."""
        if of_type("timeouts", timeouts, Timeouts) is None:
            return self
        assert timeouts is not None
        settings = attrs.evolve(self.settings, timeouts=timeouts)
        return attrs.evolve(self, transport=attrs.evolve(self.transport, settings=settings))

    async def upload(
        self,
        image: ImageInput,
        *,
        url: str,
        fields: Mapping[str, str],
        part: str,
        parse: Parse[_T],
        what: str,
        max_file_size: int,
        filename: str | None,
        retry: RetryPolicy | None,
        timeouts: Timeouts | None,
        places: int = 1,
        check: Callable[[PreparedImage], None] | None = None,
    ) -> _T:
        """One call that uploads ``image``: prepare it, then attempt until done.

        ``what`` names the call (``"upscale"``, a model's name, ``"quote"``); ``check``
        refuses a prepared image before anything is sent (v2's 8192 px rule). The
        deadline starts here, so reading the input counts against it.
        """
        self.transport.pool.session()  # a closed client fails before reading the input
        policy = self.policy(retry)
        attempts = self.timed(timeouts)
        async with Deadline(policy, what) as record:
            async with self.checks:
                prepared = await prepare_image(
                    image, max_file_size=max_file_size, filename=filename
                )
            with prepared:
                record.what = f"{what} {prepared.filename}"
                if check is not None:
                    check(prepared)
                return await retried(
                    lambda: attempts.post_image(url, fields, prepared, part, places, parse),
                    policy,
                    record,
                    on_retry=self.settings.on_retry,
                )

    async def post_image(
        self,
        url: str,
        fields: Mapping[str, str],
        image: PreparedImage,
        part: str,
        places: int,
        parse: Parse[_T],
    ) -> _T:
        """One attempt of a multipart POST of ``image``: hold places, send, parse."""
        text, response = await hold_and_send(
            self.allowance,
            places,
            f"upscale {image.filename}",
            lambda: self._send(url, fields, image, part),
        )
        return self.transport.answer(parse, response, text)

    async def _send(
        self, url: str, fields: Mapping[str, str], image: PreparedImage, part: str
    ) -> tuple[str, aiohttp.ClientResponse]:
        """POST the image and fields once; the text of a 2xx answer, or the error of another."""
        if self.limiter is not None:
            await self.limiter.acquire()
        body = aiohttp.MultipartWriter("form-data")
        for name, value in fields.items():
            body.append(value).set_content_disposition("form-data", name=name)
        upload = image.payload(part)
        body.append_payload(upload)
        await upload.open()
        transport = self.transport
        async with transport.request(
            "POST",
            url,
            failed=f"upscale {image.filename}: connection to {self.settings.base_url} failed",
            hint="check base_url and the network",
            upload=upload,
            data=body,
            headers=transport.api_headers,
            allow_redirects=False,
        ) as response:
            return await transport.text(response), response

    async def get(self, url: str, parse: Parse[_T], *, failed: str) -> _T:
        """One attempt of a poll (a GET of JSON), within the client's rate of polls."""
        await self.polls.acquire()
        transport = self.transport
        async with transport.request(
            "GET",
            url,
            failed=f"{failed}: connection to {self.settings.base_url} failed",
            hint="check base_url and the network",
            headers=transport.api_headers,
            allow_redirects=False,
        ) as response:
            text = await transport.text(response)
        return transport.answer(parse, response, text)


async def hold_and_send(
    allowance: Allowance, places: int, name: str, send: Callable[[], Awaitable[_T]]
) -> _T:
    """``send()`` while holding ``places`` of ``allowance``; its answer.

    The places are held only while the request is on the wire. A 429
    ``inflight_limit`` is not a failure of the attempt: the service ran nothing, so
    the request reports it to the allowance (which gives its places back, waking
    nobody) and asks for places again: the allowance decides when it goes (a place of
    its own freed, or a backoff when others hold the organization's places), without
    using up a retry (the deadline still holds). A 429 without that
    reason (a gateway's, or a body a proxy dropped) may or may not be the allowance:
    the bound adapts down, and the error takes the usual retry path, with its backoff.
    """
    while True:
        asked = time.monotonic()  # telemetry: seconds waited for places
        async with allowance.hold(places):
            telemetry.waited(time.monotonic() - asked)
            try:
                answer = await send()
            except RateLimitError as error:
                telemetry.rejected(error.reject_reason)
                if error.reject_reason != "inflight_limit":
                    await allowance.rejected(None)
                    raise
                await allowance.rejected(error.allowance)
                if error.allowance is not None and places > error.allowance:
                    raise RateLimitError(
                        f"a request for {places} images needs {places} places in flight, "
                        f"more than the organization's allowance of {error.allowance}; ask "
                        "for fewer images per request, or ask Ideogram to raise the allowance",
                        status=error.status,
                        body=error.body,
                        request_id=error.request_id,
                        should_retry=False,
                        reject_reason=error.reject_reason,
                        allowance=error.allowance,
                    ) from error
                logger.debug("%s: the allowance is full (%s); waiting for a place", name, error)
            else:
                await allowance.completed()
                return answer
