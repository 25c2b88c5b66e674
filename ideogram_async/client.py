"""``IdeogramClient``: one aiohttp session, an allowance of places in flight, retried upscales."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Self, overload

import aiohttp
from aiolimiter import AsyncLimiter

from ._bodies import DEFAULT_MAX_RESPONSE_SIZE
from ._files import DEFAULT_MAX_DOWNLOAD_SIZE, name_too_long, write_atomically
from ._http import Http
from ._posts import ImagePosts
from ._settings import Flavor, Settings, Timeouts, int_at_least, of_type
from ._v2_answers import parse_upscale
from ._v2_client import V2Calls, poll_limiter
from .batch import BatchInput, BatchRun, UpscaleJob, fan_out
from .errors import ValidationError
from .limits import Allowance, OrganizationBound
from .models import UpscaledImage, UpscaleRequest, UpscaleResponse, parse_response
from .retry import RetryHook, RetryPolicy, call_with_retries
from .uploads import CHUNK_SIZE, DEFAULT_MAX_FILE_SIZE, ImageInput, PreparedImage, prepare_image
from .v2 import V2Options, V2UpscaleResponse

__all__ = ["Flavor", "IdeogramClient", "Timeouts"]


class IdeogramClient(V2Calls, ImagePosts):
    """An async client for the Ideogram upscale endpoint; use it as an async context manager.

    One client holds one connection pool and one allowance: share it across the
    tasks of an app rather than creating one per call. ``allowance`` bounds the
    images in flight (default 10, the service's default allowance per
    organization): an upscale holds ``num_images`` places (1 by default; a v2
    upscale or quote, 1) while it is on the wire, first come first served. Given
    as a number, the bound learns from the service: a 429 that names the
    allowance caps it at once, a refusal that others' holdings explain backs off,
    and with ``adaptive`` (the default) the bound probes and holds (see
    ``docs/allowance.md``), never above the number given. Pass an
    :class:`~ideogram_async.limits.Allowance` instead to share one between
    clients or processes (the client then never closes it); a
    :class:`~ideogram_async.limits.RedisAllowance` without ``key=`` is keyed by
    this client's organization (a digest of its API key and host). ``max_concurrency``
    is the former name of a numeric ``allowance``. ``client.allowance`` shows
    the current bound (``limit``) and the places held (``in_use``), for a
    dashboard; ``client.max_concurrency`` is its ``maximum``.
    ``requests_per_second`` optionally bounds the start rate of requests too.

    The key comes from ``api_key`` or ``IDEOGRAM_API_KEY``; the base URL from
    ``base_url`` or ``IDEOGRAM_BASE_URL`` (the official flavor defaults to
    ``https://api.ideogram.ai``). Pass ``session`` to reuse an ``aiohttp``
    session: the client then never closes it, and its pool limits apply.

    A client of the official flavor also reaches Ideogram's v2 upscalers
    (``upscale_v2``, ``quote_v2``, ``quote_many``, ``submit_v2``,
    ``wait_for_generation``); ``poll_limit`` ``(polls, seconds)`` is the one rate
    every generation poll of the client shares (Ideogram allows 1,000 per 10 s).
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        flavor: Flavor | str = Flavor.PROXY,
        allowance: int | Allowance | None = None,
        adaptive: bool = True,
        max_concurrency: int | None = None,
        requests_per_second: float | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        max_file_size: int = DEFAULT_MAX_FILE_SIZE,
        max_download_size: int = DEFAULT_MAX_DOWNLOAD_SIZE,
        max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE,
        session: aiohttp.ClientSession | None = None,
        on_retry: RetryHook | None = None,
        poll_limit: tuple[int, float] = (1000, 10.0),
    ) -> None:
        settings = Settings.resolve(
            api_key=api_key,
            base_url=base_url,
            flavor=flavor,
            allowance=allowance,
            max_concurrency=max_concurrency,
            adaptive=adaptive,
            requests_per_second=requests_per_second,
            timeouts=timeouts,
            retry=retry,
            max_file_size=max_file_size,
            max_download_size=max_download_size,
            max_response_size=max_response_size,
            session=session,
        )
        self.flavor = settings.flavor
        self.base_url = settings.base_url
        self.allowance = settings.allowance
        if isinstance(self.allowance, OrganizationBound):
            self.allowance.bind_organization(
                api_key=settings.key.reveal(), base_url=settings.base_url
            )
        self.max_concurrency = settings.allowance.maximum
        self.requests_per_second = settings.requests_per_second
        self.max_file_size = settings.max_file_size
        self.max_download_size = settings.max_download_size
        self.max_response_size = settings.max_response_size
        self.timeouts = settings.timeouts
        self.retry = settings.retry
        self._key = settings.key
        self._url = settings.url
        self._http = Http(settings, session)
        self._on_retry = on_retry
        self._owns_allowance = not isinstance(allowance, Allowance)
        self._download_slots = asyncio.Semaphore(self.max_concurrency)
        self._polls = poll_limiter(poll_limit)
        self._limiter = (
            None
            if settings.requests_per_second is None
            else AsyncLimiter(settings.requests_per_second, 1)
        )

    def __repr__(self) -> str:
        return (
            f"IdeogramClient(base_url={self.base_url!r}, flavor={self.flavor.value!r}, "
            f"allowance={self.allowance!r}, api_key={self._key!r})"
        )

    async def __aenter__(self) -> Self:
        self._http.session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (unless the session was passed in). Idempotent.

        An :class:`~ideogram_async.limits.Allowance` passed in is left open.
        """
        await self._http.aclose()
        if self._owns_allowance:
            await self.allowance.aclose()

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has been called."""
        return self._http.closed

    def _policy(self, retry: RetryPolicy | None) -> RetryPolicy:
        """The policy of one call: its own override, else the client's."""
        return of_type("retry", retry, RetryPolicy) or self.retry

    async def upscale(
        self,
        image: ImageInput,
        request: UpscaleRequest | None = None,
        *,
        filename: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> UpscaleResponse:
        """Upscale one image and return the service's answer.

        ``image`` is a path, ``bytes``, a binary file object (left open, rewound
        for each attempt) or an async iterator of ``bytes`` (read once). It is
        checked before anything is sent: a missing, empty, oversized or non
        JPEG/PNG/WebP image raises :class:`ValidationError`. ``filename`` overrides
        the name sent with the file. ``retry`` overrides the client's policy for
        this call.

        Raises an :class:`~ideogram_async.errors.IdeogramError` subclass on failure;
        its ``attempts`` tells how many requests were made.
        """
        response, _ = await self._upscale(image, request, filename=filename, retry=retry)
        return response

    async def _upscale(
        self,
        image: ImageInput,
        request: UpscaleRequest | None,
        *,
        filename: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> tuple[UpscaleResponse, int]:
        """``upscale``, also returning how many attempts it took."""
        self._http.session()
        if request is None:
            request = UpscaleRequest()
        elif not isinstance(request, UpscaleRequest):
            raise ValidationError(
                f"request must be an UpscaleRequest, got {type(request).__name__}; "
                f"build one with UpscaleRequest(prompt=..., resemblance=...)"
            )
        policy = self._policy(retry)
        places = request.num_images or 1
        if places > self.allowance.maximum:
            raise ValidationError(
                f"num_images={places} needs {places} places in flight, more than the "
                f"allowance of {self.allowance.maximum}; ask for fewer images per request "
                "or raise allowance= (if your organization's allowance is higher)"
            )
        prepared = await prepare_image(image, max_file_size=self.max_file_size, filename=filename)
        with prepared:
            form = request.to_json()
            return await call_with_retries(
                lambda number: self._attempt(prepared, form, places),
                policy,
                what=f"upscale {prepared.filename}",
                on_retry=self._on_retry,
            )

    @overload
    def upscale_many(
        self,
        inputs: Iterable[BatchInput] | AsyncIterable[BatchInput],
        request: UpscaleRequest | None = None,
        *,
        ordered: bool = False,
        stop_on_error: bool = False,
        window: int | None = None,
        retry: RetryPolicy | None = None,
    ) -> BatchRun[UpscaleResponse]: ...

    @overload
    def upscale_many(
        self,
        inputs: Iterable[BatchInput] | AsyncIterable[BatchInput],
        request: V2Options,
        *,
        ordered: bool = False,
        stop_on_error: bool = False,
        window: int | None = None,
        retry: RetryPolicy | None = None,
    ) -> BatchRun[V2UpscaleResponse]: ...

    def upscale_many(
        self,
        inputs: Iterable[BatchInput] | AsyncIterable[BatchInput],
        request: UpscaleRequest | V2Options | None = None,
        *,
        ordered: bool = False,
        stop_on_error: bool = False,
        window: int | None = None,
        retry: RetryPolicy | None = None,
    ) -> BatchRun[UpscaleResponse] | BatchRun[V2UpscaleResponse]:
        """Upscale many images, yielding a :class:`BatchResult` for each as it finishes.

        ``inputs`` is any iterable or async iterable of images, of ``(image,
        request)`` pairs, or of :class:`UpscaleJob`; it is pulled lazily, and
        at most ``window`` items (default twice the allowance) are in progress
        or buffered at once, however long it is. A failed item is a result with
        ``error`` set; nothing is raised for it. ``ordered=True`` yields in input
        order; ``stop_on_error=True`` ends the run after the first failed result.
        Leaving the loop cancels what is still running (use ``async with`` for
        that to happen at once).

        With a v2 model's options as ``request`` (e.g. ``TopazBloom2(...)``; official
        flavor) every image goes to that v2 upscaler, as :meth:`upscale_v2` would
        send it, and results carry a :class:`V2UpscaleResponse`.
        """
        self._http.session()
        if isinstance(inputs, str | bytes | bytearray | memoryview | os.PathLike):
            raise ValidationError(
                "upscale_many takes an iterable of images, not one image; "
                "wrap it in a list or call upscale() for a single image"
            )
        default = request or UpscaleRequest()
        if not isinstance(default, UpscaleRequest | V2Options):
            raise ValidationError(
                f"request must be an UpscaleRequest or a v2 model's options, "
                f"got {type(default).__name__}"
            )
        size = 2 * self.max_concurrency if window is None else window
        int_at_least("window", size, 1)
        self._policy(retry)
        if isinstance(default, V2Options):
            # A proxy-flavor client refuses v2 here, not per item (any model name will do).
            self._v2_url("")  # pragma: no mutate

            async def run_v2(job: UpscaleJob) -> tuple[V2UpscaleResponse, int]:
                assert isinstance(job.request, V2Options)  # as_job keeps the batch's kind
                return await self._v2_post(
                    job.image, job.request, parse_upscale, filename=job.filename, retry=retry
                )

            return BatchRun(
                fan_out(
                    inputs,
                    run_v2,
                    default,
                    window=size,
                    ordered=ordered,
                    stop_on_error=stop_on_error,
                )
            )

        async def run(job: UpscaleJob) -> tuple[UpscaleResponse, int]:
            assert isinstance(job.request, UpscaleRequest)  # as_job keeps the batch's kind
            return await self._upscale(job.image, job.request, filename=job.filename, retry=retry)

        return BatchRun(
            fan_out(inputs, run, default, window=size, ordered=ordered, stop_on_error=stop_on_error)
        )

    async def download(
        self,
        image: UpscaledImage | str,
        dest: str | os.PathLike[str],
        *,
        retry: RetryPolicy | None = None,
    ) -> Path:
        """Download a result image to ``dest`` and return the path written.

        ``image`` is an :class:`UpscaledImage` or its URL. The body must start like
        a JPEG, PNG or WebP image (checked before anything is written) and be at
        most ``max_download_size`` bytes (checked against Content-Length up front
        and while streaming), else :class:`ResponseFormatError`. It is streamed to
        a temporary file beside ``dest`` and renamed into place only once complete,
        so ``dest`` is never left half-written and a failure leaves nothing on
        disk; parent folders are created. When ``dest`` does not end in ``.png``, ``.jpg``,
        ``.jpeg`` or ``.webp``, the image's own suffix is added (result URLs often
        have none). Transient failures are retried like ``upscale``. The API key is
        never sent: the image lives on another host.
        """
        self._http.session()
        url = image.url if isinstance(image, UpscaledImage) else image
        if isinstance(image, UpscaledImage) and image.is_image_safe is False and not url:
            raise ValidationError(
                "this image was withheld by the service's safety check, so there is "
                "nothing to download (the upscale ran and is billed)"
            )
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValidationError(
                f"cannot download {url!r}: pass an UpscaledImage with a url or an http(s) URL"
            )
        target = Path(os.fspath(dest))
        if name_too_long(target):
            raise ValidationError(
                f"{target.name[:40]}... is too long a file name (255 bytes at most, with "
                f"the image suffix); pass a shorter dest"
            )
        if await asyncio.to_thread(os.path.isdir, target):
            raise ValidationError(f"{target} is a directory; pass the path of the file to write")
        path, _ = await call_with_retries(
            lambda _: self._download_attempt(url, target),
            self._policy(retry),
            what=f"download {target.name}",
            on_retry=self._on_retry,
        )
        return path

    async def _download_attempt(self, url: str, target: Path) -> Path:
        """One GET of an image URL into a temp file, renamed onto ``target`` on success."""
        async with (
            self._download_slots,
            # No auth header: the session has none, and none is added here.
            self._http.request(
                "GET",  # pragma: no mutate (aiohttp upper-cases the method)
                url,
                failed=f"download of {target.name} failed",
                hint="the image URL may be unreachable",
            ) as response,
        ):
            await self._http.raise_for_status(response, download=True)
            return await write_atomically(
                target,
                response.content.iter_chunked(CHUNK_SIZE),
                max_size=self.max_download_size,
                length=response.content_length,
            )

    async def _attempt(self, image: PreparedImage, form: str, places: int) -> UpscaleResponse:
        """One attempt of a v1 upscale of ``places`` images."""
        text, status = await self._post_image(
            self._url, {"image_request": form}, image, part="image_file", places=places
        )
        return self._http.parse(parse_response, text, status)
