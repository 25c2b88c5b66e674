"""When and how long to retry: :class:`RetryPolicy` and its tenacity wiring.

Transient failures are retried with exponential backoff and full jitter
(``tenacity.wait_random_exponential``); a ``Retry-After``/``retry-after-ms`` header
replaces the backoff, up to ``retry_after_max``; an ``x-should-retry`` header from a
gateway overrides the status rules. The caller always gets the last real error,
never tenacity's ``RetryError``, with ``error.attempts`` set.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import attrs
import tenacity

from .errors import APIConnectionError, APIError, APITimeoutError, IdeogramError, ValidationError

__all__ = ["RetryEvent", "RetryPolicy"]

logger = logging.getLogger("ideogram_async")

T = TypeVar("T")

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


def _positive(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None and attribute.name == "deadline":
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValidationError(f"RetryPolicy.{attribute.name} must be a number >= 0, got {value!r}")


def _attempts(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(
            f"RetryPolicy.attempts must be an int >= 1 (1 means no retries), got {value!r}"
        )


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How a call retries transient failures. Immutable; pass one to the client or a call.

    Retried: connection errors, timeouts, HTTP 408, 409, 429, 500, 502, 503, 504.
    Never retried: 400, 401, 402, 403, 404, 413, 422, validation errors,
    malformed success bodies and transport errors retrying cannot fix (bad or
    looping redirects, oversized headers). A gateway's ``x-should-retry`` header overrides the
    status rules either way.
    """

    attempts: int = attrs.field(default=10, validator=_attempts)
    """Total attempts per call, the first included; 1 disables retries."""
    backoff_base: float = attrs.field(default=0.5, validator=_positive)
    """Upper bound of the first jittered wait, in seconds; it doubles per attempt."""
    backoff_max: float = attrs.field(default=20.0, validator=_positive)
    """Cap of the jittered exponential wait, in seconds."""
    retry_after_max: float = attrs.field(default=60.0, validator=_positive)
    """Cap on a wait asked for by ``Retry-After`` or ``retry-after-ms``, in seconds."""
    deadline: float | None = attrs.field(default=600.0, validator=_positive)
    """Limit on the whole call, waits and retries included (``None``: no limit)."""
    retry_timeout_after_upload: bool = attrs.field(
        default=True, validator=attrs.validators.instance_of(bool)
    )
    """Retry an attempt that failed after the whole image was sent.

    "Sent" means the image's last byte was handed to the operating system; a
    timeout, reset or cut-off answer after that leaves the service possibly done,
    and billed: retrying can pay for the upscale twice. ``True`` favours finishing
    every image; ``False`` never pays twice but fails such items
    (``APIConnectionError.body_sent`` tells them apart).
    """

    @classmethod
    def no_retries(cls) -> RetryPolicy:
        """A policy that makes exactly one attempt."""
        return cls(attempts=1)


@attrs.frozen
class RetryEvent:
    """What a retry hook receives before each backoff sleep."""

    attempt: int
    """The attempt that just failed (1-based)."""
    error: IdeogramError
    """Why it failed."""
    wait: float
    """Seconds the client will now wait before the next attempt."""


RetryHook = Callable[[RetryEvent], None]

_instant = False


def _set_instant(enabled: bool) -> None:
    """Make backoff sleeps instant (see ``ideogram_async.testing.instant_retries``)."""
    global _instant
    _instant = enabled


