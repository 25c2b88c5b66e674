"""The clients under test: the library and the baselines it is measured against.

Every client makes exactly the same requests: ``POST {base}/ideogram/upscale`` with
``Accept: application/json`` and ``Authorization: Bearer test-key``, and a
``multipart/form-data`` body of the ``image_request`` JSON string field and the
``image_file`` file part, read from disk for each request. Each holds at most
``concurrency`` requests in flight (the library: images, ``num_images`` a request),
checks the status and decodes the JSON answer.
"""

from __future__ import annotations

import asyncio
import enum
import random
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import aiohttp
import attrs
import httpx

from ideogram_async import IdeogramClient, LocalAllowance, MagicPrompt, RetryEvent, UpscaleRequest

from .server import API_KEY, UPSCALE_PATH

__all__ = ["Client", "Outcome", "run_client"]

REQUEST = UpscaleRequest(
    prompt="A serene tropical beach",
    resemblance=50,
    detail=50,
    magic_prompt_option=MagicPrompt.AUTO,
    seed=12345,
)
"""The options of every upload: every documented field set, as in the API's own example."""
_FORM_JSON = REQUEST.to_json()
_HEADERS = {"Accept": "application/json", "Authorization": f"Bearer {API_KEY}"}
_TIMEOUT = 300.0
NAIVE_ATTEMPTS = 3
"""Attempts per request of the hand-written retry loop (a common choice, openai-python's)."""
_BACKOFF_ATTEMPTS = 30
"""The hand-written loop with backoff tries this often before it gives up on a request."""


def _request(num_images: int) -> UpscaleRequest:
    return REQUEST if num_images == 1 else attrs.evolve(REQUEST, num_images=num_images)


class Client(enum.StrEnum):
    """Which client a worker runs, and how it is fed."""

    LIBRARY = "library"
    """``IdeogramClient.upscale(path)`` for each request, under ``asyncio.gather``; the
    bound of ``allowance=C``: a maximum of C, slow-starting from 10."""
    LIBRARY_FIXED = "library-fixed"
    """Like ``library``, with the bound fixed at C from the first request
    (``adaptive=False``): what ``docs/allowance.md`` tells a user who knows that the
    organization's allowance is C and that no other program uses it, as the
    hand-written loop's ``Semaphore(C)`` assumes."""
    LIBRARY_BYTES = "library-bytes"
    """Like ``library``, but each file is first read whole into ``bytes``."""
    LIBRARY_MANY = "library-many"
    """``IdeogramClient.upscale_many`` over a generator of paths."""
    LIBRARY_TRACED = "library-traced"
    """Like ``library``, with the OpenTelemetry SDK and in-memory exporters installed."""
    LIBRARY_INSTRUMENTED = "library-instrumented"
    """Like ``library-traced``, plus aiohttp's own instrumentation (a span per attempt)."""
    AIOHTTP = "aiohttp"
    """Hand-written: ``aiohttp.ClientSession`` + ``FormData`` + ``Semaphore`` + gather."""
    AIOHTTP_RETRY = "aiohttp-retry"
    """``aiohttp``, plus the retry loop people add: any failure is retried at once,
    up to :data:`NAIVE_ATTEMPTS` attempts in all."""
    HTTPX = "httpx"
    """``httpx.AsyncClient(limits=Limits(max_connections=C))`` + ``Semaphore`` + gather."""
    AIOHTTP_BACKOFF = "aiohttp-backoff"
    """Like ``aiohttp``, and a 429 is retried after an exponential backoff with full
    jitter (0.5 s doubling, capped at 20 s), the semaphore held meanwhile."""


@attrs.define
class Outcome:
    """What a client run did: requests that failed, HTTP attempts made, 429s received."""

    failures: int = 0
    first_error: str | None = None
    attempts: int = 0
    rejected: int = 0

    def fail(self, error: BaseException) -> None:
        """Count a failed request, keeping the first reason."""
        self.failures += 1
        if self.first_error is None:
            self.first_error = f"{type(error).__name__}: {error}"


async def _gather(calls: Iterable[Awaitable[object]]) -> Outcome:
    """Await ``calls`` together, counting those that raised."""
    outcome = Outcome()
    for result in await asyncio.gather(*calls, return_exceptions=True):
        outcome.attempts += 1
        if isinstance(result, BaseException):
            outcome.fail(result)
    return outcome


async def _bounded(count: int, concurrency: int, one: Callable[[], Awaitable[None]]) -> Outcome:
    """Run ``one()`` ``count`` times under ``Semaphore(concurrency)``, counting failures."""
    slots = asyncio.Semaphore(concurrency)

    async def bounded() -> None:
        async with slots:
            await one()

    return await _gather(bounded() for _ in range(count))


