"""``client.v2``: Ideogram's v2 upscalers, price quotes and background generations.

v2 is Ideogram's own API (``{base_url}/v2/...`` with the ``Api-Key`` header), so these
calls need a client of the official flavor; on a proxy-flavor client they raise
``ValidationError`` before anything is sent, so the proxy's key never goes to Ideogram.
Uploads take the client's one attempt path: the same streaming, retries, allowance,
cancellation and errors as v1.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Iterable, Mapping
from decimal import Decimal
from typing import TypeVar
from urllib.parse import quote

from .. import telemetry
from .._attempt import Attempts, Parse
from .._checks import seconds
from .._settings import Flavor, Timeouts
from ..batch import BatchInput, BatchRun, Kind, UpscaleJob, many
from ..errors import APITimeoutError, GenerationFailedError, ValidationError
from ..limits.budget import Amount, Budget, BudgetRun, as_budget
from ..retry import RetryPolicy, _sleep, call_with_retries
from ..uploads import ImageInput, PreparedImage
from ._answers import (
    Generation,
    PriceQuote,
    QuoteItem,
    QuoteSummary,
    V2UpscaleResponse,
    parse_generation,
    parse_quote,
    parse_upscale,
)
from ._options import MAX_FILE_SIZE, V2Options, check_webhook_url

__all__ = ["QuoteInput", "V2Resource"]

_R = TypeVar("_R")
V2: Kind = (V2Options, "a v2 model's options")
QuoteInput = ImageInput | tuple[ImageInput, V2Options] | UpscaleJob
"""One item of ``quote_many``: an image, an ``(image, options)`` pair, or an ``UpscaleJob``
(which also names the file)."""


class V2Resource:
    """The v2 calls of a client, as ``client.v2`` (official flavor).

    It reads the client's settings and shares its session, allowance and rates; a
    client from ``with_options`` has its own ``v2`` with its own settings.
    """

    def __init__(self, attempts: Attempts) -> None:
        self._attempts = attempts

    def _base(self) -> str:
        """The v2 API's base URL; a proxy-flavor client refuses here, before anything is sent."""
        settings = self._attempts.settings
        if settings.flavor is not Flavor.OFFICIAL:
            raise ValidationError(
                "the v2 upscalers are Ideogram's own API: create the client with "
                "flavor='official' (base_url then defaults to https://api.ideogram.ai); "
                "a proxy-flavor client speaks only the proxy's v1 endpoint"
            )
        return f"{settings.base_url}/v2"

    def _url(self, path: str) -> str:
        return f"{self._base()}/{path}"

    async def _post(
        self,
        image: ImageInput,
        options: V2Options,
        parse: Parse[_R],
        *,
        extra: Mapping[str, str] | None = None,
        dry_run: bool = False,
        filename: str | None,
        retry: RetryPolicy | None,
        timeouts: Timeouts | None,
    ) -> _R:
        """Check, upload and parse one v2 request."""
        if not isinstance(options, V2Options) or not options.model:
            raise ValidationError(
                f"options must be a model's options such as TopazBloom2(...), "
                f"got {type(options).__name__}"
            )
        url = self._url(f"image/upscale/{options.model}")
        telemetry.describe(url=url, model=options.model, num_images=1)
        if dry_run:
            url += "?dry_run=true"

        def check(prepared: PreparedImage) -> None:
            size = prepared.dimensions()
            if size is not None:
                try:
                    options.check_source_size(*size)
                except ValidationError as exc:
                    raise ValidationError(f"{prepared.filename}: {exc}") from None

        return await self._attempts.upload(
            image,
            url=url,
            fields={**options.form_fields(), **(extra or {})},
            part="image",
            parse=parse,
            what="quote" if dry_run else options.model,
            max_file_size=MAX_FILE_SIZE,
            filename=filename,
            retry=retry,
            timeouts=timeouts,
            check=check,
        )

    @telemetry.traced("v2.upscale")
    async def upscale(
        self,
        image: ImageInput,
        options: V2Options,
        *,
        filename: str | None = None,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
    ) -> V2UpscaleResponse:
        """Upscale one image with a v2 model and wait for the result.

        ``options`` is the model's options class, e.g. ``TopazBloom2(prompt="...",
        upscale_factor="x4")``; the image is checked as for ``client.upscale`` (up to
        50 MB), and an output over 8192 px a side is refused before upload (from the
        size in the image's header; when its first 64 KB do not give it, the service
        decides). An image withheld by the safety check comes back with ``withheld``
        set and no URL: that upscale ran and is billed. ``retry`` and ``timeouts``
        override the client's for this call.
        """
        return await self._post(
            image, options, parse_upscale, filename=filename, retry=retry, timeouts=timeouts
        )

    @telemetry.traced("v2.submit")
    async def submit(
        self,
        image: ImageInput,
        options: V2Options,
        *,
        webhook_url: str | None = None,
        filename: str | None = None,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
    ) -> str:
        """Start a v2 upscale in the background and return its generation id.

        Wait for it with :meth:`wait_for_generation`, or pass ``webhook_url`` (https,
        at most 2048 characters) to have Ideogram POST the result there when done
        (check deliveries with ``ideogram_async.webhooks``).
        """
        extra = {"async": "true"}
        if webhook_url is not None:
            extra["webhook_url"] = check_webhook_url(webhook_url)
        response = await self._post(
            image,
            options,
            lambda text, status: parse_upscale(text, status, background=True),
            extra=extra,
            filename=filename,
            retry=retry,
            timeouts=timeouts,
        )
        return response.generation_id

    @telemetry.traced("v2.quote")
    async def quote(
        self,
        image: ImageInput,
        options: V2Options,
        *,
        filename: str | None = None,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
    ) -> PriceQuote:
        """Price a v2 upscale without running it (``dry_run``): nothing is stored or billed."""
        return await self._post(
            image,
            options,
            parse_quote,
            dry_run=True,
            filename=filename,
            retry=retry,
            timeouts=timeouts,
        )

    def upscale_many(
        self,
        inputs: Iterable[BatchInput] | AsyncIterable[BatchInput],
        options: V2Options,
        *,
        ordered: bool = False,
        stop_on_error: bool = False,
        window: int | None = None,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        max_usd: Amount | Budget | None = None,
    ) -> BatchRun[V2UpscaleResponse]:
        """Upscale many images with v2 models, yielding a ``BatchResult`` for each.

        As ``client.upscale_many``, with a model's options (e.g. ``TopazBloom2(...)``)
        as the default request and in ``(image, options)`` pairs or ``UpscaleJob``\\ s.

        ``max_usd`` bounds what the run spends: an amount in US dollars, or a
        :class:`~ideogram_async.limits.Budget` to share with other runs or, as a
        :class:`~ideogram_async.limits.RedisBudget`, with other processes.
        Before each upscale the image is priced (:meth:`quote`, a free dry run) and
        its upper bound reserved; the first image that would pass the budget, and
        every later one, is not sent: its result's ``error`` is a
        :class:`~ideogram_async.errors.BudgetExceededError`. A call that fails gives
        its reservation back, unless it may have been billed.
        """
        if not isinstance(options, V2Options):
            raise ValidationError(
                f"options must be a model's options such as TopazBloom2(...), "
                f"got {type(options).__name__}"
            )
        self._base()  # a proxy-flavor client refuses here, not once per image
        self._attempts.timed(timeouts)
        spending = None if max_usd is None else BudgetRun(as_budget(max_usd))

        async def run(job: UpscaleJob) -> V2UpscaleResponse:
            request = job.request
            assert isinstance(request, V2Options)  # as_job keeps the batch's kind

            async def send() -> V2UpscaleResponse:
                return await self.upscale(
                    job.image, request, filename=job.filename, retry=retry, timeouts=timeouts
                )

            async def price() -> Decimal:
                return await self._upper_bound(job, request, retry, timeouts)

            if spending is None:
                return await send()
            return await spending.spend(price, send)

        self._attempts.policy(retry)
        return many(
            "upscale_many",
            inputs,
            run,
            options,
            kind=V2,
            window=window,
            maximum=self._attempts.allowance.maximum,
            ordered=ordered,
            stop_on_error=stop_on_error,
        )

    async def _upper_bound(
        self,
        job: UpscaleJob,
        options: V2Options,
        retry: RetryPolicy | None,
        timeouts: Timeouts | None,
    ) -> Decimal:
        """The most ``job`` can cost, from its quote (a dry run: nothing is run or billed)."""
        if isinstance(job.image, AsyncIterable):
            raise ValidationError(
                "with max_usd an image is priced before it is sent, so it is read twice: "
                "pass a path, bytes or a file, not a stream"
            )
        quote = await self.quote(
            job.image, options, filename=job.filename, retry=retry, timeouts=timeouts
        )
        return quote.upper_bound_usd

    async def quote_many(
        self,
        images: Iterable[QuoteInput],
        options: V2Options | None = None,
        *,
        window: int | None = None,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
    ) -> QuoteSummary:
        """Price many v2 upscales (images, ``(image, options)`` pairs or jobs) before spending.

        Returns a :class:`QuoteSummary` in input order, with exact and estimated
        sums apart; an image that cannot be priced (e.g. over 8192 px) is an item
        with ``error`` set, not an exception. At most ``window`` images (default
        twice the allowance) are open at once.
        """
        self._base()  # a proxy-flavor client refuses here, not once per image
        self._attempts.timed(timeouts)

        async def one(job: UpscaleJob) -> PriceQuote:
            if job.request is None:
                raise ValidationError("no options: pass options= or (image, options) pairs")
            assert isinstance(job.request, V2Options)  # as_job keeps the batch's kind
            return await self.quote(
                job.image, job.request, filename=job.filename, retry=retry, timeouts=timeouts
            )

        self._attempts.policy(retry)
        run = many(
            "quote_many",
            images,
            one,
            options,
            kind=V2,
            window=window,
            maximum=self._attempts.allowance.maximum,
            ordered=True,
            stop_on_error=False,
        )
        async with run:
            items = [
                QuoteItem(index=r.index, source=r.source, quote=r.response, error=r.error)
                async for r in run
            ]
        return QuoteSummary(items=items)

    @telemetry.traced("v2.get_generation")
    async def get_generation(
        self,
        generation_id: str,
        *,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
    ) -> Generation:
        """Poll a background generation once (retried like any call, ``Retry-After`` kept)."""
        if not isinstance(generation_id, str) or not generation_id.strip():
            raise ValidationError(f"generation_id must be a non-empty str, got {generation_id!r}")
        url = self._url(f"generations/{quote(generation_id, safe='')}")
        self._attempts.transport.pool.session()
        attempts = self._attempts.timed(timeouts)
        return await call_with_retries(
            lambda: attempts.get(
                url, parse_generation, failed=f"poll of generation {generation_id}"
            ),
            self._attempts.policy(retry),
            what=f"poll generation {generation_id}",
            on_retry=self._attempts.settings.on_retry,
        )

    @telemetry.traced("v2.wait_for_generation")
    async def wait_for_generation(
        self,
        generation_id: str,
        *,
        poll_interval: float = 1.0,
        max_interval: float = 10.0,
        timeout: float = 600.0,  # noqa: ASYNC109 - ends in a clear APITimeoutError
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
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
        interval = seconds("poll_interval", poll_interval)
        ceiling = seconds("max_interval", max_interval)
        seconds("timeout", timeout)
        assert interval is not None
        assert ceiling is not None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    generation = await self.get_generation(
                        generation_id, retry=retry, timeouts=timeouts
                    )
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
