"""``IdeogramClient``: one session, one allowance, frozen settings; v1 calls and ``client.v2``.

The client holds its parts (composition, no mixins): the frozen :class:`Settings`,
the :class:`~ideogram_async._attempt.Attempts` every call goes through (transport,
allowance, rates), and the v2 resource. Follow one upscale from :meth:`IdeogramClient.upscale`
into ``_attempt.py``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import aiohttp
import attrs
from aiolimiter import AsyncLimiter

from . import telemetry
from ._attempt import Attempts
from ._checks import int_at_least, seconds
from ._downloads import DEFAULT_MAX_DOWNLOAD_SIZE, name_too_long, write_atomically
from ._settings import Flavor, Settings, Timeouts
from ._transport import DEFAULT_MAX_RESPONSE_SIZE, Pool, Transport
from .batch import V1, BatchInput, BatchRun, UpscaleJob, many
from .errors import ValidationError
from .limits import Allowance, OrganizationBound
from .models import UpscaledImage, UpscaleRequest, UpscaleResponse, parse_response
from .retry import RetryHook, RetryPolicy, call_with_retries
from .uploads import CHUNK_SIZE, DEFAULT_MAX_FILE_SIZE, ImageInput
from .v2 import V2Resource

__all__ = ["Flavor", "IdeogramClient", "Timeouts"]


@attrs.frozen
class _Shared:
    """What a client shares with the clients ``with_options`` derives from it."""

    pool: Pool
    owns_allowance: bool
    """Whether closing the client closes the allowance (it was made from a number)."""
    downloads: asyncio.Semaphore
    """Downloads in flight, bounded like the allowance's maximum."""