async def _run_aiohttp(
    base_url: str,
    image: Path,
    count: int,
    concurrency: int,
    num_images: int = 1,
    *,
    attempts: int = 1,
    backoff: bool = False,
) -> Outcome:
    """The hand-written loop; with ``attempts`` > 1, any failure is retried at once; with
    ``backoff``, a 429 is sent again after a jittered exponential backoff."""
    url = base_url + UPSCALE_PATH
    form_json = _request(num_images).to_json()
    made = rejected = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_TIMEOUT)) as session:

        async def one() -> None:
            nonlocal made
            failures = 0
            for waits in range(_BACKOFF_ATTEMPTS):
                made += 1
                try:
                    if await post():
                        return
                except (aiohttp.ClientError, RuntimeError):
                    failures += 1
                    if failures == attempts:
                        raise
                    continue
                await asyncio.sleep(random.uniform(0, min(20.0, 0.5 * 2**waits)))
            raise RuntimeError(f"still 429 after {_BACKOFF_ATTEMPTS} attempts")

        async def post() -> bool:
            """One POST: True when answered, False on a 429 to back off from."""
            nonlocal rejected
            form = aiohttp.FormData()
            form.add_field("image_request", form_json)
            # A plain open: this is the loop people write (aiohttp streams the file).
            with image.open("rb") as file:
                form.add_field("image_file", file, filename=image.name, content_type="image/png")
                async with session.post(url, data=form, headers=_HEADERS) as response:
                    if response.status == 429 and backoff:
                        rejected += 1
                        await response.read()
                        return False
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status}: {await response.text()}")
                    await response.json()
                    return True

        outcome = await _bounded(count, concurrency, one)
    outcome.attempts = made
    outcome.rejected = rejected
    return outcome


async def _run_httpx(base_url: str, image: Path, count: int, concurrency: int) -> Outcome:
    url = base_url + UPSCALE_PATH
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=_TIMEOUT) as client:

        async def one() -> None:
            with image.open("rb") as file:
                response = await client.post(
                    url,
                    data={"image_request": _FORM_JSON},
                    files={"image_file": (image.name, file, "image/png")},
                    headers=_HEADERS,
                )
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text}")
            response.json()

        return await _bounded(count, concurrency, one)


class _Counted(LocalAllowance):
    """The allowance ``IdeogramClient(allowance=n, adaptive=...)`` builds, counting the 429s
    reported to it."""

    rejections = 0

    async def rejected(self, allowance: int | None) -> None:
        self.rejections += 1
        await super().rejected(allowance)


async def _run_library(
    client: Client, base_url: str, image: Path, count: int, concurrency: int, num_images: int
) -> Outcome:
    retries = 0
    request = _request(num_images)
    places = _Counted(concurrency, adaptive=client is not Client.LIBRARY_FIXED)

    def count_retry(_: RetryEvent) -> None:
        nonlocal retries
        retries += 1

    tracing = None
    if client in (Client.LIBRARY_TRACED, Client.LIBRARY_INSTRUMENTED):
        from .tracing import tracing as installed  # only these workers install the SDK

        tracing = installed(aiohttp_spans=client is Client.LIBRARY_INSTRUMENTED)
    async with IdeogramClient(
        api_key=API_KEY,
        base_url=base_url,
        allowance=places,
        on_retry=count_retry,
        trace_configs=tracing.trace_configs if tracing else None,
    ) as ideogram:
        if client is Client.LIBRARY_MANY:
            outcome = Outcome()
            async for item in ideogram.upscale_many((image for _ in range(count)), request):
                if item.error is not None:
                    outcome.fail(item.error)
        elif client is Client.LIBRARY_BYTES:

            async def whole() -> None:
                await ideogram.upscale(await asyncio.to_thread(image.read_bytes), request)

            outcome = await _gather(whole() for _ in range(count))
        else:
            # The client bounds concurrency itself: a plain gather is how it is used.
            outcome = await _gather(ideogram.upscale(image, request) for _ in range(count))
    if tracing is not None:
        tracing.check(count)
    outcome.rejected = places.rejections
    outcome.attempts = count + retries + places.rejections
    return outcome


async def run_client(
    client: Client, base_url: str, image: Path, count: int, concurrency: int, num_images: int = 1
) -> Outcome:
    """Upload ``image`` ``count`` times with ``client``, ``concurrency`` at a time."""
    if client is Client.AIOHTTP:
        return await _run_aiohttp(base_url, image, count, concurrency)
    if client is Client.AIOHTTP_RETRY:
        return await _run_aiohttp(base_url, image, count, concurrency, attempts=NAIVE_ATTEMPTS)
    if client is Client.AIOHTTP_BACKOFF:
        return await _run_aiohttp(base_url, image, count, concurrency, num_images, backoff=True)
    if client is Client.HTTPX:
        return await _run_httpx(base_url, image, count, concurrency)
    return await _run_library(client, base_url, image, count, concurrency, num_images)
