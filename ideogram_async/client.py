"""``IdeogramClient``: one aiohttp session, bounded concurrency, retried upscales."""

from __future__ import annotations

import asyncio
import enum
import json
import os
from collections.abc import AsyncIterable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import aiohttp
import attrs
from aiolimiter import AsyncLimiter

from ._files import DEFAULT_MAX_DOWNLOAD_SIZE, name_too_long, write_atomically
from ._version import __version__
from .batch import BatchInput, BatchRun, UpscaleJob, fan_out
from .errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    ClientClosedError,
    ValidationError,
    error_for_status,
    snippet,
)
from .models import UpscaledImage, UpscaleRequest, UpscaleResponse, parse_response
from .retry import RetryHook, RetryPolicy, call_with_retries, parse_retry_after
from .uploads import (
    CHUNK_SIZE,
    DEFAULT_MAX_FILE_SIZE,
    ImageInput,
    ImagePayload,
    PreparedImage,
    prepare_image,
)

__all__ = ["Flavor", "IdeogramClient", "Timeouts"]


OFFICIAL_BASE_URL = "https://api.ideogram.ai"
_T = TypeVar("_T")
_REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-amzn-requestid", "cf-ray")


class Flavor(enum.StrEnum):
    """Which form of the endpoint to speak (SPEC.md: "Two flavors of one call")."""

    PROXY = "proxy"
    """``POST {base_url}/ideogram/upscale`` with ``Authorization: Bearer <key>``."""
    OFFICIAL = "official"
    """``POST https://api.ideogram.ai/upscale`` with ``Api-Key: <key>``."""