class IdeogramClient:
    """An async client for the Ideogram upscale endpoint; use it as an async context manager.

    One client holds one connection pool and one allowance: share it across the
    tasks of an app rather than creating one per call. ``allowance`` bounds the
    images in flight (default 10, the service's default allowance per
    organization): an upscale holds ``num_images`` places (1 by default; a v2
    upscale or quote, 1) while it is on the wire, first come first served. Given
    as a number, the bound learns from the service: a 429 that names the
    allowance caps it at once, a refusal that others' holdings explain backs off,
    and with ``adaptive`` (the default) the bound slow-starts from 10, probes
    and holds (see ``docs/allowance.md``), never above the number given; with
    ``adaptive=False`` it is the number given from the first request (an
    allowance you know, used by nothing else). Pass an
    :class:`~ideogram_async.limits.Allowance` instead to share one between
    clients or processes (the client then never closes it); a
    :class:`~ideogram_async.limits.RedisAllowance` without ``key=`` is keyed by
    this client's organization (a digest of its API key and host).
    ``client.allowance`` shows the current bound (``limit``), the places held
    (``in_use``) and the ``maximum``, for a dashboard. ``requests_per_second``
    optionally bounds the start rate of requests too.

    The key comes from ``api_key`` or ``IDEOGRAM_API_KEY``; the base URL from
    ``base_url`` or ``IDEOGRAM_BASE_URL`` (the official flavor defaults to
    ``https://api.ideogram.ai``). Pass ``session`` to reuse an ``aiohttp``
    session: the client then never closes it, and its pool limits apply.

    The settings are read-only properties; :meth:`with_options` makes a client with
    some of them changed that shares this one's session and allowance, and every
    call takes its own ``retry`` and ``timeouts``. A client of the official flavor
    also reaches Ideogram's v2 upscalers as ``client.v2`` (``upscale``, ``submit``,
    ``quote``, ``upscale_many``, ``quote_many``, ``get_generation``,
    ``wait_for_generation``); ``poll_limit`` ``(polls, seconds)`` is the one rate
    every generation poll of the client shares (Ideogram allows 1,000 per 10 s).

    ``trace_configs`` (aiohttp ``TraceConfig`` objects, e.g. OpenTelemetry's aiohttp
    instrumentation) are given to the session the client creates, which the clients
    from :meth:`with_options` share.
    """

    _attempts: Attempts
    _shared: _Shared
    _v2: V2Resource

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        flavor: Flavor | str = Flavor.PROXY,
        allowance: int | Allowance | None = None,
        adaptive: bool = True,
        requests_per_second: float | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        max_file_size: int = DEFAULT_MAX_FILE_SIZE,
        max_download_size: int = DEFAULT_MAX_DOWNLOAD_SIZE,
        max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE,
        session: aiohttp.ClientSession | None = None,
        on_retry: RetryHook | None = None,
        poll_limit: tuple[int, float] = (1000, 10.0),
        trace_configs: Sequence[aiohttp.TraceConfig] | None = None,
    ) -> None:
        settings = Settings.resolve(
            api_key=api_key,
            base_url=base_url,
            flavor=flavor,
            allowance=allowance,
            adaptive=adaptive,
            requests_per_second=requests_per_second,
            timeouts=timeouts,
            retry=retry,
            max_file_size=max_file_size,
            max_download_size=max_download_size,
            max_response_size=max_response_size,
            session=session,
            on_retry=on_retry,
        )
        if isinstance(settings.allowance, OrganizationBound):
            settings.allowance.bind_organization(
                api_key=settings.key.reveal(), base_url=settings.base_url
            )
        maximum = settings.allowance.maximum
        # API requests and image downloads each get as many connections as the
        # allowance's maximum, so a request holding places never waits for the pool.
        pool = Pool(session, connections=2 * maximum, trace_configs=trace_configs)
        rate = settings.requests_per_second
        self._attach(
            Attempts(
                transport=Transport(settings, pool),
                allowance=settings.allowance,
                limiter=None if rate is None else AsyncLimiter(rate, 1),
                polls=_poll_rate(poll_limit),
                checks=asyncio.Semaphore(2 * maximum),
            ),
            _Shared(
                pool=pool,
                owns_allowance=not isinstance(allowance, Allowance),
                downloads=asyncio.Semaphore(maximum),
            ),
        )
        telemetry.watch(settings.allowance)

    def _attach(self, attempts: Attempts, shared: _Shared) -> None:
        self._attempts = attempts
        self._shared = shared
        self._v2 = V2Resource(attempts)

    def with_options(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        flavor: Flavor | str | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        max_file_size: int | None = None,
        max_download_size: int | None = None,
        max_response_size: int | None = None,
        on_retry: RetryHook | None = None,
    ) -> IdeogramClient:
        """A client with the given settings changed (``None``: as here), sharing the rest.

        It shares this client's session, allowance and rates (openai-python's
        pattern): ``client.with_options(retry=RetryPolicy(attempts=2))`` costs no new
        connections and counts against the same places in flight. Closing either
        closes the shared session. The new settings are checked as the
        constructor's are. A :class:`~ideogram_async.limits.RedisAllowance` keyed by
        this client's organization cannot serve another: changing ``api_key`` or the
        API host then raises :class:`ValidationError` (one named with ``key=`` is
        shared as named).
        """
        current = self._attempts.settings
        settings = Settings.resolve(
            api_key=current.key.reveal() if api_key is None else api_key,
            base_url=current.base_url if base_url is None else base_url,
            flavor=current.flavor if flavor is None else flavor,
            allowance=current.allowance,
            adaptive=True,  # the allowance object brings its own setting
            requests_per_second=current.requests_per_second,
            timeouts=current.timeouts if timeouts is None else timeouts,
            retry=current.retry if retry is None else retry,
            max_file_size=current.max_file_size if max_file_size is None else max_file_size,
            max_download_size=(
                current.max_download_size if max_download_size is None else max_download_size
            ),
            max_response_size=(
                current.max_response_size if max_response_size is None else max_response_size
            ),
            session=None,
            on_retry=current.on_retry if on_retry is None else on_retry,
        )
        if isinstance(settings.allowance, OrganizationBound):
            try:
                settings.allowance.bind_organization(
                    api_key=settings.key.reveal(), base_url=settings.base_url
                )
            except ValidationError:
                raise ValidationError(
                    "with_options(api_key=/base_url=) names another organization (another "
                    "API key or API host), but the derived client would share this client's "
                    "RedisAllowance, which serves this one's: create a new IdeogramClient "
                    "with its own RedisAllowance for the other organization"
                ) from None
        derived = object.__new__(IdeogramClient)
        transport = Transport(settings, self._shared.pool)
        derived._attach(attrs.evolve(self._attempts, transport=transport), self._shared)
        return derived

    @property
    def v2(self) -> V2Resource:
        """Ideogram's v2 upscalers, quotes and generations (official flavor)."""
        return self._v2

    @property
    def flavor(self) -> Flavor:
        """Which form of the endpoint the client speaks."""
        return self._attempts.settings.flavor

    @property
    def base_url(self) -> str:
        """The service's base URL, without a trailing slash."""
        return self._attempts.settings.base_url

    @property
    def allowance(self) -> Allowance:
        """The places in flight (``limit``, ``in_use``, ``maximum``), shared when derived."""
        return self._attempts.allowance

    @property
    def requests_per_second(self) -> float | None:
        """The bound on the start rate of requests, if any."""
        return self._attempts.settings.requests_per_second

    @property
    def timeouts(self) -> Timeouts:
        """The per-attempt time limits."""
        return self._attempts.settings.timeouts

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy of every call that does not pass its own."""
        return self._attempts.settings.retry

    @property
    def on_retry(self) -> RetryHook | None:
        """The function told about each retry, if any."""
        return self._attempts.settings.on_retry

    @property
    def max_file_size(self) -> int:
        """The largest v1 upload, in bytes."""
        return self._attempts.settings.max_file_size

    @property
    def max_download_size(self) -> int:
        """The largest image ``download`` writes, in bytes."""
        return self._attempts.settings.max_download_size

    @property
    def max_response_size(self) -> int:
        """The largest API answer read, in bytes."""
        return self._attempts.settings.max_response_size

    def __repr__(self) -> str:
        settings = self._attempts.settings
        return (
            f"IdeogramClient(base_url={settings.base_url!r}, flavor={settings.flavor.value!r}, "
            f"allowance={settings.allowance!r}, api_key={settings.key!r})"
        )

    async def __aenter__(self) -> Self:
        self._shared.pool.session()
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
        await self._shared.pool.aclose()
        if self._shared.owns_allowance:
            await self.allowance.aclose()

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has been called (on this client or one it shares with)."""
        return self._shared.pool.closed

    @telemetry.traced("upscale")
    async def upscale(
        self,
        image: ImageInput,
        request: UpscaleRequest | None = None,
        *,
        filename: str | None = None,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
    ) -> UpscaleResponse:
        """Upscale one image and return the service's answer.

        ``image`` is a path, ``bytes``, a binary file object (left open, rewound
        for each attempt) or an async iterator of ``bytes`` (read once). It is
        checked before anything is sent: a missing, empty, oversized or non
        JPEG/PNG/WebP image raises :class:`ValidationError`. ``filename`` overrides
        the name sent with the file. ``retry`` and ``timeouts`` override the
        client's for this call.

        Raises an :class:`~ideogram_async.errors.IdeogramError` subclass on failure;
        its ``attempts`` tells how many requests were made.
        """
        if request is None:
            request = UpscaleRequest()
        elif not isinstance(request, UpscaleRequest):
            raise ValidationError(
                f"request must be an UpscaleRequest, got {type(request).__name__}; "
                f"build one with UpscaleRequest(prompt=..., resemblance=...)"
                f"{_V2_HINT if hasattr(request, 'model') else ''}"
            )
        places = request.num_images or 1
        maximum = self.allowance.maximum
        if places > maximum:
            raise ValidationError(
                f"num_images={places} needs {places} places in flight, more than the "
                f"allowance of {maximum}; ask for fewer images per request "
                "or raise allowance= (if your organization's allowance is higher)"
            )
        settings = self._attempts.settings
        telemetry.describe(url=settings.url, num_images=places)
        return await self._attempts.upload(
            image,
            url=settings.url,
            fields={"image_request": request.to_json()},
            part="image_file",
            parse=parse_response,
            what="upscale",
            max_file_size=settings.max_file_size,
            filename=filename,
            retry=retry,
            timeouts=timeouts,
            places=places,
        )

    def upscale_many(
        self,
        inputs: Iterable[BatchInput] | AsyncIterable[BatchInput],
        request: UpscaleRequest | None = None,
        *,
        ordered: bool = False,
        stop_on_error: bool = False,
        window: int | None = None,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
    ) -> BatchRun[UpscaleResponse]:
        """Upscale many images, yielding a :class:`BatchResult` for each as it finishes.

        ``inputs`` is any iterable or async iterable of images, of ``(image,
        request)`` pairs, or of :class:`UpscaleJob`; it is pulled lazily, and
        at most ``window`` items (default twice the allowance) are in progress
        or buffered at once, however long it is. A failed item is a result with
        ``error`` set; nothing is raised for it. ``ordered=True`` yields in input
        order; ``stop_on_error=True`` ends the run after the first failed result.
        Leaving the loop cancels what is still running (use ``async with`` for
        that to happen at once). For v2 models, use ``client.v2.upscale_many``.
        """
        self._shared.pool.session()
        default = UpscaleRequest() if request is None else request
        if not isinstance(default, UpscaleRequest):
            raise ValidationError(
                f"request must be an UpscaleRequest, got {type(default).__name__}"
                f"{_V2_HINT if hasattr(default, 'model') else ''}"
            )
        self._attempts.policy(retry)
        self._attempts.timed(timeouts)

        async def run(job: UpscaleJob) -> UpscaleResponse:
            assert isinstance(job.request, UpscaleRequest)  # as_job keeps the batch's kind
            return await self.upscale(
                job.image, job.request, filename=job.filename, retry=retry, timeouts=timeouts
            )

        return many(
            "upscale_many",
            inputs,
            run,
            default,
            kind=V1,
            window=window,
            maximum=self.allowance.maximum,
            ordered=ordered,
            stop_on_error=stop_on_error,
        )

    @telemetry.traced("download")
    async def download(
        self,
        image: UpscaledImage | str,
        dest: str | os.PathLike[str],
        *,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
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
        self._shared.pool.session()
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
        policy = self._attempts.policy(retry)
        transport = self._attempts.timed(timeouts).transport
        if await asyncio.to_thread(os.path.isdir, target):
            raise ValidationError(f"{target} is a directory; pass the path of the file to write")
        return await call_with_retries(
            lambda: self._download_attempt(transport, url, target),
            policy,
            what=f"download {target.name}",
            on_retry=self.on_retry,
        )

    async def _download_attempt(self, transport: Transport, url: str, target: Path) -> Path:
        """One GET of an image URL into a temp file, renamed onto ``target`` on success."""
        async with (
            self._shared.downloads,
            # No auth header: the session has none, and none is added here.
            transport.request(
                "GET",
                url,
                failed=f"download of {target.name} failed",
                hint="the image URL may be unreachable",
            ) as response,
        ):
            await transport.raise_for_status(response, download=True)
            # The Content-Length of an encoded (gzip) body counts the encoded bytes.
            encoded = "Content-Encoding" in response.headers
            return await write_atomically(
                target,
                response.content.iter_chunked(CHUNK_SIZE),
                max_size=transport.settings.max_download_size,
                length=None if encoded else response.content_length,
            )


_V2_HINT = "; for a v2 model's options use client.v2"


def _poll_rate(poll_limit: object) -> AsyncLimiter:
    """The client's one rate for polls: never more than ``polls`` in any ``seconds``.

    ``poll_limit`` is ``(polls, seconds)``. A leaky bucket of half the polls lets at
    most the whole number through in any window of that length, however the service
    counts its window.
    """
    if not isinstance(poll_limit, tuple) or len(poll_limit) != 2:
        raise ValidationError(f"poll_limit must be a (polls, seconds) pair, got {poll_limit!r}")
    polls = int_at_least("poll_limit's polls", poll_limit[0], 2)
    window = seconds("poll_limit's seconds", poll_limit[1])
    assert window is not None
    return AsyncLimiter(polls / 2, window)
