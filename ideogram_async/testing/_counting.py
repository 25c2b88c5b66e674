"""An allowance that counts what the client reports to it, for tests and benchmarks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from ideogram_async.limits import Allowance, AllowanceWrapper

__all__ = ["CountingAllowance"]


class CountingAllowance(AllowanceWrapper):
    """Wraps an :class:`~ideogram_async.limits.Allowance` and counts what goes through it.

    ``asked`` counts holds asked for, ``rejections`` lists the number each 429 named
    (``None`` without one), ``completions`` counts requests that ran; :meth:`until`
    waits for a condition on them without polling. Everything else is the wrapped
    allowance's, including being keyed by the client's organization.
    """

    def __init__(self, inner: Allowance) -> None:
        super().__init__(inner)
        self.asked = 0
        self.rejections: list[int | None] = []
        self.completions = 0
        self._changed = asyncio.Event()

    def hold(self, places: int) -> AbstractAsyncContextManager[None]:
        """The wrapped allowance's hold, counted when asked for."""
        self.asked += 1
        self._poke()
        return self.inner.hold(places)

    async def rejected(self, allowance: int | None) -> None:
        """Counted, then reported to the wrapped allowance."""
        self.rejections.append(allowance)
        self._poke()
        await self.inner.rejected(allowance)

    async def completed(self) -> None:
        """Counted, then reported to the wrapped allowance."""
        self.completions += 1
        self._poke()
        await self.inner.completed()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds (checked after each count).

        Bound it with ``asyncio.timeout`` in a test, so that a count never reached fails.
        """
        while not condition():
            await self._changed.wait()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
