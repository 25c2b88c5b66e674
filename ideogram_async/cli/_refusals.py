"""Counting the requests the service refused (429), by reason, for the run's summary.

The client reports every 429 of an upscale to its allowance (``Allowance.rejected``)
while it holds the request's places: the ``inflight_limit`` ones it then sends again
by itself once a place frees, the others it raises to its retry loop. So the command
line wraps the allowance to count them all, and learns the reasons of the raised
ones from the errors it sees (retry events and final failures): every refusal that
was not raised is an ``inflight_limit`` one.
"""

from __future__ import annotations

from collections import Counter
from contextlib import AbstractAsyncContextManager

from ideogram_async import Allowance, RateLimitError
from ideogram_async.limits import OrganizationBound

__all__ = ["RefusalCounter", "WatchedAllowance"]

UNKNOWN = "unknown"
"""The reason shown for a 429 whose body named none (a gateway's, say)."""


class WatchedAllowance:
    """An :class:`~ideogram_async.Allowance` that counts the refusals reported to it.

    It delegates everything to ``inner``; ``refusals`` counts the 429s and
    ``reported`` keeps the last allowance the service named.
    """

    def __init__(self, inner: Allowance) -> None:
        self.inner = inner
        self.refusals = 0
        self.reported: int | None = None

    def __repr__(self) -> str:
        return f"WatchedAllowance({self.inner!r})"

    @property
    def maximum(self) -> int:
        return self.inner.maximum

    @property
    def limit(self) -> int:
        return self.inner.limit

    @property
    def in_use(self) -> int:
        return self.inner.in_use

    def hold(self, places: int) -> AbstractAsyncContextManager[None]:
        return self.inner.hold(places)

    async def rejected(self, allowance: int | None) -> None:
        self.refusals += 1
        if allowance is not None:
            self.reported = allowance
        await self.inner.rejected(allowance)

    async def completed(self) -> None:
        await self.inner.completed()

    def bind_organization(self, *, api_key: str, base_url: str) -> None:
        """Pass the client's organization on, if the wrapped allowance is kept per one."""
        if isinstance(self.inner, OrganizationBound):
            self.inner.bind_organization(api_key=api_key, base_url=base_url)

    async def aclose(self) -> None:
        await self.inner.aclose()


class RefusalCounter:
    """The 429s of a run by reason: raised ones as seen, the rest from the allowance's count."""

    def __init__(self) -> None:
        self._raised: Counter[str] = Counter()

    def saw(self, error: BaseException | None) -> None:
        """Count ``error`` if it is a 429 (from a retry event or a final failure)."""
        if isinstance(error, RateLimitError):
            self._raised[error.reject_reason or UNKNOWN] += 1

    def by_reason(self, allowance: Allowance) -> dict[str, int]:
        """Every refusal by reason; without a :class:`WatchedAllowance`, the raised ones only."""
        counts = Counter(self._raised)
        if isinstance(allowance, WatchedAllowance):
            waited = allowance.refusals - sum(self._raised.values())
            if waited > 0:
                counts["inflight_limit"] += waited
        return dict(counts)
