"""The allowance: how many places (images) may be in flight at once.

Ideogram limits the work an organization has in progress at once, counted in
images: a request for ``num_images=4`` holds 4 places until its answer arrives.
Over the allowance the service answers 429 (``reject_reason: inflight_limit``) and
runs nothing. An :class:`Allowance` keeps the client's requests inside it.

This module holds the interface every limiter implements (the local one here,
the Redis-backed one in ``ideogram_async.redis_allowance``) and the record a
change of bound is reported with.
"""

from __future__ import annotations

import enum
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

import attrs

__all__ = ["Allowance", "AllowanceChange", "ChangeReason"]


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
    waits. The client reports what the service said: :meth:`rejected` on a 429
    ``inflight_limit`` (with the allowance when the body gives it), :meth:`completed`
    when a request ran; after a rejection it awaits :meth:`released` before
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