def _seconds(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValidationError(f"Timeouts.{attribute.name} must be a number > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class Timeouts:
    """Per-attempt time limits, in seconds. The whole-call limit is ``RetryPolicy.deadline``.

    An upscale takes seconds to a minute, so ``attempt`` is generous. It starts
    only once the request holds a concurrency slot, so waiting in the queue never
    counts against it.
    """

    connect: float = attrs.field(default=10.0, validator=_seconds)
    """Opening a TCP/TLS connection."""
    attempt: float = attrs.field(default=180.0, validator=_seconds)
    """One request: upload, the service's work and reading the answer."""


class _Secret:
    """Holds the API key so that no ``repr``, log line or traceback shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"


def _of_type(name: str, value: _T | None, kind: type[_T]) -> _T | None:
    """``value`` if it is ``None`` or a ``kind``, else a ``ValidationError`` naming ``name``."""
    if value is not None and not isinstance(value, kind):
        raise ValidationError(f"{name} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _int_at_least(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValidationError(f"{name} must be an int >= {low}, got {value!r}")
    return value


class IdeogramClient:
    """An async client for the Ideogram upscale endpoint; use it as an async context manager.

    One client holds one connection pool and one concurrency limit: share it across
    the tasks of an app rather than creating one per call. ``max_concurrency``
    bounds requests in flight (the official API allows 10 per key);
    ``requests_per_second`` optionally bounds their start rate too.

    The key comes from ``api_key`` or ``IDEOGRAM_API_KEY``; the base URL from
    ``base_url`` or ``IDEOGRAM_BASE_URL`` (the official flavor defaults to
    ``https://api.ideogram.ai``). Pass ``session`` to reuse an ``aiohttp``
    session: the client then never closes it, and its pool limits apply.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        flavor: Flavor | str = Flavor.PROXY,
        max_concurrency: int = 10,
        requests_per_second: float | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        max_file_size: int = DEFAULT_MAX_FILE_SIZE,
        max_download_size: int = DEFAULT_MAX_DOWNLOAD_SIZE,
        session: aiohttp.ClientSession | None = None,
        on_retry: RetryHook | None = None,
    ) -> None:
        try:
            self.flavor = Flavor(flavor)
        except ValueError:
            raise ValidationError(f"flavor must be 'proxy' or 'official', got {flavor!r}") from None
        key = api_key if api_key is not None else os.environ.get("IDEOGRAM_API_KEY")
        if not key or not key.strip():
            raise ValidationError(
                "no API key: pass api_key= or set the IDEOGRAM_API_KEY environment variable"
            )
        self._key = _Secret(key.strip())
        base = base_url or os.environ.get("IDEOGRAM_BASE_URL")
        if not base:
            if self.flavor is Flavor.PROXY:
                raise ValidationError(
                    "no base URL for the proxy flavor: pass base_url= or set "
                    "IDEOGRAM_BASE_URL (or use flavor='official' for api.ideogram.ai)"
                )
            base = OFFICIAL_BASE_URL
        if not base.startswith(("http://", "https://")):
            raise ValidationError(f"base_url must start with http:// or https://, got {base!r}")
        self.base_url = base.rstrip("/")
        path = "/ideogram/upscale" if self.flavor is Flavor.PROXY else "/upscale"
        self._url = self.base_url + path
        self.max_concurrency = _int_at_least("max_concurrency", max_concurrency, 1)
        if requests_per_second is not None and (
            isinstance(requests_per_second, bool)
            or not isinstance(requests_per_second, int | float)
            or requests_per_second <= 0
        ):
            raise ValidationError(
                f"requests_per_second must be a number > 0 or None, got {requests_per_second!r}"
            )
        self.requests_per_second = requests_per_second
        self.max_file_size = _int_at_least("max_file_size", max_file_size, 1)
        self.max_download_size = _int_at_least("max_download_size", max_download_size, 1)
        self.timeouts = _of_type("timeouts", timeouts, Timeouts) or Timeouts()
        self.retry = _of_type("retry", retry, RetryPolicy) or RetryPolicy()
        # Built once: every request (API or download) uses the same per-request limits.
        self._request_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.timeouts.connect
        )
        self._on_retry = on_retry
        self._slots = asyncio.Semaphore(self.max_concurrency)
        self._download_slots = asyncio.Semaphore(self.max_concurrency)
        self._limiter = (
            None if requests_per_second is None else AsyncLimiter(requests_per_second, 1)
        )
        if session is not None and {"authorization", "api-key"} & {
            h.lower() for h in session.headers
        }:
            raise ValidationError(
                "the session passed in sends an Authorization or Api-Key header with every "
                "request, which would leak the key to image hosts; pass api_key= instead"
            )
        self._session = session
        self._owns_session = session is None
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"IdeogramClient(base_url={self.base_url!r}, flavor={self.flavor.value!r}, "
            f"max_concurrency={self.max_concurrency}, api_key={self._key!r})"
        )

    async def __aenter__(self) -> Self:
        self._ensure_session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (unless the session was passed in). Idempotent."""
        self._closed = True
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has been called."""
        return self._closed

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ClientClosedError(
                "this IdeogramClient is closed; create a new one (or keep the "
                "'async with' block open while you use it)"
            )
        if self._session is None:
            connector = aiohttp.TCPConnector(
                # API requests and image downloads each get max_concurrency connections,
                # so a request never waits for the pool once it holds a slot.
                limit=2 * self.max_concurrency,
                ttl_dns_cache=300,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={
                    "User-Agent": f"ideogram-async/{__version__} aiohttp/{aiohttp.__version__}"
                },
            )
        return self._session

    def _policy(self, retry: RetryPolicy | None) -> RetryPolicy:
        """The policy of one call: its own override, else the client's."""
        return _of_type("retry", retry, RetryPolicy) or self.retry

    def _redact(self, text: str) -> str:
        """Mask the key in a body a service echoed it into, before it reaches an error."""
        key = self._key.reveal()
        return text.replace(key, "***") if key in text else text

    def _auth_headers(self) -> dict[str, str]:
        if self.flavor is Flavor.PROXY:
            return {"Authorization": f"Bearer {self._key.reveal()}"}
        return {"Api-Key": self._key.reveal()}

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
        self._ensure_session()
        if request is None:
            request = UpscaleRequest()
        elif not isinstance(request, UpscaleRequest):
            raise ValidationError(
                f"request must be an UpscaleRequest, got {type(request).__name__}; "
                f"build one with UpscaleRequest(prompt=..., resemblance=...)"
            )
        policy = self._policy(retry)
        prepared = await prepare_image(image, max_file_size=self.max_file_size, filename=filename)
        with prepared:
            form = request.to_json()
            return await call_with_retries(
                lambda number: self._attempt(prepared, form, number),
                policy,
                what=f"upscale {prepared.filename}",
                on_retry=self._on_retry,
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
    ) -> BatchRun:
        """Upscale many images, yielding a :class:`BatchResult` for each as it finishes.

        ``inputs`` is any iterable or async iterable of images, of ``(image,
        UpscaleRequest)`` pairs, or of :class:`UpscaleJob`; it is pulled lazily, and
        at most ``window`` items (default ``2 * max_concurrency``) are in progress
        or buffered at once, however long it is. A failed item is a result with
        ``error`` set; nothing is raised for it. ``ordered=True`` yields in input
        order; ``stop_on_error=True`` ends the run after the first failed result.
        Leaving the loop cancels what is still running (use ``async with`` for
        that to happen at once).
        """
        self._ensure_session()
        if isinstance(inputs, str | bytes | bytearray | memoryview | os.PathLike):
            raise ValidationError(
                "upscale_many takes an iterable of images, not one image; "
                "wrap it in a list or call upscale() for a single image"
            )
        default = request or UpscaleRequest()
        if not isinstance(default, UpscaleRequest):
            raise ValidationError(
                f"request must be an UpscaleRequest, got {type(default).__name__}"
            )
        size = 2 * self.max_concurrency if window is None else window
        _int_at_least("window", size, 1)
        self._policy(retry)

        async def run(job: UpscaleJob) -> tuple[UpscaleResponse, int]:
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
        self._ensure_session()
        url = image.url if isinstance(image, UpscaledImage) else image
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
            lambda number: self._download_attempt(url, target, number),
            self._policy(retry),
            what=f"download {target.name}",
            on_retry=self._on_retry,
        )
        return path

    async def _download_attempt(self, url: str, target: Path, number: int) -> Path:
        """One GET of an image URL into a temp file, renamed onto ``target`` on success."""
        session = self._ensure_session()
        async with self._download_slots:
            timer = asyncio.timeout(self.timeouts.attempt)
            try:
                async with (
                    timer,
                    # No auth header: the session has none, and none is added here.
                    session.get(
                        url,
                        timeout=self._request_timeout,
                    ) as response,
                ):
                    if response.status >= 300:
                        text = self._redact(await response.text(errors="replace"))
                        raise _api_error(response, text, download=True)
                    written = await write_atomically(
                        target,
                        response.content.iter_chunked(CHUNK_SIZE),
                        max_size=self.max_download_size,
                        length=response.content_length,
                    )
            except TimeoutError as exc:
                raise self._timeout_error(exc, timer, None) from None
            except aiohttp.ClientError as exc:
                raise APIConnectionError(
                    f"download of {target.name} failed ({type(exc).__name__}: {exc}); "
                    f"the image URL may be unreachable"
                ) from exc
        return written

    async def _attempt(self, image: PreparedImage, form: str, number: int) -> UpscaleResponse:
        """One HTTP attempt, holding a concurrency slot only while on the wire."""
        session = self._ensure_session()
        async with self._slots:
            if self._limiter is not None:
                await self._limiter.acquire()
            body = aiohttp.MultipartWriter("form-data")
            body.append(form).set_content_disposition("form-data", name="image_request")
            upload = image.payload()
            body.append_payload(upload)
            headers = {"Accept": "application/json", **self._auth_headers()}
            timer = asyncio.timeout(self.timeouts.attempt)
            try:
                await image.check()
                async with (
                    timer,
                    session.post(
                        self._url,
                        data=body,
                        headers=headers,
                        allow_redirects=False,
                        timeout=self._request_timeout,
                    ) as response,
                ):
                    text = self._redact(await response.text(errors="replace"))
            except TimeoutError as exc:
                raise self._timeout_error(exc, timer, upload) from None
            except aiohttp.ClientError as exc:
                if upload.error is not None:
                    raise upload.error from None
                raise APIConnectionError(
                    f"upscale {image.filename}: connection to {self.base_url} failed "
                    f"({type(exc).__name__}: {exc}); check base_url and the network"
                ) from exc
            finally:
                upload.release()
        if response.status >= 300:
            raise _api_error(response, text)
        return parse_response(text, response.status)

    def _timeout_error(
        self, exc: TimeoutError, timer: asyncio.Timeout, upload: ImagePayload | None
    ) -> APITimeoutError:
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return APITimeoutError(
                f"could not connect to {self.base_url} within {self.timeouts.connect}s "
                f"(Timeouts.connect); check base_url and the network",
                kind="connect",
            )
        if timer.expired():
            body_sent = upload is not None and upload.complete
            sent = "after the image was sent" if body_sent else "before it completed"
            return APITimeoutError(
                f"the request timed out {sent}, after {self.timeouts.attempt}s "
                f"(Timeouts.attempt); the service may be overloaded",
                kind="attempt",
                body_sent=body_sent,
            )
        return APITimeoutError(f"the request timed out: {exc}", kind="attempt")


def _api_error(response: aiohttp.ClientResponse, text: str, *, download: bool = False) -> APIError:
    """Map a non-2xx response to the matching :class:`APIError` subclass."""
    headers: Mapping[str, str] = response.headers
    should_retry = headers.get("x-should-retry", "").strip().lower()
    detail = _error_detail(text, response.content_type)
    if download and response.status in (404, 410):
        detail = (
            "the image URL has expired or does not exist; download results soon after upscaling"
        )
    return error_for_status(
        response.status,
        detail,
        body=text,
        request_id=next((headers[h] for h in _REQUEST_ID_HEADERS if h in headers), None),
        retry_after=parse_retry_after(headers),
        should_retry={"true": True, "false": False}.get(should_retry),
    )


def _error_detail(text: str, content_type: str) -> str:
    """The service's own error text: JSON detail/message/error, else a body snippet."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    for _ in range(3):  # unwrap {"error": {"message": ...}} and the like
        if not isinstance(data, dict):
            break
        data = next((data[k] for k in ("detail", "message", "error") if k in data), None)
    if isinstance(data, str):
        return snippet(data)
    if data is not None:
        return snippet(json.dumps(data))
    if "html" in content_type:
        return f"an HTML error page from a gateway: {snippet(text, 120)!r}"
    return snippet(text) if text.strip() else ""
