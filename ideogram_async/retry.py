"""When and how long to retry: :class:`RetryPolicy` and its tenacity wiring.

Transient failures are retried with exponential backoff and full jitter
(``tenacity.wait_random_exponential``); a ``Retry-After``/``retry-after-ms`` header
replaces the backoff, up to ``retry_after_max``; an ``x-should-retry`` header from a
gateway overrides the status rules. A host that refuses connections or whose name does
not resolve gets only ``connect_attempts``. The caller always gets the last real
error, never tenacity's ``RetryError``, with ``error.attempts`` set.

A call's first attempt runs on its own; only after a failure does the call enter a
``tenacity.AsyncRetrying``, whose stop, wait and retry strategies are built once per
policy. :class:`Deadline` bounds the whole call and keeps its :class:`CallRecord`, from
which ``BatchResult.attempts`` is read (:func:`counting_attempts`). :func:`set_testing`
makes the waits instant for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime
import email.utils
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar

import attrs
import tenacity

from . import telemetry
from ._checks import seconds_field
from .errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    IdeogramError,
    ValidationError,
)

__all__ = ["RetryEvent", "RetryPolicy", "is_testing", "set_testing"]

logger = logging.getLogger("ideogram_async")

T = TypeVar("T")

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


def _count(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(
            f"RetryPolicy.{attribute.name} must be an int >= 1 (1 means no retries), got {value!r}"
        )


def _flag(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise ValidationError(f"RetryPolicy.{attribute.name} must be True or False, got {value!r}")


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How a call retries transient failures. Immutable; pass one to the client or a call.

    Retried: connection errors, timeouts, HTTP 408, 409, 429, 500, 502, 503, 504.
    Never retried: 400, 401, 402, 403, 404, 413, 422, validation errors,
    malformed success bodies and transport errors retrying cannot fix (bad or
    looping redirects, oversized headers). A gateway's ``x-should-retry`` header overrides the
    status rules either way.
    """

    attempts: int = attrs.field(default=10, validator=_count)
    """Total attempts per call, the first included; 1 disables retries."""
    connect_attempts: int = attrs.field(default=3, validator=_count)
    """Attempts after which a refused connection or an unknown host name ends the call.

    Those do not heal in the seconds a retry waits, so a wrong ``base_url`` or a dead
    host fails within a few seconds instead of running through ``attempts``.
    """
    backoff_base: float = seconds_field(0.5, zero=True)
    """Upper bound of the first jittered wait, in seconds; it doubles per attempt."""
    backoff_max: float = seconds_field(20.0, zero=True)
    """Cap of the jittered exponential wait, in seconds."""
    retry_after_max: float = seconds_field(60.0, zero=True)
    """Cap on a wait asked for by ``Retry-After`` or ``retry-after-ms``, in seconds."""
    deadline: float | None = seconds_field(600.0, none=True)
    """Limit on the whole call, waits and retries included (``None``: no limit)."""
    retry_timeout_after_upload: bool = attrs.field(default=True, validator=_flag)
    """Retry an attempt that failed after the whole image was sent.

    "Sent" means the image's last byte was handed to the operating system; a
    timeout, reset or cut-off answer after that leaves the service possibly done,
    and billed: retrying can pay for the upscale twice. ``True`` favours finishing
    every image; ``False`` never pays twice but fails such items
    (``APIConnectionError.body_sent`` tells them apart).
    """
    _strategies: dict[str, Any] = attrs.field(init=False, repr=False, eq=False)
    """tenacity's stop, wait and retry strategies, built once: a call only assembles them."""

    def __attrs_post_init__(self) -> None:
        stops: list[tenacity.stop.stop_base] = [
            tenacity.stop_after_attempt(self.attempts),
            _StopUnreachable(self.connect_attempts),
        ]
        if self.deadline is not None:
            stops.append(tenacity.stop_before_delay(self.deadline))
        strategies = {
            "stop": tenacity.stop_any(*stops),
            "wait": _WaitRetryAfter(
                self.retry_after_max,
                tenacity.wait_random_exponential(
                    multiplier=self.backoff_base, max=self.backoff_max
                ),
            ),
            "retry": tenacity.retry_if_exception(self._retryable),
        }
        object.__setattr__(self, "_strategies", strategies)

    def _retryable(self, error: BaseException) -> bool:
        return is_retryable(error, self)

    @classmethod
    def no_retries(cls) -> RetryPolicy:
        """A policy that makes exactly one attempt."""
        return cls(attempts=1)


@attrs.frozen(kw_only=True)
class RetryEvent:
    """What a retry hook receives before each wait between attempts."""

    attempt: int
    """The attempt that just failed (1-based)."""
    error: IdeogramError
    """Why it failed."""
    wait: float
    """Seconds the client will now wait before the next attempt."""
    waited: float
    """Seconds this call already waited between earlier attempts (0 before the first wait)."""
    name: str
    """Which call is retried, e.g. ``"upscale photo.png"`` or ``"download photo.png"``."""


