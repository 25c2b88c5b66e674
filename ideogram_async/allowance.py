"""The allowance: how many places (images) may be in flight at once.

Ideogram limits the work an organization has in progress at once, counted in
images: a request for ``num_images=4`` holds 4 places until its answer arrives.
Over the allowance the service answers 429 (``reject_reason: inflight_limit``) and
runs nothing. An :class:`Allowance` keeps the client's requests inside it.

This module holds the interface every limiter implements, the record a change
of bound is reported with, and :class:`LocalAllowance`, the limiter of one
process (the Redis-backed one in ``ideogram_async.redis_allowance`` shares a
bound between processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from typing import Protocol, runtime_checkable

import attrs

from .errors import ValidationError

__all__ = ["Allowance", "AllowanceChange", "ChangeReason", "LocalAllowance"]

logger = logging.getLogger("ideogram_async")


class ChangeReason(enum.StrEnum):
    """Why the bound of an :class:`Allowance` changed."""

    LEARNED = "learned"
    """A 429 body named the allowance (``max_inflight_requests``)."""
    DECREASED = "decreased"
    """A 429 without a number: multiplicative decrease."""
    INCREASED = "increased"
    """Requests went through: additive increase, never above the maximum."""


@attrs.frozen(kw_only=True)
class AllowanceChange:
    """One change of an allowance's current bound, as given to ``on_change`` hooks."""

    old: int
    """The bound before the change, in places."""
    new: int
    """The bound after the change, in places."""
    reason: ChangeReason
    """Why it changed."""


@runtime_checkable
class Allowance(Protocol):
    """A limiter of places in flight that the client holds while a request is on the wire.

    ``hold(places)`` waits, first come first served, until ``places`` fit under
    the current bound, and gives them back when its block exits (normally, by an
    error or by cancellation). It never holds part of a request's places while it
    waits. The client reports what the service said from inside the block, while
    it still holds the places: :meth:`rejected` on a 429 ``inflight_limit`` (with
    the allowance when the body gives it), :meth:`completed` when a request ran;
    after a rejection it leaves the block and awaits :meth:`released` before
    holding again.
    """

    @property
    def maximum(self) -> int:
        """The configured bound, in places: the bound never rises above it."""
        ...

    @property
    def limit(self) -> int:
        """The current bound, in places (learned or adapted, 1..maximum)."""
        ...

    @property
    def in_use(self) -> int:
        """Places held now (for a shared allowance: by every process, as last seen)."""
        ...

    def hold(self, places: int) -> AbstractAsyncContextManager[None]:
        """Wait for ``places`` to fit, hold them for the block, release them after."""
        ...

    async def rejected(self, allowance: int | None) -> None:
        """The service refused a request as over the allowance (``allowance``: its number)."""
        ...

    async def completed(self) -> None:
        """A request held places and the service ran it (not rejected as over the allowance)."""
        ...

    async def released(self) -> None:
        """Return once some places have been released since the call (or a short fallback)."""
        ...

    async def aclose(self) -> None:
        """Release whatever the limiter itself holds (connections, background tasks)."""
        ...


_START = 10
"""Where an adaptive bound starts (capped by the maximum): the service's default allowance."""

_held: ContextVar[tuple[LocalAllowance, int] | None] = ContextVar(
    "ideogram_async_allowance_held", default=None
)
"""The limiter and decrease count at the moment the current task's places were granted."""


@attrs.define
class _Waiter:
    places: int
    granted: asyncio.Future[None]


