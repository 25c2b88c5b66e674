"""Counting the requests the service refused (429) for the run's summary.

The client reports every 429 of an upscale to its allowance (``Allowance.rejected``)
while it holds the request's places, so the command line wraps the allowance to count
them all; :class:`~ideogram_async.limits.Refusals` tells them apart by reason.
"""

from __future__ import annotations

from ideogram_async import Allowance
from ideogram_async.limits import AllowanceWrapper

__all__ = ["WatchedAllowance"]


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
