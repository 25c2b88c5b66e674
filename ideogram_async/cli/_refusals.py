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

from ideogram_async import Allowance, RateLimitError
from ideogram_async.limits import AllowanceWrapper

__all__ = ["RefusalCounter", "WatchedAllowance"]

UNKNOWN = "unknown"
"""The reason shown for a 429 whose body named none (a gateway's, say)."""


class WatchedAllowance(AllowanceWrapper):
    """An :class:`~ideogram_async.Allowance` that counts the refusals reported to it.

    It delegates everything to ``inner``; ``refusals`` counts the 429s and
    ``reported`` keeps the last allowance the service named.
    """

    def __init__(self, inner: Allowance) -> None:
        super().__init__(inner)
        self.refusals = 0
        self.reported: int | None = None

    async def rejected(self, allowance: int | None) -> None:
        """Counted (with the number it named), then reported to the wrapped allowance."""
        self.refusals += 1
        if allowance is not None:
            self.reported = allowance
        await self.inner.rejected(allowance)


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
