"""The exception tree of ``ideogram_async``.

Every error a caller can see from ``ideogram_async`` derives from :class:`IdeogramError`;
what goes wrong underneath (aiohttp, the network, the service, files) is mapped to this
tree where it happens, so ``except IdeogramError`` catches every failure of a call
(cancellation, ``KeyboardInterrupt`` and the like excepted: they are not failures).
Any other exception escaping is a bug::

    IdeogramError
    ├── APIError                               a request to the service went wrong
    │   ├── APIStatusError                     the service answered with a non-2xx status
    │   │   ├── BadRequestError                400, 413, 422
    │   │   ├── AuthenticationError            401, 403
    │   │   ├── PaymentRequiredError           402
    │   │   ├── NotFoundError                  404, 410
    │   │   ├── RateLimitError                 429
    │   │   └── ServerError                    5xx
    │   └── APIConnectionError                 no usable HTTP response
    │       └── APITimeoutError                connect, attempt or deadline timeout
    ├── BudgetExceededError                    the next upscale would pass the spend budget
    ├── ValidationError (also ValueError)      bad input or settings; nothing was sent
    ├── ClientClosedError (also RuntimeError)  the client was used after ``aclose()``
    ├── ImageChangedError                      the image file changed or vanished after its check
    ├── ResponseFormatError                    a 2xx whose body is not the documented shape
    ├── SharedAllowanceError                   the shared allowance's Redis is unreachable
    ├── GenerationFailedError                  a v2 background generation ended ``failed``
    └── WebhookVerificationError               a webhook delivery failed its signature check

As in openai-python, ``except APIError`` catches every failed request (an error
status, a refused connection, a timeout); ``except APIStatusError`` only the answers
with an error status.

Messages say what happened and what to do about it; they never contain the API key.
``attempts`` tells how many attempts were made before the error was raised (a request
the service refused as over the allowance, then sent again once a place freed, counts
as one attempt); a ``ValidationError`` always has 0: nothing was sent. An
:class:`APIStatusError` also carries the request it answers (``method``, ``url``) and, as
in openai-python and httpx, ``status_code``. Every error built from a response
(:class:`APIStatusError`, :class:`ResponseFormatError`) carries its ``request_id``.
"""

from __future__ import annotations

from decimal import Decimal

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BudgetExceededError",
    "ClientClosedError",
    "GenerationFailedError",
    "IdeogramError",
    "ImageChangedError",
    "NotFoundError",
    "PaymentRequiredError",
    "RateLimitError",
    "ResponseFormatError",
    "ServerError",
    "SharedAllowanceError",
    "ValidationError",
    "WebhookVerificationError",
]

_SNIPPET = 300


def snippet(text: str, limit: int = _SNIPPET) -> str:
    """Shorten ``text`` to one line of at most ``limit`` characters for a message."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class IdeogramError(Exception):
    """Base class of every error raised by ``ideogram_async``."""

    attempts: int = 0
    """How many HTTP attempts were made before this error (0: none were sent)."""


class ValidationError(IdeogramError, ValueError):
    """An argument, setting or image was rejected before anything was sent."""


class ClientClosedError(IdeogramError, RuntimeError):
    """The client was used after it was closed."""


class ImageChangedError(IdeogramError):
    """An image file changed, or was deleted, after it was checked; it is never retried.

    Unlike :class:`ValidationError` this can happen once part of the image has been
    sent, on any attempt.
    """


class APIError(IdeogramError):
    """A request to the service failed: an error status, or no usable answer at all.

    ``message`` is the error's text without the status prefix.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class APIConnectionError(APIError):
    """The request got no usable HTTP response (refused, reset, disconnected).

    ``body_sent`` is true when the whole image had been sent (handed to the
    operating system) before the failure, so the service may have done, and billed,
    the work. ``transient`` is false when retrying cannot help (an invalid or
    looping redirect, response headers over aiohttp's limits). ``unreachable`` is
    true when the host refused the connection or its name did not resolve: a wrong
    ``base_url`` or a service that is down, which retrying soon will not fix (see
    ``RetryPolicy.connect_attempts``).
    """

    def __init__(
        self,
        message: str,
        *,
        body_sent: bool = False,
        transient: bool = True,
        unreachable: bool = False,
    ) -> None:
        super().__init__(message)
        self.body_sent = body_sent
        self.transient = transient
        self.unreachable = unreachable


class APITimeoutError(APIConnectionError):
    """A time limit fired; ``kind`` says which one.

    ``"connect"`` (opening the connection), ``"attempt"`` (one request, from the
    moment it held its places in flight) or ``"deadline"`` (the whole call, retries
    and waits included).
    """

    def __init__(self, message: str, *, kind: str, body_sent: bool = False) -> None:
        super().__init__(message, body_sent=body_sent)
        self.kind = kind


class BudgetExceededError(IdeogramError):
    """The next upscale's price would pass the spend budget; it was not sent.

    ``max_usd`` is the budget, ``spent`` and ``reserved`` what was spent and held
    by upscales under way when the refusal happened, and ``needed`` the refused
    upscale's price (its quote's upper bound), all in US dollars. ``skipped`` is
    true for an upscale not even priced because an earlier one stopped its run.
    """

    def __init__(
        self,
        message: str,
        *,
        max_usd: Decimal,
        spent: Decimal,
        reserved: Decimal,
        needed: Decimal,
        skipped: bool = False,
    ) -> None:
        super().__init__(message)
        self.max_usd = max_usd
        self.spent = spent
        self.reserved = reserved
        self.needed = needed
        self.skipped = skipped


class ResponseFormatError(IdeogramError):
    """A successful status whose body is not the documented JSON shape.

    ``request_id`` is the id from the response headers, when there was one.
    """

    def __init__(
        self, message: str, *, body: str, status: int = 200, request_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.body = body
        self.status = status
        self.request_id = request_id


class SharedAllowanceError(IdeogramError):
    """The Redis server of a shared allowance could not be reached, or was lost mid-run.

    The call that raised it took no places and sent nothing. ``url`` names the
    server, with any password in it replaced by ``***``.
    """

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class GenerationFailedError(IdeogramError):
    """A v2 generation ended ``failed``; ``failure_reason`` says why (it is not billed)."""

    def __init__(self, message: str, *, generation_id: str, failure_reason: str | None) -> None:
        super().__init__(message)
        self.generation_id = generation_id
        self.failure_reason = failure_reason


class WebhookVerificationError(IdeogramError):
    """A webhook delivery is not signed by a given key, is stale, or lacks a header."""


class APIStatusError(APIError):
    """The service answered with a non-2xx status.

    ``message`` is the service's own error text, ``body`` the raw body (text),
    ``request_id`` the id from the response headers when there was one, and
    ``retry_after`` the wait in seconds that the service asked for, if any.
    ``method`` and ``url`` name the request answered (the URL without credentials or
    query string, which may hold a signature). When the body gives them (402 and
    429), ``reject_reason`` says why the service refused (``inflight_limit``,
    ``insufficient_funds``, ``daily_limit``, ...) and ``allowance`` is the
    organization's allowance of images in flight (the body's
    ``max_inflight_requests``).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        body: str = "",
        request_id: str | None = None,
        retry_after: float | None = None,
        should_retry: bool | None = None,
        reject_reason: str | None = None,
        allowance: int | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.request_id = request_id
        self.retry_after = retry_after
        self.should_retry = should_retry
        self.reject_reason = reject_reason
        self.allowance = allowance
        self.method = method
        self.url = url

    @property
    def status_code(self) -> int:
        """The HTTP status, under the name openai-python and httpx use."""
        return self.status

    def __str__(self) -> str:
        rid = f" (request id {self.request_id})" if self.request_id else ""
        return f"HTTP {self.status}: {self.message}{rid}"


class BadRequestError(APIStatusError):
    """400, 413 or 422: the service rejected the request or the image; do not retry."""


class AuthenticationError(APIStatusError):
    """401 or 403: the API key is missing, wrong or not allowed to do this."""


class PaymentRequiredError(APIStatusError):
    """402: the balance, daily limit or plan does not allow the request; never retried.

    ``reject_reason`` says which (``insufficient_funds``, ``daily_limit``,
    ``subscription_required``, ``priority_credit_required``, ``feature_limit``) and
    the message what to do about it.
    """


class NotFoundError(APIStatusError):
    """404 or 410: the URL is wrong (check ``base_url`` and the flavor) or has expired."""


class RateLimitError(APIStatusError):
    """429: too many requests; ``retry_after`` holds the wait the service asked for.

    ``reject_reason == "inflight_limit"`` means the organization had its whole
    allowance of images in flight (``allowance`` places, when the body says); the
    client waits for a place and sends the request again by itself, so this reaches
    the caller only when the request can never fit.
    """


class ServerError(APIStatusError):
    """5xx: the service or a gateway failed; usually transient."""
