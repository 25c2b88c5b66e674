"""Short blocking calls that arrive in the same turn of the event loop, run in one hop.

A worker-thread hop (``run_in_executor``) costs a thread wake-up and two GIL hand-overs:
about 75 µs of CPU on a small VM, more than checking a small image file. The calls of
a gather or a batch check their files together, so :class:`Batched` collects the calls
made during one turn of the loop and runs them one after another in a single hop (at
most ``most`` a hop), each with its own result or exception. The loop never blocks; a
call that hangs (a dead network disk) holds back only the calls of its own hop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from functools import partial
from typing import Generic, TypeVar, cast

__all__ = ["Batched"]

_A = TypeVar("_A")
_R = TypeVar("_R")


class _Waiting(threading.local, Generic[_A, _R]):
    """The calls waiting for the next hop, per thread (an event loop runs in one)."""

    loop: asyncio.AbstractEventLoop | None = None
    calls: list[tuple[_A, asyncio.Future[_R]]]  # set with ``loop``, by the first call on it


class Batched(Generic[_A, _R]):
    """``await batched(arg)``: ``work(arg)`` in a worker thread, sharing the hop with the
    other calls of this loop turn (at most ``most`` a hop).

    Cancelling a call drops its result (``work`` must leave nothing to undo).
    """

    def __init__(self, work: Callable[[_A], _R], *, most: int) -> None:
        self._work = work
        self._most = most
        self._waiting: _Waiting[_A, _R] = _Waiting()

    def __call__(self, arg: _A) -> asyncio.Future[_R]:
        loop = asyncio.get_running_loop()
        waiting = self._waiting
        if waiting.loop is not loop:  # another loop ran on this thread before
            waiting.loop, waiting.calls = loop, []
        future = loop.create_future()
        waiting.calls.append((arg, future))
        if len(waiting.calls) == 1:
            loop.call_soon(self._flush, loop)
        return future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Send the calls of the turn that just ended to worker threads, ``most`` a hop."""
        calls, self._waiting.calls = self._waiting.calls, []
        for start in range(0, len(calls), self._most):
            batch = calls[start : start + self._most]
            try:
                hop = loop.run_in_executor(None, self._run, batch)
            except RuntimeError as exc:  # the executor was shut down (the loop is closing)
                hop = loop.create_future()
                hop.set_result([(False, exc)] * len(batch))
            hop.add_done_callback(partial(_deliver, batch))

    def _run(
        self, batch: list[tuple[_A, asyncio.Future[_R]]]
    ) -> list[tuple[bool, _R | BaseException]]:
        """In the worker thread: each call's result, or what it raised.

        A call cancelled before its turn is skipped, so a cancelled batch of calls does
        no work (opens no file) once its hop is past the call in progress. (Reading a
        future's state from this thread is a plain attribute read; only the loop sets it.)
        """
        results: list[tuple[bool, _R | BaseException]] = []
        for arg, future in batch:
            if future.cancelled():
                results.append((False, asyncio.CancelledError()))
                continue
            try:
                results.append((True, self._work(arg)))
            except BaseException as exc:  # handed to its caller, on the loop
                results.append((False, exc))
        return results


def _deliver(
    batch: list[tuple[_A, asyncio.Future[_R]]],
    hop: asyncio.Future[list[tuple[bool, _R | BaseException]]],
) -> None:
    """On the loop: hand each waiting call its result (a cancelled one is skipped)."""
    for (_, future), (ok, value) in zip(batch, hop.result(), strict=True):
        if future.done():
            continue
        if ok:
            future.set_result(cast(_R, value))
        else:
            assert isinstance(value, BaseException)
            future.set_exception(value)
