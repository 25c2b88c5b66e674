"""Blocking file work in a worker thread that a cancelled call cannot leave half done."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["in_thread"]

_T = TypeVar("_T")


async def in_thread(
    work: Callable[..., _T], *args: Any, undo: Callable[[_T], None] | None = None
) -> _T:
    """``work(*args)`` in a worker thread; if the caller is cancelled, ``undo`` its result.

    A cancelled ``asyncio.to_thread`` leaves its thread running, and whatever it
    opens or creates open behind the cancelled call. Here the result is undone when
    the thread finishes (a done callback, so also if the caller is cancelled again),
    and the first cancellation waits for that: the work is short (a stat, an open, a
    write), so "cancelled" still means "nothing left open".
    """
    future = asyncio.get_running_loop().run_in_executor(None, work, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(lambda done: _undo(done, undo))
        await asyncio.wait([future])
        raise


def _undo(done: asyncio.Future[_T], undo: Callable[[_T], None] | None) -> None:
    if done.cancelled() or done.exception() is not None:  # retrieved: never logged
        return
    if undo is not None:
        undo(done.result())
