"""The v2 calls of ``IdeogramClient``: upscales, price quotes and background generations.

v2 is Ideogram's own API (``{base_url}/v2/...`` with the ``Api-Key`` header), so these
calls need a client of the official flavor; on a proxy-flavor client they raise
``ValidationError`` before anything is sent, so the proxy's key never goes to Ideogram.
Uploads take the client's one attempt path (``_post_image``): the same streaming,
retries, concurrency limits, cancellation and errors as v1.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol, TypeVar
from urllib.parse import quote

from aiolimiter import AsyncLimiter

from . import telemetry
from ._http import Http
from ._settings import Flavor, int_at_least, positive_number
from ._v2_answers import (
    Generation,
    PriceQuote,
    QuoteItem,
    QuoteSummary,
    V2UpscaleResponse,
    parse_generation,
    parse_quote,
    parse_upscale,
)
from .errors import APITimeoutError, GenerationFailedError, ValidationError
from .retry import RetryHook, RetryPolicy, _sleep, call_with_retries
from .uploads import ImageInput, PreparedImage, prepare_image
from .v2 import MAX_FILE_SIZE, V2Options, check_webhook_url

__all__ = ["V2Calls", "poll_limiter"]

_T = TypeVar("_T")
QuoteInput = ImageInput | tuple[ImageInput, V2Options]
"""One item of ``quote_many``: an image, or an ``(image, options)`` pair."""


def poll_limiter(poll_limit: object) -> AsyncLimiter:
    """The client's one rate for polls: never more than ``polls`` in any ``seconds``.

    ``poll_limit`` is ``(polls, seconds)``. A leaky bucket of half the polls lets at
    most the whole number through in any window of that length, however the service
    counts its window.
    """
    if not isinstance(poll_limit, tuple) or len(poll_limit) != 2:
        raise ValidationError(f"poll_limit must be a (polls, seconds) pair, got {poll_limit!r}")
    polls = int_at_least("poll_limit's polls", poll_limit[0], 2)
    seconds = positive_number("poll_limit's seconds", poll_limit[1])
    assert seconds is not None
    return AsyncLimiter(polls / 2, seconds)


class _Client(Protocol):
    """What the v2 calls use of ``IdeogramClient``."""

    flavor: Flavor
    base_url: str
    max_concurrency: int
    _http: Http
    _on_retry: RetryHook | None
    _polls: AsyncLimiter

    def _policy(self, retry: RetryPolicy | None) -> RetryPolicy: ...

    def _v2_url(self, path: str) -> str: ...

    async def _post_image(
        self, url: str, fields: Mapping[str, str], image: PreparedImage, *, part: str
    ) -> tuple[str, int]: ...

    async def _v2_post(
        self,
        image: ImageInput,
        options: V2Options,
        parse: Callable[[str, int], _T],
        *,
        extra: Mapping[str, str] = ...,
        dry_run: bool = ...,
        filename: str | None,
        retry: RetryPolicy | None,
    ) -> tuple[_T, int]: ...

    async def quote_v2(
        self,
        image: ImageInput,
        options: V2Options,
        *,
        filename: str | None = ...,
        retry: RetryPolicy | None = ...,
    ) -> PriceQuote: ...

    async def get_generation(
        self, generation_id: str, *, retry: RetryPolicy | None = ...
    ) -> Generation: ...


class V2Calls:
    """The v2 methods of ``IdeogramClient`` (mixed in; see the client's docs)."""

    def _v2_url(self: _Client, path: str) -> str:
        if self.flavor is not Flavor.OFFICIAL:
            raise ValidationError(
                "the v2 upscalers are Ideogram's own API: create the client with "
                "flavor='official' (base_url then defaults to https://api.ideogram.ai); "
                "a proxy-flavor client speaks only the proxy's v1 endpoint"
            )
        return f"{self.base_url}/v2/{path}"

    async def _v2_post(
        self: _Client,
        image: ImageInput,
        options: V2Options,
        parse: Callable[[str, int], _T],
        *,
        extra: Mapping[str, str] = {},
        dry_run: bool = False,
        filename: str | None,
        retry: RetryPolicy | None,
    ) -> tuple[_T, int]:
        """Check, upload and parse one v2 request; the answer and the attempts it took."""
        self._http.session()
        if not isinstance(options, V2Options) or not options.model:
            raise ValidationError(
                f"options must be a model's options such as TopazBloom2(...), "
                f"got {type(options).__name__}"
            )
        url = self._v2_url(f"image/upscale/{options.model}")
        telemetry.describe(url=url, model=options.model, num_images=1)  # telemetry
        if dry_run:
            url += "?dry_run=true"
        policy = self._policy(retry)
        prepared = await prepare_image(image, max_file_size=MAX_FILE_SIZE, filename=filename)
        with prepared:
            size = prepared.dimensions()
            if size is not None:
                try:
                    options.check_source_size(*size)
                except ValidationError as exc:
                    raise ValidationError(f"{prepared.filename}: {exc}") from None
            fields = {**options.form_fields(), **extra}

            async def attempt(number: int) -> _T:
                text, status = await self._post_image(url, fields, prepared, part="image")
                return self._http.parse(parse, text, status)

            what = "quote" if dry_run else options.model
            return await call_with_retries(
                attempt, policy, what=f"{what} {prepared.filename}", on_retry=self._on_retry
            )

    @telemetry.traced("upscale_v2")  # telemetry: one span per call
    async def upscale_v2(
        self: _Client,
        image: ImageInput,
        options: V2Options,
        *,
        filename: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> V2UpscaleResponse:
        """Upscale one image with a v2 model and wait for the result.

        ``options`` is the model's options class, e.g. ``TopazBloom2(prompt="...",
        upscale_factor="x4")``; the image is checked as for ``upscale`` (up to 50 MB),
        and an output over 8192 px a side is refused before upload (from the size in
        the image's header; when its first 64 KB do not give it, the service decides).
        An image withheld by the safety check comes back with ``withheld`` set and no
        URL: that upscale ran and is billed.
        """
        response, _ = await self._v2_post(
            image, options, parse_upscale, filename=filename, retry=retry
        )
        return response

    @telemetry.traced("submit_v2")  # telemetry: one span per call
    async def submit_v2(
        self: _Client,
        image: ImageInput,
        options: V2Options,
        *,
        webhook_url: str | None = None,
        filename: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> str:
        """Start a v2 upscale in the background and return its generation id.

        Wait for it with :meth:`wait_for_generation`, or pass ``webhook_url`` (https,
        at most 2048 characters) to have Ideogram POST the result there when done
        (check deliveries with ``ideogram_async.webhooks``).
        """
        extra = {"async": "true"}
        if webhook_url is not None:
            extra["webhook_url"] = check_webhook_url(webhook_url)
        response, _ = await self._v2_post(
            image,
            options,
            lambda text, status: parse_upscale(text, status, background=True),
            extra=extra,
            filename=filename,
            retry=retry,
        )
        return response.generation_id

    @telemetry.traced("quote_v2")  # telemetry: one span per call
    async def quote_v2(
        self: _Client,
        image: ImageInput,
        options: V2Options,
        *,
        filename: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> PriceQuote:
        """Price a v2 upscale without running it (``dry_run``): nothing is stored or billed."""
        quote_, _ = await self._v2_post(
            image, options, parse_quote, dry_run=True, filename=filename, retry=retry
        )
        return quote_

    async def quote_many(
        self: _Client,
        images: Iterable[QuoteInput],
        options: V2Options | None = None,
        *,
        window: int | None = None,
        retry: RetryPolicy | None = None,
    ) -> QuoteSummary:
        """Price many v2 upscales (images, or ``(image, options)`` pairs) before spending.

        Returns a :class:`QuoteSummary` in input order, with exact and estimated
        sums apart; an image that cannot be priced (e.g. over 8192 px) is an item
        with ``error`` set, not an exception. At most ``window`` images (default
        ``2 * max_concurrency``) are open at once.
        """
        if isinstance(images, str | bytes | bytearray | memoryview | os.PathLike):
            raise ValidationError(
                "quote_many takes an iterable of images, not one image; "
                "wrap it in a list or call quote_v2() for a single image"
            )
        size = int_at_least("window", 2 * self.max_concurrency if window is None else window, 1)
        self._policy(retry)
        self._v2_url("")  # a proxy-flavor client refuses here, not once per image

        async def one(index: int, item: QuoteInput) -> QuoteItem:
            source, chosen = item if isinstance(item, tuple) else (item, options)
            try:
                if chosen is None:
                    raise ValidationError("no options: pass options= or (image, options) pairs")
                priced = await self.quote_v2(source, chosen, retry=retry)
            except Exception as exc:
                return QuoteItem(index=index, source=source, quote=None, error=exc)
            return QuoteItem(index=index, source=source, quote=priced, error=None)

        items: list[QuoteItem] = []
        running: set[asyncio.Task[QuoteItem]] = set()
        try:
            for index, item in enumerate(images):
                if len(running) >= size:
                    done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    items += (task.result() for task in done)
                running.add(asyncio.create_task(one(index, item)))
            items += await asyncio.gather(*running)
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        return QuoteSummary(items=sorted(items, key=lambda item: item.index))

    @telemetry.traced("get_generation")  # telemetry: one span per poll
    async def get_generation(
        self: _Client, generation_id: str, *, retry: RetryPolicy | None = None
    ) -> Generation:
        """Poll a background generation once (retried like any call, ``Retry-After`` kept)."""
        if not isinstance(generation_id, str) or not generation_id.strip():
            raise ValidationError(f"generation_id must be a non-empty str, got {generation_id!r}")
        url = self._v2_url(f"generations/{quote(generation_id, safe='')}")

        async def attempt(number: int) -> Generation:
            await self._polls.acquire()
            async with self._http.request(
                "GET",
                url,
                failed=f"poll of generation {generation_id}: connection to {self.base_url} failed",
                hint="check base_url and the network",
                headers={"Accept": "application/json", **self._http.auth_headers()},
                allow_redirects=False,
            ) as response:
                text = await self._http.text(response)
            return self._http.parse(parse_generation, text, response.status)

        generation, _ = await call_with_retries(
            attempt,
            self._policy(retry),
            what=f"poll generation {generation_id}",
            on_retry=self._on_retry,
        )
        return generation

    @telemetry.traced("wait_for_generation")  # telemetry: polls nest beneath
    async def wait_for_generation(
        self: _Client,
        generation_id: str,
        *,
        poll_interval: float = 1.0,
        max_interval: float = 10.0,
        timeout: float = 600.0,  # noqa: ASYNC109 - ends in a clear APITimeoutError
        retry: RetryPolicy | None = None,
    ) -> Generation:
        """Poll a background generation until it completes; return it with its images.

        Polls start ``poll_interval`` seconds apart and back off (x1.5) up to
        ``max_interval``; every poll of the client shares one rate (``poll_limit``)
        so many waits never exceed the organization's polling limit, and a 429's
        ``Retry-After`` is honoured. Raises :class:`GenerationFailedError` (with
        ``failure_reason``; not billed) when it fails, and ``APITimeoutError`` (kind
        ``deadline``) when it is still pending after ``timeout`` seconds. In test mode
        (``set_testing``) the waits between polls take no time, like retry waits.
        """
        interval = positive_number("poll_interval", poll_interval)
        ceiling = positive_number("max_interval", max_interval)
        positive_number("timeout", timeout)
        assert interval is not None
        assert ceiling is not None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    generation = await self.get_generation(generation_id, retry=retry)
                    if generation.status == "failed":
                        raise GenerationFailedError(
                            f"generation {generation_id} failed "
                            f"({generation.failure_reason or 'no reason given'}); "
                            f"it is not billed",
                            generation_id=generation_id,
                            failure_reason=generation.failure_reason,
                        )
                    if generation.done:
                        if generation.usage_cost_usd_micros is not None:  # telemetry: cost
                            telemetry.spent(generation.usage_cost_usd_micros)
                        return generation
                    await _sleep(interval)
                    interval = min(interval * 1.5, ceiling)
        except TimeoutError:
            raise APITimeoutError(
                f"generation {generation_id} was still pending after {timeout:g}s; "
                f"wait again with a longer timeout",
                kind="deadline",
            ) from None