RetryHook = Callable[[RetryEvent], None]


@attrs.frozen
class _Testing:
    attempts: int | None


_testing: _Testing | None = None


def set_testing(
    enabled: bool, *, attempts: int | None = None
) -> contextlib.AbstractContextManager[None]:
    """Switch test mode on or off for every client in this process.

    In test mode the waits between attempts take no time, so a test of retry
    behaviour runs in milliseconds; retries still happen, and hooks still see the wait
    each one would have made (the deadline counts only real time). With ``attempts``,
    no call makes more than that many attempts (``attempts=1``: no retries at all).

    The setting applies at once. The returned context manager restores the previous
    setting on exit, so ``with set_testing(True): ...`` limits it to a block (this is
    what ``ideogram_async.testing.instant_retries()`` does).
    """
    global _testing
    if attempts is not None and (
        isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1
    ):
        raise ValidationError(f"set_testing(attempts=) must be an int >= 1, got {attempts!r}")
    previous = _testing
    _testing = _Testing(attempts) if enabled else None
    return _restoring(previous)


@contextlib.contextmanager
def _restoring(previous: _Testing | None) -> Iterator[None]:
    global _testing
    try:
        yield
    finally:
        _testing = previous


def is_testing() -> bool:
    """Whether test mode (:func:`set_testing`) is on."""
    return _testing is not None


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(0 if _testing else seconds)


_DELAY = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def _delay(text: str | None, unit: float) -> float | None:
    """A header's non-negative number in seconds; ``None`` for anything else."""
    if text is None or not _DELAY.fullmatch(text.strip()):
        return None
    seconds = float(text) / unit
    return seconds if math.isfinite(seconds) else None


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date).

    Hostile values are ignored, so the usual backoff applies: anything that is not a
    plain number (``nan``, ``inf``, negative, garbage), a number too large for a float,
    and a date that is not in the future. ``retry_after_max`` caps what is left.
    """
    millis = _delay(headers.get("retry-after-ms"), 1000)
    if millis is not None:
        return millis
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _delay(value, 1)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": UTC by the RFC, not local time
        when = when.replace(tzinfo=datetime.UTC)
    left = when.timestamp() - time.time()
    return left if left > 0 else None


def is_retryable(error: BaseException, policy: RetryPolicy) -> bool:
    """Whether ``error`` is worth another attempt under ``policy``."""
    if isinstance(error, APIStatusError):
        if error.should_retry is not None:
            return error.should_retry
        return error.status in RETRYABLE_STATUSES
    if isinstance(error, APIConnectionError):
        return error.transient and (policy.retry_timeout_after_upload or not error.body_sent)
    return False


def _failure(state: tenacity.RetryCallState) -> BaseException | None:
    """The error of the attempt that just ended."""
    outcome = state.outcome
    assert outcome is not None  # tenacity asks only once an attempt has ended
    return outcome.exception()


class _StopUnreachable(tenacity.stop.stop_base):
    """Stop once ``attempts`` were made and the host still cannot be reached."""

    def __init__(self, attempts: int) -> None:
        self.attempts = attempts

    def __call__(self, state: tenacity.RetryCallState) -> bool:
        error = _failure(state)
        return (
            isinstance(error, APIConnectionError)
            and error.unreachable
            and state.attempt_number >= self.attempts
        )


class _WaitRetryAfter(tenacity.wait.wait_base):
    """The wait the service asked for (up to ``cap``), else ``backoff``'s."""

    def __init__(self, cap: float, backoff: tenacity.wait.wait_base) -> None:
        self.cap = cap
        self.backoff = backoff

    def __call__(self, state: tenacity.RetryCallState) -> float:
        error = _failure(state)
        if isinstance(error, APIStatusError) and error.retry_after is not None:
            return min(error.retry_after, self.cap)
        return self.backoff(state)


def _before_sleep(
    what: str, on_retry: RetryHook | None
) -> Callable[[tenacity.RetryCallState], None]:
    """Log the coming wait of call ``what`` and tell ``on_retry`` about it."""

    def before_sleep(state: tenacity.RetryCallState) -> None:
        error = _failure(state)
        assert isinstance(error, IdeogramError)  # only those are retried
        wait = state.upcoming_sleep
        telemetry.retrying(state.attempt_number, error, wait)
        logger.debug(
            "%s: attempt %d failed (%s); retrying in %.2fs", what, state.attempt_number, error, wait
        )
        if on_retry is not None:
            # tenacity has already added the coming wait to idle_for.
            waited = state.idle_for - wait
            on_retry(
                RetryEvent(
                    attempt=state.attempt_number, error=error, wait=wait, waited=waited, name=what
                )
            )

    return before_sleep


