"""The wire: the aiohttp session, time limits, capped body reads, and status to error.

:class:`Pool` owns the aiohttp session that a client and every client derived from it
(``with_options``) share. :class:`Transport` sends each request over it with one
client's settings: the per-attempt time limit, the key's header, the cap on answers.
Whatever fails on the way becomes an :class:`~ideogram_async.errors.IdeogramError`:
aiohttp's exceptions turn into :class:`APIConnectionError` or :class:`APITimeoutError`
in :meth:`Transport.request`, and a non-2xx answer into the :class:`APIStatusError`
subclass of its status in :func:`error_for_status`.

A hostile or broken server may send an endless, huge or gzip-bombed body, or echo the
key back in a form plain masking misses; and aiohttp's response errors carry the
request's headers. :func:`read_capped`, :func:`scrub` and :func:`without_headers` are
the defences.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, TypeVar

import aiohttp
import attrs
from multidict import CIMultiDict, CIMultiDictProxy

from . import telemetry
from ._settings import Flavor, Secret, Settings
from ._version import __version__
from .errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    IdeogramError,
    NotFoundError,
    PaymentRequiredError,
    RateLimitError,
    ResponseFormatError,
    ServerError,
    ValidationError,
    snippet,
)
from .retry import parse_retry_after
from .uploads import ImagePayload

__all__ = [
    "DEFAULT_MAX_RESPONSE_SIZE",
    "Pool",
    "Transport",
    "error_for_status",
    "read_capped",
    "scrub",
    "without_headers",
]

_T = TypeVar("_T")
_REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-amzn-requestid", "cf-ray")
_USER_AGENT = f"ideogram-async/{__version__} aiohttp/{aiohttp.__version__}"
DEFAULT_MAX_RESPONSE_SIZE = 4 * 1024 * 1024
"""The largest API answer or error body read (4 MB, decoded): answers over it are
refused, error bodies cut."""
_READ_CHUNK = 64 * 1024


class Pool:
    """The connection pool that a client and the clients derived from it share.

    The session is created on first use (unless one was passed in, which is then
    never closed here), with the ``trace_configs`` given; after :meth:`aclose` every
    request raises ``ClientClosedError``.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession | None,
        connections: int,
        trace_configs: Sequence[aiohttp.TraceConfig] | None = None,
    ) -> None:
        self._trace_configs = _checked_trace_configs(trace_configs, session)
        self._session = session
        self._owns_session = session is None
        self._connections = connections
        self.closed = False

    def session(self) -> aiohttp.ClientSession:
        """The open session, created on first use."""
        if self.closed:
            raise ClientClosedError(
                "this IdeogramClient is closed; create a new one (or keep the "
                "'async with' block open while you use it)"
            )
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._connections, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": _USER_AGENT},
                trace_configs=self._trace_configs,
            )
        return self._session

    async def aclose(self) -> None:
        """Close the session unless it was passed in. Idempotent."""
        self.closed = True
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()


@attrs.frozen
class Transport:
    """One client's way of sending requests over the shared :class:`Pool`.

    Frozen: the settings it reads are the client's, and a change (``with_options``,
    a call's own ``timeouts``) makes a new transport over the same pool.
    """

    settings: Settings
    pool: Pool
    # Built once: every request (API or download) uses the same per-request limits. No
    # total limit (ClientTimeout's default): the attempt's own timer bounds each request.
    _timeout: aiohttp.ClientTimeout = attrs.field(init=False)

    @_timeout.default
    def _client_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(sock_connect=self.settings.timeouts.connect)

    api_headers: Mapping[str, str] = attrs.field(init=False, repr=False)
    """The headers of every API request: JSON accepted, and the key in the header of the
    flavor (sent to the API only, never to image hosts). Built once."""

    @api_headers.default
    def _api_headers(self) -> Mapping[str, str]:
        key = self.settings.key.reveal()
        if self.settings.flavor is Flavor.PROXY:
            return {"Accept": "application/json", "Authorization": f"Bearer {key}"}
        return {"Accept": "application/json", "Api-Key": key}

    @contextlib.asynccontextmanager
    async def request(
        self,
        method: str,
        url: str,
        *,
        failed: str,
        hint: str,
        upload: ImagePayload | None = None,
        **options: Any,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request within ``Timeouts.attempt`` and yield its response.

        aiohttp errors raised while sending or reading map to ``APIConnectionError``
        (``failed`` says what failed, ``hint`` what to check) or ``APITimeoutError``; an
        ``upload`` that failed on its own side raises its own error, and is
        released when the request ends, however it ends.
        """
        timer = asyncio.timeout(self.settings.timeouts.attempt)
        try:
            session = self.pool.session()
            async with (
                timer,
                session.request(method, url, timeout=self._timeout, **options) as response,
            ):
                if telemetry.ENABLED:  # telemetry: the request id on the call's span
                    telemetry.answered(request_id(response.headers, self.settings.key))
                yield response
        except TimeoutError as exc:
            _abort(upload)
            raise self._timeout_error(exc, timer, upload) from None
        except aiohttp.ClientError as exc:
            _abort(upload)
            if upload is not None and upload.error is not None:
                raise upload.error from None
            raise self._connection_error(without_headers(exc), failed, hint, upload) from exc
        except BaseException:
            _abort(upload)  # cancelled, or the caller's reading failed: drop the socket now
            raise
        finally:
            if upload is not None:
                upload.release()

    def _connection_error(
        self, exc: aiohttp.ClientError, failed: str, hint: str, upload: ImagePayload | None
    ) -> IdeogramError:
        """The error of a request that got no usable answer; ``exc`` carries no headers."""
        what = self.settings.key.redact(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError) and not isinstance(
            exc, aiohttp.RedirectClientError
        ):
            return ValidationError(f"{failed}: not a URL it can fetch ({what}); check it")
        permanent = isinstance(exc, aiohttp.RedirectClientError) or (
            isinstance(exc, aiohttp.ClientResponseError)
            and not isinstance(exc, aiohttp.ClientHttpProxyError)
        )
        if permanent:
            hint = "retrying cannot help: the answer (a redirect or its headers) is unusable"
        body_sent = upload is not None and upload.complete
        when = " after the image was sent" if body_sent else ""
        unreachable = _unreachable(exc)
        return APIConnectionError(
            f"{failed}{when} ({unreachable or what}); {hint}",
            body_sent=body_sent,
            transient=not permanent,
            unreachable=unreachable is not None,
        )

    async def raise_for_status(
        self, response: aiohttp.ClientResponse, *, download: bool = False
    ) -> None:
        """Raise the ``APIStatusError`` of a non-2xx answer (``download``: of an image URL).

        Its body is read up to ``max_response_size`` (the rest is dropped) and the
        key is masked in it, in the detail decoded from it and in the request id.
        """
        if response.status >= 300:
            text = scrub(
                self.settings.key,
                await read_capped(response, self.settings.max_response_size, cut=True),
            )
            raise _api_error(response, text, self.settings.key, download=download)

    async def text(self, response: aiohttp.ClientResponse) -> str:
        """The body of a 2xx answer, as it came; any other status raises its ``APIStatusError``.

        A body over ``max_response_size`` raises ``ResponseFormatError``.
        """
        await self.raise_for_status(response)
        try:
            return await read_capped(response, self.settings.max_response_size, cut=False)
        except ResponseFormatError as exc:
            exc.request_id = request_id(response.headers, self.settings.key)
            raise

    def answer(
        self, parse: Callable[[str, int], _T], response: aiohttp.ClientResponse, text: str
    ) -> _T:
        """``parse(text, status)`` of a 2xx answer; a ``ResponseFormatError`` it raises
        shows no key and carries the response's request id."""
        try:
            try:
                return parse(text, response.status)
            except ResponseFormatError:
                scrubbed = scrub(self.settings.key, text)
                if scrubbed == text:
                    raise
            return parse(scrubbed, response.status)  # fails the same way, quoting the masked body
        except ResponseFormatError as exc:
            exc.request_id = request_id(response.headers, self.settings.key)
            raise

    def _timeout_error(
        self, exc: TimeoutError, timer: asyncio.Timeout, upload: ImagePayload | None
    ) -> APITimeoutError:
        timeouts = self.settings.timeouts
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return APITimeoutError(
                f"could not connect to {self.settings.base_url} within {timeouts.connect}s "
                f"(Timeouts.connect); check base_url and the network",
                kind="connect",
            )
        if timer.expired():
            body_sent = upload is not None and upload.complete
            sent = "after the image was sent" if body_sent else "before it completed"
            return APITimeoutError(
                f"the request timed out {sent}, after {timeouts.attempt}s "
                f"(Timeouts.attempt); the service may be overloaded",
                kind="attempt",
                body_sent=body_sent,
            )
        return APITimeoutError(f"the request timed out: {exc}", kind="attempt")


def _unreachable(exc: aiohttp.ClientError) -> str | None:
    """Why the host cannot be reached at all (refused, unknown name); ``None`` otherwise."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "the host name does not resolve"
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
        exc.os_error, ConnectionRefusedError
    ):
        return "connection refused: nothing listens at that address"
    return None


def _checked_trace_configs(
    trace_configs: Sequence[aiohttp.TraceConfig] | None, session: aiohttp.ClientSession | None
) -> list[aiohttp.TraceConfig] | None:
    """``trace_configs`` as the created session takes them, checked before anything is sent."""
    if trace_configs is None:
        return None
    if isinstance(trace_configs, aiohttp.TraceConfig) or not all(
        isinstance(config, aiohttp.TraceConfig) for config in trace_configs
    ):
        raise ValidationError(
            "trace_configs must be a list of aiohttp.TraceConfig, "
            f"got {type(trace_configs).__name__}"
        )
    if session is not None:
        raise ValidationError(
            "trace_configs apply to the session the client creates; with session=, "
            "give them to your own aiohttp.ClientSession(trace_configs=...)"
        )
    return list(trace_configs)


def _abort(upload: ImagePayload | None) -> None:
    """Close the connection an upload went out on at once, unsent data and all.

    A plain close waits until the data in the socket's buffer is sent, which for a
    server that stopped reading is never: the socket would outlive the request.
    """
    if upload is not None:
        upload.abort()


def _api_error(
    response: aiohttp.ClientResponse, text: str, key: Secret, *, download: bool
) -> APIStatusError:
    """Map a non-2xx response to the matching :class:`APIStatusError` subclass."""
    headers: Mapping[str, str] = response.headers
    said = headers.get("x-should-retry", "")
    should_retry = said.strip().lower()
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to decode
        data = None
    expired = download and response.status in (404, 410)
    return error_for_status(
        response.status,
        _error_detail(data, text, response.content_type),
        hint=_EXPIRED if expired else None,
        body=text,
        request_id=request_id(headers, key),
        retry_after=parse_retry_after(headers),
        should_retry={"true": True, "false": False}.get(should_retry),
        **_rejection(data),
        method=response.method,
        url=str(response.url.with_user(None).with_query(None).with_fragment(None)),
    )


def request_id(headers: Mapping[str, str], key: Secret) -> str | None:
    """The id a response names itself by (the first of the usual headers), key masked."""
    return next((key.redact(headers[h]) for h in _REQUEST_ID_HEADERS if h in headers), None)


_EXPIRED = "the image URL has expired or does not exist; download results soon after upscaling"


def _rejection(data: object) -> dict[str, Any]:
    """``reject_reason`` and ``allowance`` (``max_inflight_requests``) of a 402/429 body."""
    if not isinstance(data, dict):
        return {}
    reason, allowance = data.get("reject_reason"), data.get("max_inflight_requests")
    return {
        "reject_reason": reason if isinstance(reason, str) else None,
        "allowance": (
            allowance
            if isinstance(allowance, int) and not isinstance(allowance, bool) and allowance >= 1
            else None
        ),
    }


def _error_detail(data: object, text: str, content_type: str) -> str:
    """The service's own error text: JSON detail/message/error, else a body snippet."""
    for _ in range(3):  # unwrap {"error": {"message": ...}} and the like
        if not isinstance(data, dict):
            break
        data = next((data[k] for k in ("detail", "message", "error") if k in data), None)
    if isinstance(data, str):
        return snippet(data)
    if data is not None:
        try:
            return snippet(json.dumps(data))
        except RecursionError:
            return snippet(text)
    if "html" in content_type:
        return f"an HTML error page from a gateway: {snippet(text, 120)!r}"
    return snippet(text)  # "" for a blank body


_CLASSES: Mapping[int, type[APIStatusError]] = {
    400: BadRequestError,
    413: BadRequestError,
    422: BadRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    402: PaymentRequiredError,
    404: NotFoundError,
    410: NotFoundError,
    429: RateLimitError,
}
_HINTS: Mapping[int, str] = {
    400: "fix the request or the image; retrying will not help",
    401: "check the API key (api_key= or IDEOGRAM_API_KEY)",
    402: "the balance or the plan does not allow this request; top up or upgrade the plan",
    403: "check the API key (api_key= or IDEOGRAM_API_KEY) and its permissions",
    404: "check base_url and the flavor (proxy: /ideogram/upscale, official: /upscale)",
    408: "the service timed out reading the request; usually transient",
    409: "a conflicting request was in progress; usually transient",
    410: "the resource is gone (an image URL expires soon after the upscale)",
    413: "the image is too large for the service; send a smaller file",
    422: "a value is out of range or the image is unsupported; fix the request",
    429: "too many requests; lower allowance= or requests_per_second",
}
_PAYMENT_HINTS: Mapping[str, str] = {
    "insufficient_funds": "the account's balance is too low; top it up, then run again",
    "daily_limit": (
        "the organization reached its daily spending limit; wait until tomorrow, "
        "or raise the limit in the billing settings"
    ),
    "subscription_required": "this needs an API subscription; subscribe, then run again",
    "priority_credit_required": (
        "this needs priority credits; buy some or upgrade the plan, then run again"
    ),
    "feature_limit": (
        "the plan does not include this feature, or its share of it is used up; upgrade the plan"
    ),
}
_REDIRECT_HINT = (
    "the API answered with a redirect, which is not followed so that the key goes "
    "nowhere else; check base_url (https rather than http, no extra path)"
)


def error_for_status(
    status: int,
    detail: str,
    *,
    body: str,
    request_id: str | None,
    retry_after: float | None,
    should_retry: bool | None,
    hint: str | None = None,
    reject_reason: str | None = None,
    allowance: int | None = None,
    method: str | None = None,
    url: str | None = None,
) -> APIStatusError:
    """Build the :class:`APIStatusError` subclass that matches ``status``.

    The message is the service's ``detail`` followed by ``hint``, what to do about
    it (by default a hint chosen by status and ``reject_reason``). A 402 is never
    retried, whatever a gateway's ``x-should-retry`` says.
    """
    cls = _CLASSES.get(status, ServerError if status >= 500 else APIStatusError)
    if status == 402:
        should_retry = False
        if hint is None and reject_reason is not None:
            hint = _PAYMENT_HINTS.get(reject_reason)
    if hint is None and status == 429 and reject_reason == "inflight_limit":
        places = "its whole allowance" if allowance is None else f"its allowance of {allowance}"
        hint = (
            f"the organization had {places} images in flight (every process using its "
            "keys counts); ask for fewer images per request, or ask Ideogram for more"
        )
    if hint is None and 300 <= status < 400:
        hint = _REDIRECT_HINT
    if hint is None:
        hint = _HINTS.get(status, "the service or a gateway failed; usually transient")
    message = f"{detail} — {hint}" if detail else hint
    return cls(
        message,
        status=status,
        body=body,
        request_id=request_id,
        retry_after=retry_after,
        should_retry=should_retry,
        reject_reason=reject_reason,
        allowance=allowance,
        method=method,
        url=url,
    )


async def read_capped(response: aiohttp.ClientResponse, limit: int, *, cut: bool) -> str:
    """The body decoded as UTF-8 (bad bytes replaced), at most ``limit`` bytes of it.

    Read in chunks with a running total (aiohttp inflates gzip chunk by chunk), so a
    huge or endless body costs no more memory than the cap. Over the cap, the body
    is ``cut`` short or refused with ``ResponseFormatError``, before reading when
    its ``Content-Length`` already says so.
    """
    length = response.content_length
    if not cut and length is not None and length > limit:
        raise _too_large(response.status, limit)
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.content.iter_chunked(_READ_CHUNK):
        total += len(chunk)
        if total > limit:
            if not cut:
                raise _too_large(response.status, limit)
            chunks.append(chunk[: len(chunk) - (total - limit)])
            break
        chunks.append(chunk)
    # Always UTF-8, whatever charset the header names: JSON is UTF-8 (RFC 8259), and a
    # named codec may not be a text codec at all ("idna", "punycode", "undefined").
    return b"".join(chunks).decode("utf-8", errors="replace")


def _too_large(status: int, limit: int) -> ResponseFormatError:
    return ResponseFormatError(
        f"the service answered HTTP {status} with a body over max_response_size "
        f"({limit} bytes); check base_url points at the upscale service, or raise "
        f"max_response_size",
        body="",
        status=status,
    )


def scrub(key: Secret, text: str) -> str:
    """``text`` with the key masked, also where JSON escapes (``\\/``, ``\\u``) hide it.

    A JSON body that decodes to something holding the key comes back re-encoded,
    masked; any other text is returned with the key's plain form masked.
    """
    text = key.redact(text)
    if "\\" not in text:
        return text
    try:
        decoded = json.dumps(json.loads(text), ensure_ascii=False)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to decode
        return text
    return key.redact(decoded) if key.reveal() in decoded else text


def without_headers(exc: aiohttp.ClientError) -> aiohttp.ClientError:
    """``exc`` without the request headers (the key) aiohttp keeps in its response errors."""
    if isinstance(exc, aiohttp.ClientResponseError):
        exc.request_info = exc.request_info._replace(headers=CIMultiDictProxy(CIMultiDict()))
        exc.history = ()
        exc.headers = None
        exc.args = (exc.request_info, ())
    return exc
