"""The allowance of one process: a weighted, first-come-first-served limiter of places."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar, Token

import attrs

from ..errors import ValidationError
from .bound import DEFAULT_ALLOWANCE, FORGET_AFTER, AllowanceChange, Bound

__all__ = ["LocalAllowance"]

logger = logging.getLogger("ideogram_async")


class _Grant:
    """One ``hold`` block of a task: takes its places on entry, gives them back on exit.

    While the block runs it is the task's current grant: what a report from inside the
    block refers to. A plain class rather than a generator-based context manager: this
    is every request's path, and the uncontended hold should cost little more than a
    semaphore's.
    """

    __slots__ = ("_token", "allowance", "level", "limit", "places", "returned", "round")

    level: int
    """Places held here once it was granted, its own included."""
    limit: int
    """The bound when it was granted."""
    round: int
    """The bound's round when it was granted."""
    _token: Token[_Grant | None]

    def __init__(self, allowance: LocalAllowance, places: int) -> None:
        self.allowance = allowance
        self.places = places
        self.returned = False

    async def __aenter__(self) -> None:
        await self.allowance._acquire(self)
        self._token = _grant.set(self)

    async def __aexit__(self, *exc_info: object) -> None:
        _grant.reset(self._token)
        if not self.returned:
            self.allowance._give_back(self.places)


_grant: ContextVar[_Grant | None] = ContextVar("ideogram_async_local_grant", default=None)


@attrs.define
class _Waiter:
    grant: _Grant
    granted: asyncio.Future[None]


class LocalAllowance:
    """The places in flight of one process: a weighted, first-come-first-served limiter.

    ``hold(places)`` waits until the places fit under :attr:`limit`, taking them all at
    once (never part of them while waiting), in the order the calls came: a request for
    4 places is not overtaken by later requests for 1. A request needing more than the
    current bound (lowered by learning, but within the maximum) runs alone once nothing
    else is held, rather than waiting forever. Cancelling a waiter or a holder gives
    everything back and lets the next waiters in. When the bound drops below the places
    in use, nothing new is granted until the places in use fit under it again.

    The bound follows :class:`~ideogram_async.limits.bound.Bound`: a slow start from 10
    places (the service's default allowance) when ``adaptive`` (the default), the
    organization's number learned from a 429, probe-and-hold, and a backoff with jitter
    when others hold the organization's places. A refused request gives its places back
    without waking anyone: it is not a completion. Report what the service said from
    inside the ``hold`` block, as the client does: a report is matched to its hold.

    With ``adaptive=False`` the bound starts at the maximum and only a number from the
    service lowers it. ``on_change`` is called with every change of the bound (a hook
    that raises is logged and ignored). What was learned is forgotten after
    ``forget_after`` seconds without a change.
    """

    def __init__(
        self,
        maximum: int,
        *,
        adaptive: bool = True,
        on_change: Callable[[AllowanceChange], None] | None = None,
        forget_after: float = FORGET_AFTER,
    ) -> None:
        if isinstance(maximum, bool) or not isinstance(maximum, int) or maximum < 1:
            raise ValidationError(
                f"the allowance must be a whole number of places >= 1, got {maximum!r}; "
                "pass the number of images your organization may have in flight "
                f"(default {DEFAULT_ALLOWANCE})"
            )
        if not forget_after > 0:
            raise ValidationError(f"forget_after must be > 0 seconds, got {forget_after!r}")
        self._bound = Bound(maximum, adaptive=adaptive, forget_after=forget_after)
        self._on_change = on_change
        self._in_use = 0
        self._waiters: deque[_Waiter] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return (
            f"LocalAllowance(in_use={self._in_use}, limit={self.limit}, "
            f"maximum={self.maximum}, adaptive={self._bound.adaptive})"
        )

    @property
    def maximum(self) -> int:
        """The configured bound, in places: the bound never rises above it."""
        return self._bound.maximum

    @property
    def limit(self) -> int:
        """The current bound, in places (learned or adapted, 1..maximum)."""
        return self._bound.limit

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
        if places > self.maximum:
            raise ValidationError(
                f"a request for {places} images needs {places} places in flight, more than "
                f"the allowance of {self.maximum}; ask for fewer images per request or "
                "raise the allowance (if your organization's is higher)"
            )
        return _Grant(self, places)

    async def _acquire(self, grant: _Grant) -> None:
        self._report(self._bound.at(time.monotonic()))
        if not self._waiters and self._fits(grant.places):
            self._take(grant)
            return
        waiter = _Waiter(grant, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await waiter.granted
        except BaseException:
            if waiter.granted.done() and not waiter.granted.cancelled():
                # Granted in the same instant as the cancellation: give the places back.
                self._give_back(grant.places)
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                # The head of the queue may have been what held the others back.
                self._wake()
            raise

    def _take(self, grant: _Grant) -> None:
        """Give ``grant`` its places, noting the level, bound and round it was granted at."""
        bound = self._bound
        self._in_use += grant.places
        grant.level, grant.limit, grant.round = self._in_use, bound.limit, bound.round

    def _fits(self, places: int) -> bool:
        closed = self._bound.closed_for(time.monotonic())
        if closed > 0:
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(closed, self._reopen)
            return False
        return self._in_use == 0 or self._in_use + places <= self.limit

    def _reopen(self) -> None:
        self._timer = None
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters[0]
            if waiter.granted.done():  # cancelled, not yet removed by its task
                self._waiters.popleft()
                continue
            if not self._fits(waiter.grant.places):
                return
            self._waiters.popleft()
            self._take(waiter.grant)
            waiter.granted.set_result(None)

    def _give_back(self, places: int) -> None:
        self._in_use -= places
        self._wake()

    async def rejected(self, allowance: int | None) -> None:
        """The service refused the request held here: learn, back off, give its places back.

        The places come back without waking anyone (a refusal is not a completion);
        only when nothing is held any more are the waiters looked at.
        """
        grant = _grant.get()
        ours = grant is not None and grant.allowance is self and not grant.returned
        ceiling = self._bound.ceiling
        change = self._bound.rejected(
            number=allowance,
            held=self._in_use,
            places=grant.places if grant is not None and ours else 0,
            round=grant.round if grant is not None and ours else self._bound.round,
            now=time.monotonic(),
            jitter=random.random(),
        )
        if allowance is not None and self._bound.ceiling != ceiling:
            logger.info(
                "the service reports an allowance of %d places in flight; "
                "holding at most %d from now on",
                allowance,
                self._bound.ceiling,
            )
        if grant is not None and ours:
            grant.returned = True
            self._in_use -= grant.places
        if self._in_use == 0:
            self._wake()
        self._report(change)

    async def completed(self) -> None:
        """The service ran the request held here: the bound may grow (adaptive only)."""
        grant = _grant.get()
        bound = self._bound
        if grant is not None and grant.allowance is self:
            level, granted, round_ = grant.level, grant.limit, grant.round
        else:
            level, granted, round_ = self._in_use, bound.limit, bound.round
        waiting = self._waiters[0].grant.places if self._waiters else 0
        now = time.monotonic()
        change = bound.completed(
            level=level, granted=granted, waiting=waiting, round=round_, now=now
        )
        self._report(change)
        self._wake()

    def _report(self, change: AllowanceChange | None) -> None:
        if change is None:
            return
        logger.debug("allowance bound %d -> %d places (%s)", change.old, change.new, change.reason)
        if self._on_change is not None:
            try:
                self._on_change(change)
            except Exception:
                logger.exception("the allowance's on_change hook failed")

    async def aclose(self) -> None:
        """Stop the timer of a backoff under way; nothing else to release."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