class _Tally:
    """The attempts one call made, for the caller that asked (``counting_attempts``)."""

    __slots__ = ("attempts",)

    def __init__(self) -> None:
        self.attempts = 0


_tally: contextvars.ContextVar[_Tally | None] = contextvars.ContextVar(
    "ideogram_async_tally", default=None
)


@contextlib.contextmanager
def counting_attempts() -> Iterator[_Tally]:
    """Count the attempts of the calls made inside the block (in this task).

    ``upscale_many`` reads it for each item's ``attempts``; a call's error carries its
    own count as ``error.attempts``.
    """
    tally = _Tally()
    token = _tally.set(tally)
    try:
        yield tally
    finally:
        _tally.reset(token)


class CallRecord:
    """What one call has done so far: its name in messages, its start, the attempts it made."""

    __slots__ = ("attempts", "started", "what")

    def __init__(self, what: str) -> None:
        self.what = what
        """Which call, e.g. ``"upscale photo.png"``; renamed once the image's name is known."""
        self.started = time.monotonic()
        """When the call (and its deadline) started, by ``time.monotonic``."""
        self.attempts = 0


class Deadline:
    """The time limit of one whole call (``RetryPolicy.deadline``), from its start.

    Everything inside counts: reading the input, waiting for places, attempts and
    the waits between them. It yields the call's :class:`CallRecord` (for
    :func:`retried`); when the deadline passes the caller gets an
    :class:`APITimeoutError` of kind ``"deadline"``. (A class, not a generator: it
    runs once per call, on the hot path.)
    """

    __slots__ = ("_policy", "_record", "_timer")

    def __init__(self, policy: RetryPolicy, what: str) -> None:
        self._policy = policy
        self._record = CallRecord(what)
        self._timer = asyncio.timeout(policy.deadline)

    async def __aenter__(self) -> CallRecord:
        await self._timer.__aenter__()
        return self._record

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        record = self._record
        tally = _tally.get()
        if tally is not None:
            tally.attempts += record.attempts
        try:
            await self._timer.__aexit__(exc_type, exc, tb)
        except TimeoutError:  # raised by the timer only when the deadline fired
            timeout = APITimeoutError(
                f"{record.what}: the deadline of {self._policy.deadline}s for the whole call "
                f"passed after {record.attempts} attempt(s); raise RetryPolicy.deadline or "
                "lower the load",
                kind="deadline",
            )
            timeout.attempts = record.attempts
            logger.warning("%s", timeout)
            raise timeout from None


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    what: str,
    on_retry: RetryHook | None = None,
) -> T:
    """Run ``attempt()`` until it succeeds, fails for good, or the deadline passes.

    ``what`` names the call in log lines and retry events. The deadline covers
    everything, waiting for places in flight included.
    """
    async with Deadline(policy, what) as record:
        return await retried(attempt, policy, record, on_retry=on_retry)


async def retried(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    record: CallRecord,
    *,
    on_retry: RetryHook | None = None,
) -> T:
    """The retry loop of a call already inside its :class:`Deadline`.

    The first attempt runs on its own: nearly every call succeeds at once, and
    tenacity's machinery costs CPU on every call. Only a failed first attempt enters
    the tenacity loop, which replays that failure as attempt 1 (so waits, stop rules,
    hooks and log lines are tenacity's, as for any other attempt). tenacity's clock is
    set back to the call's start, so that no wait is begun that would end at or past
    the deadline.
    """
    what = record.what
    record.attempts = 1
    telemetry.attempt(1)
    started = time.monotonic()
    try:
        result = await attempt()
    except IdeogramError as error:
        first: IdeogramError = error
    else:
        logger.debug("%s: attempt 1 succeeded in %.2fs", what, time.monotonic() - started)
        return result
    strategies = policy._strategies
    if _testing is not None and _testing.attempts is not None:
        cap = tenacity.stop_after_attempt(_testing.attempts)
        strategies = {**strategies, "stop": tenacity.stop_any(strategies["stop"], cap)}
    try:
        async for state in tenacity.AsyncRetrying(
            sleep=_sleep,
            before_sleep=_before_sleep(what, on_retry),
            reraise=True,
            **strategies,
        ):
            retry_state = state.retry_state
            record.attempts = number = retry_state.attempt_number
            with state:
                if number == 1:
                    retry_state.start_time -= time.monotonic() - record.started
                    raise first
                telemetry.attempt(number)
                started = time.monotonic()
                result = await attempt()
                logger.debug(
                    "%s: attempt %d succeeded in %.2fs", what, number, time.monotonic() - started
                )
                return result
    except IdeogramError as error:
        error.attempts = record.attempts
        if is_retryable(error, policy):
            logger.warning("%s: giving up after %d attempt(s): %s", what, record.attempts, error)
        else:
            logger.debug("%s: attempt %d failed for good: %s", what, record.attempts, error)
        raise
    raise AssertionError("tenacity either returns or raises")  # pragma: no cover