class LocalAllowance:
    """The places in flight of one process: a weighted, first-come-first-served limiter.

    ``hold(places)`` waits until the places fit under :attr:`limit`, taking them
    all at once (never part of them while waiting), in the order the calls came:
    a request for 4 places is not overtaken by later requests for 1. A request
    needing more than the current bound (lowered by learning, but within the
    maximum) runs alone once nothing else is held, rather than waiting forever.
    Cancelling a waiter or a holder gives everything back and lets the next
    waiters in. When the bound drops below the places in use, nothing new is
    granted until the places in use fit under it again.

    The bound learns from what the service says:

    * a 429 with the allowance (``rejected(n)``) lowers it to ``n`` at once,
      logs the allowance once, and caps it there from then on;
    * with ``adaptive`` (the default), a 429 without a number halves it (never
      below 1), at most once per round: rejections of requests sent before the
      last decrease are the same overload, and are not counted again. Requests
      that ran raise it by one per :attr:`limit` of them, never above the
      maximum or the learned allowance, and only while the bound is full (a
      bound that is not reached says nothing about the allowance). The bound
      starts at 10 places (the service's default allowance), or the maximum if
      lower, and grows by one per completed request until the first rejection
      (a slow start, as in TCP), so a maximum set far above the real allowance
      costs a rejection or two rather than a burst of them. After a decrease it
      grows back the same way up to just under the places that were in use when
      the service refused, then by one per round.

    A rejection is matched to the hold of the task that reports it (to tell a
    fresh overload from the rest of one already answered), so report it from
    inside the ``hold`` block, as the client does.

    With ``adaptive=False`` the bound starts at the maximum and only a number
    from the service lowers it. ``on_change`` is called with every change of the
    bound (a hook that raises is logged and ignored). :meth:`released` waits for
    a release in this process, or ``fallback`` seconds at most: the places the
    service counts may be held by other processes, invisible here.
    """

    def __init__(
        self,
        maximum: int,
        *,
        adaptive: bool = True,
        on_change: Callable[[AllowanceChange], None] | None = None,
        fallback: float = 0.5,
    ) -> None:
        if isinstance(maximum, bool) or not isinstance(maximum, int) or maximum < 1:
            raise ValidationError(
                f"the allowance must be a whole number of places >= 1, got {maximum!r}; "
                "pass the number of images your organization may have in flight (default 10)"
            )
        if fallback < 0:
            raise ValidationError(f"fallback must be >= 0 seconds, got {fallback!r}")
        self._maximum = maximum
        self._adaptive = adaptive
        self._on_change = on_change
        self._fallback = fallback
        self._limit = min(maximum, _START) if adaptive else maximum
        self._ceiling = maximum
        """The bound never rises above this: the maximum, or the allowance the service named."""
        self._threshold = maximum
        """Below this the bound grows by one per completion; at or above it, by one per round."""
        # Where these two start cannot show: the first completion counted below the
        # threshold resets the one, and rounds only compare the other with itself.
        self._completions = 0  # pragma: no mutate
        self._decreases = 0  # pragma: no mutate
        self._in_use = 0
        self._waiters: deque[_Waiter] = deque()
        self._release = asyncio.Event()

    def __repr__(self) -> str:
        return (
            f"LocalAllowance(in_use={self._in_use}, limit={self._limit}, "
            f"maximum={self._maximum}, adaptive={self._adaptive})"
        )

    @property
    def maximum(self) -> int:
        """The configured bound, in places: the bound never rises above it."""
        return self._maximum

    @property
    def limit(self) -> int:
        """The current bound, in places (learned or adapted, 1..maximum)."""
        return self._limit

    @property
    def in_use(self) -> int:
        """Places held now by this process."""
        return self._in_use

    def hold(self, places: int) -> AbstractAsyncContextManager[None]:
        """Wait for ``places`` to fit, hold them for the block, release them after.

        Raises :class:`ValidationError` at once when ``places`` is not a whole
        number between 1 and :attr:`maximum`.
        """
        if isinstance(places, bool) or not isinstance(places, int) or places < 1:
            raise ValidationError(f"places must be a whole number >= 1, got {places!r}")
        if places > self._maximum:
            raise ValidationError(
                f"a request for {places} images needs {places} places in flight, more than "
                f"the allowance of {self._maximum}; ask for fewer images per request or "
                "raise the allowance (if your organization's is higher)"
            )
        return self._holding(places)

    @contextlib.asynccontextmanager
    async def _holding(self, places: int) -> AsyncIterator[None]:
        await self._acquire(places)
        token = _held.set((self, self._decreases))
        try:
            yield
        finally:
            _held.reset(token)
            self._give_back(places)

    async def _acquire(self, places: int) -> None:
        if not self._waiters and self._fits(places):
            self._in_use += places
            return
        waiter = _Waiter(places, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await waiter.granted
        except BaseException:
            if waiter.granted.done() and not waiter.granted.cancelled():
                # Granted in the same instant as the cancellation: give the places back.
                self._give_back(places)
            else:
                # _wake drops a cancelled waiter it meets too, so either one suffices.
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)  # pragma: no mutate
                # The head of the queue may have been what held the others back.
                self._wake()
            raise

    def _fits(self, places: int) -> bool:
        return self._in_use == 0 or self._in_use + places <= self._limit

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters[0]
            if waiter.granted.done():  # cancelled, not yet removed by its task
                self._waiters.popleft()
                continue  # pragma: no mutate (its task wakes the others too)
            if not self._fits(waiter.places):
                return
            self._waiters.popleft()
            self._in_use += waiter.places
            waiter.granted.set_result(None)

    def _give_back(self, places: int) -> None:
        self._in_use -= places
        self._release.set()
        self._release = asyncio.Event()
        self._wake()

    async def rejected(self, allowance: int | None) -> None:
        """The service refused a request as over the allowance (``allowance``: its number)."""
        held = _held.get()
        same_round = held is None or held[0] is not self or held[1] == self._decreases
        if allowance is not None:
            learned = max(1, min(allowance, self._maximum))
            if learned != self._ceiling:
                logger.info(
                    "the service reports an allowance of %d places in flight; "
                    "holding at most %d from now on",
                    allowance,
                    learned,
                )
                self._ceiling = learned
            if learned < self._limit:
                self._decrease(learned, ChangeReason.LEARNED)
                return
        if self._adaptive and same_round:
            # The bound already fits the allowance the service named (or it named
            # none): places are held elsewhere, by another process or by requests
            # the service still runs.
            self._decrease(max(1, self._limit // 2), ChangeReason.DECREASED)

    def _decrease(self, new: int, reason: ChangeReason) -> None:
        # The places in use when the service refused are more than the allowance has
        # room for: grow back quickly to just under them, then by one per round.
        self._threshold = max(new, min(self._limit, self._in_use) - 1)
        self._decreases += 1  # pragma: no mutate (-= 1 or += 2 also tell rounds apart)
        self._completions = 0
        self._change(new, reason)

    async def completed(self) -> None:
        """A request held places and the service ran it: grow the bound (adaptive only).

        Only while the bound is what holds requests back (all of it in use, or
        requests waiting): a bound that was not reached says nothing about the
        allowance (as for TCP, RFC 7661).
        """
        if not self._adaptive or self._limit >= self._ceiling:
            return
        if not self._waiters and self._in_use < self._limit:
            return
        self._completions += 1
        if self._limit < self._threshold or self._completions >= self._limit:
            self._completions = 0
            self._change(self._limit + 1, ChangeReason.INCREASED)
            self._wake()

    def _change(self, new: int, reason: ChangeReason) -> None:
        old, self._limit = self._limit, new
        if new == old:
            return
        logger.debug("allowance bound %d -> %d places (%s)", old, new, reason)
        if self._on_change is not None:
            try:
                self._on_change(AllowanceChange(old=old, new=new, reason=reason))
            except Exception:
                logger.exception("the allowance's on_change hook failed")

    async def released(self) -> None:
        """Return once some places were released here since the call, or after the fallback."""
        release = self._release
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._fallback):
                await release.wait()

    async def aclose(self) -> None:
        """Nothing to release: a local limiter holds no connections or tasks."""
