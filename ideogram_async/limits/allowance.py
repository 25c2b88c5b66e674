"""The interface every limiter of places in flight implements.

Ideogram limits the work an organization has in progress at once, counted in images:
a request for ``num_images=4`` holds 4 places until its answer arrives. Over the
allowance the service answers 429 (``reject_reason: inflight_limit``) and runs
nothing. An :class:`Allowance` keeps the client's requests inside it;
:class:`AllowanceWrapper` is the base of one that watches another, and
:class:`Refusals` tells the 429s it heard of apart by reason.
"""

from __future__ import annotations

from collections import Counter
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

from ..errors import RateLimitError

__all__ = ["Allowance", "AllowanceWrapper", "OrganizationBound", "Refusals"]


@runtime_checkable
class Allowance(Protocol):
    """A limiter of places in flight that the client holds while a request is on the wire.

    ``hold(places)`` waits, first come first served, until ``places`` fit under the
    current bound, and gives them back when its block exits (normally, by an error
    or by cancellation). It never holds part of a request's places while it waits.
    The client reports what the service said from inside the block, while it still
    holds the places: :meth:`completed` when the request ran, :meth:`rejected` on a
    429 ``inflight_limit``. Places given back by a refused request wake nobody: the
    client then asks ``hold`` again, and the allowance decides when it is worth
    sending (a place of its own freed, or a backoff passed).
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
        """The service refused the request held here (``allowance``: the number it named)."""
        ...

    async def completed(self) -> None:
        """The service ran the request held here (it was not refused as over the allowance)."""
        ...

    async def aclose(self) -> None:
        """Release whatever the limiter itself holds (connections, background tasks)."""
        ...


@runtime_checkable
class OrganizationBound(Protocol):
    """An allowance kept per organization: the client tells it whose it is when created.

    :class:`~ideogram_async.IdeogramClient` calls :meth:`bind_organization` with its API
    key and base URL; a shared allowance derives its key from them (never storing the
    API key) unless it was named explicitly.
    """

    def bind_organization(self, *, api_key: str, base_url: str) -> None:
        """Key the allowance by the organization of ``api_key`` at ``base_url``'s host."""
        ...


class AllowanceWrapper:
    """An :class:`Allowance` that passes everything on to ``inner``: the base of a watcher.

    A subclass overrides what it observes (say :meth:`rejected`, to count the 429s) and
    calls on to ``inner``; being keyed by the client's organization is passed on too.
    """

    def __init__(self, inner: Allowance) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"

    @property
    def maximum(self) -> int:
        """The wrapped allowance's maximum."""
        return self.inner.maximum

    @property
    def limit(self) -> int:
        """The wrapped allowance's current bound."""
        return self.inner.limit

    @property
    def in_use(self) -> int:
        """The wrapped allowance's places in use."""
        return self.inner.in_use

    def hold(self, places: int) -> AbstractAsyncContextManager[None]:
        """The wrapped allowance's hold."""
        return self.inner.hold(places)

    async def rejected(self, allowance: int | None) -> None:
        """Reported to the wrapped allowance."""
        await self.inner.rejected(allowance)

    async def completed(self) -> None:
        """Reported to the wrapped allowance."""
        await self.inner.completed()

    async def aclose(self) -> None:
        """Close the wrapped allowance."""
        await self.inner.aclose()

    def bind_organization(self, *, api_key: str, base_url: str) -> None:
        """Pass the client's organization on, if the wrapped allowance is kept per one."""
        if isinstance(self.inner, OrganizationBound):
            self.inner.bind_organization(api_key=api_key, base_url=base_url)


class Refusals:
    """The 429s of a run by ``reject_reason``, for a summary.

    Every 429 of an upscale reaches :meth:`Allowance.rejected`, but only those raised to
    the retry loop carry a reason the caller sees (in a retry event or the final
    failure): the client waits the ``inflight_limit`` ones out by itself. So the raised
    ones are counted as :meth:`saw` meets them, and the rest of the 429s the allowance
    heard of are ``inflight_limit``.
    """

    UNKNOWN = "unknown"
    """The reason given for a 429 whose body named none (a gateway's, say)."""

    def __init__(self) -> None:
        self.raised: Counter[str] = Counter()
        """The 429s raised to the retry loop, by reason."""

    def saw(self, error: BaseException | None) -> None:
        """Count ``error`` if it is a 429 (from a retry event or a final failure)."""
        if isinstance(error, RateLimitError):
            self.raised[error.reject_reason or self.UNKNOWN] += 1

    def by_reason(self, heard: int) -> dict[str, int]:
        """Every 429 by reason, of the ``heard`` the allowance was told of."""
        counts = Counter(self.raised)
        waited = heard - sum(self.raised.values())
        if waited > 0:
            counts["inflight_limit"] += waited
        return dict(counts)