def _instant_enabled() -> bool:
    return _instant


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(0 if _instant else seconds)


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(float(millis) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def is_retryable(error: BaseException, policy: RetryPolicy) -> bool:
    """Whether ``error`` is worth another attempt under ``policy``."""
    if isinstance(error, APIError):
        if error.should_retry is not None:
            return error.should_retry
        return error.status in RETRYABLE_STATUSES
    if isinstance(error, APITimeoutError) and error.kind == "deadline":
        return False
    if isinstance(error, APIConnectionError):
        return error.transient and (policy.retry_timeout_after_upload or not error.body_sent)
    return False


class _PastDeadline(tenacity.stop.stop_base):
    """Stop when the next wait would end past the deadline: fail now, with the real error."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline_at: float | None) -> None:
        self._loop = loop
        self._deadline_at = deadline_at

    def __call__(self, state: tenacity.RetryCallState) -> bool:
        return (
            self._deadline_at is not None
            and self._loop.time() + state.upcoming_sleep >= self._deadline_at
        )


def _retrying(
    policy: RetryPolicy,
    loop: asyncio.AbstractEventLoop,
    deadline_at: float | None,
    what: str,
    on_retry: RetryHook | None,
) -> tenacity.AsyncRetrying:
    """The tenacity loop of ``policy``: when to stop, how long to wait, what to retry."""
    backoff = tenacity.wait_random_exponential(
        multiplier=policy.backoff_base, max=policy.backoff_max
    )

    def wait(state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, APIError) and error.retry_after is not None:
            return min(error.retry_after, policy.retry_after_max)
        return float(backoff(state))

    def before_sleep(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        assert isinstance(error, IdeogramError)
        logger.debug(
            "%s: attempt %d failed (%s); retrying in %.2fs",
            what,
            state.attempt_number,
            error,
            state.upcoming_sleep,
        )
        if on_retry is not None:
            on_retry(RetryEvent(state.attempt_number, error, state.upcoming_sleep))

    return tenacity.AsyncRetrying(
        stop=tenacity.stop_any(
            tenacity.stop_after_attempt(policy.attempts), _PastDeadline(loop, deadline_at)
        ),
        wait=wait,
        retry=tenacity.retry_if_exception(lambda e: is_retryable(e, policy)),
        before_sleep=before_sleep,
        sleep=_sleep,
        reraise=True,
    )


async def _logged_attempt(
    attempt: Callable[[int], Awaitable[T]],
    number: int,
    what: str,
    loop: asyncio.AbstractEventLoop,
) -> T:
    """Run attempt ``number``, logging its success and duration."""
    started = loop.time()
    result = await attempt(number)
    logger.debug("%s: attempt %d succeeded in %.2fs", what, number, loop.time() - started)
    return result


async def call_with_retries(
    attempt: Callable[[int], Awaitable[T]],
    policy: RetryPolicy,
    *,
    what: str,
    on_retry: RetryHook | None = None,
) -> tuple[T, int]:
    """Run ``attempt(n)`` until it succeeds, fails for good, or the deadline passes.

    Returns the result and the number of attempts it took. ``what`` names the call
    in log lines. The deadline covers everything, waiting for a concurrency slot
    included; when it fires the caller gets an :class:`APITimeoutError` of kind
    ``"deadline"``.
    """
    loop = asyncio.get_running_loop()
    deadline_at = None if policy.deadline is None else loop.time() + policy.deadline
    number = 1
    try:
        async with asyncio.timeout_at(deadline_at):
            # Most calls succeed at once: tenacity's machinery is built only after a failure.
            try:
                return await _logged_attempt(attempt, 1, what, loop), 1
            except IdeogramError as error:
                if policy.attempts == 1 or not is_retryable(error, policy):
                    raise
                first_error = error
            async for state in _retrying(policy, loop, deadline_at, what, on_retry):
                number = state.retry_state.attempt_number
                with state:
                    if number == 1:
                        raise first_error  # attempt 1 already ran: replay its outcome
                    return await _logged_attempt(attempt, number, what, loop), number
    except IdeogramError as error:
        error.attempts = number
        if is_retryable(error, policy):
            logger.warning("%s: giving up after %d attempt(s): %s", what, number, error)
        else:
            logger.debug("%s: attempt %d failed for good: %s", what, number, error)
        raise
    except TimeoutError:
        timeout = APITimeoutError(
            f"{what}: the deadline of {policy.deadline}s for the whole call passed "
            f"after {number} attempt(s); raise RetryPolicy.deadline or lower the load",
            kind="deadline",
        )
        timeout.attempts = number
        logger.warning("%s", timeout)
        raise timeout from None
    raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover
