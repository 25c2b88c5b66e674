"""Progress of a command-line run: the counts, plain lines, and the ``-v`` attempt log.

:class:`Tally` counts a run as it goes and turns into its :class:`~._summary.Summary`.
A :class:`Reporter` shows it: a live display on a terminal (``._live``, needs rich),
plain lines otherwise, or nothing (``--progress none``, ``--quiet``). The plain
lines are a stable format that scripts (and the tests) read::

    [12/50] ok photo.png -> out/photo.upscaled.png (1 attempt, 0.84s)
    [13/50] FAILED bad.png: <error> (3 attempts, 31.20s)
    3 waiting 42 s for the service

:class:`AttemptLog` writes ``-v``'s line per attempt on stderr.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

import attrs

from ideogram_async import Allowance, APIStatusError, BatchResult, Budget, RetryEvent
from ideogram_async.limits import Refusals

from ._manifest import Outcome, text
from ._refusals import WatchedAllowance
from ._summary import AllowanceReport, Failure, SharedAt, Summary

WAITING_AFTER = 10.0
"""Seconds a call waits for the service before the display says so."""


@attrs.define
class Tally:
    """Running counts of one run."""

    total: int
    """Inputs of the run, the ones skipped as done included."""
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    """Inputs already done before the run started (``--resume``)."""
    in_flight: int = 0
    """Upscale calls started and not answered yet (sending, awaiting, retrying): what
    ``--allowance`` bounds."""
    downloading: int = 0
    """Inputs upscaled whose results are being downloaded (bounded separately)."""
    retries: int = 0
    started: float = attrs.field(factory=time.monotonic)
    allowance: Allowance | None = None
    """The client's places in flight (``in_use`` of ``limit``), once it exists."""
    calls: dict[int, float] = attrs.field(factory=dict)
    """When each upscale call in flight started, by input index."""
    failures: list[Failure] = attrs.field(factory=list)
    refusals: Refusals = attrs.field(factory=Refusals)
    remote: bool = False
    """The upscales run in workers elsewhere (``enqueue --wait``): what is in flight or
    downloading is not known here, only what has finished."""

    @property
    def done(self) -> int:
        """Inputs finished in this run (skipped ones not included)."""
        return self.ok + self.failed

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def waiting(self, now: float | None = None) -> tuple[int, float]:
        """How many calls have waited over :data:`WAITING_AFTER` seconds, and the longest wait."""
        now = time.monotonic() if now is None else now
        waits = [now - start for start in self.calls.values() if now - start > WAITING_AFTER]
        return len(waits), max(waits, default=0.0)

    def waiting_text(self) -> str | None:
        """``3 waiting 42 s for the service``, or ``None`` while no call waits that long."""
        count, longest = self.waiting()
        return f"{count} waiting {longest:.0f} s for the service" if count else None

    def summary(self, *, shared: SharedAt | None = None, budget: Budget | None = None) -> Summary:
        """What the run did so far; inputs neither done nor skipped count as skipped.

        With a ``budget``, its ``spent`` is the dollars spent (a shared budget's, as
        last seen) and its ``max_usd`` the limit.
        """
        places = self.allowance
        watched = places if isinstance(places, WatchedAllowance) else None
        reported = None if watched is None else watched.reported
        return Summary(
            total=self.total,
            succeeded=self.ok,
            failed=self.failed,
            skipped=self.total - self.done,
            refused=self.refusals.by_reason(watched.refusals if watched else 0),
            retries=self.retries,
            seconds=self.elapsed,
            usd=None if budget is None else budget.spent,
            max_usd=None if budget is None else budget.max_usd,
            allowance=AllowanceReport(
                shared=shared,
                bound=None if places is None or reported is None else places.limit,
                reported=reported,
            ),
            failures=tuple(self.failures),
        )


class Reporter(Protocol):
    """Shows a run's progress; the tally changes before each call."""

    def start(self) -> None:
        """Start any live display (called in the running event loop)."""

    def changed(self) -> None:
        """An input was taken up or a request retried."""

    def finished(self, outcome: Outcome) -> None:
        """An input finished."""

    def note(self, text: str) -> None:
        """Show a line of text (a summary, a hint)."""

    def close(self) -> None:
        """Stop any live display; notes still work afterwards."""


def _attempts(count: int) -> str:
    return f"{count} attempt" if count == 1 else f"{count} attempts"


class PlainReporter:
    """One flushed line per finished input, for logs, pipes and scripts.

    While a call has waited over :data:`WAITING_AFTER` seconds for the service, a
    line says so every :data:`WAITING_AFTER` seconds.
    """

    def __init__(self, tally: Tally, out: TextIO | None = None) -> None:
        self._tally = tally
        self._out = out
        self._ticker: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._ticker = asyncio.get_running_loop().call_later(WAITING_AFTER, self._tick)

    def _tick(self) -> None:
        text = self._tally.waiting_text()
        if text is not None:
            self.note(text)
        self._ticker = asyncio.get_running_loop().call_later(WAITING_AFTER, self._tick)

    def changed(self) -> None:
        pass

    def finished(self, outcome: Outcome) -> None:
        head = f"[{self._tally.done}/{self._tally.total - self._tally.skipped}]"
        if outcome.ok:
            outputs = ", ".join(str(path) for path in outcome.outputs)
            line = (
                f"{head} ok {outcome.source.shown} -> {outputs} "
                f"({_attempts(outcome.attempts)}, {outcome.seconds:.2f}s)"
            )
        else:
            line = (
                f"{head} FAILED {outcome.source.shown}: {outcome.error} "
                f"({_attempts(outcome.attempts)}, {outcome.seconds:.2f}s)"
            )
        self.note(line)

    def note(self, text: str) -> None:
        print(text, file=self._out or sys.stdout, flush=True)

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None


class SilentReporter:
    """No progress at all (``--progress none``): only the notes, the summary among them."""

    def start(self) -> None:
        pass

    def changed(self) -> None:
        pass

    def finished(self, outcome: Outcome) -> None:
        pass

    def note(self, text: str) -> None:
        print(text, flush=True)

    def close(self) -> None:
        pass


def _why_wait(error: BaseException) -> str:
    if isinstance(error, APIStatusError) and error.retry_after is not None:
        return "the service asked for it (Retry-After)"
    return "backoff with jitter"


class AttemptLog:
    """``-v``: one line per attempt on stderr, with the time it really took.

    Retried attempts come from the client's retry events; each call's last attempt
    from its result. An attempt's time runs from its start (the call's start, or the
    end of the wait before it) to the moment it failed or ended. Calls are known by
    the client's names for them; a file name's bytes that are not UTF-8 show as U+FFFD.
    """

    def __init__(
        self, describe: Callable[[BaseException], str], write: Callable[[str], None] | None = None
    ) -> None:
        self._describe = describe
        self._write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self._next: dict[str, float] = {}
        """When the next attempt of each call (by its name) starts."""

    def began(self, name: str) -> None:
        """Call ``name`` (``upscale photo.png``) starts its first attempt now."""
        self._next[name] = time.monotonic()

    def _took(self, name: str) -> str:
        start = self._next.get(name)
        return "" if start is None else f" after {time.monotonic() - start:.1f}s"

    def retried(self, event: RetryEvent) -> None:
        """An attempt failed and the call waits ``event.wait`` before the next."""
        self._write(
            f"{text(event.name)}: attempt {event.attempt} failed{self._took(event.name)}: "
            f"{self._describe(event.error)}; next attempt in {event.wait:.2f}s "
            f"({_why_wait(event.error)})"
        )
        self._next[event.name] = time.monotonic() + event.wait

    def ended(self, name: str, result: BatchResult[Any]) -> None:
        """The call's last attempt ended (``result`` says how)."""
        took = self._took(name)
        self._next.pop(name, None)
        if result.error is None:
            self._write(f"{text(name)}: attempt {result.attempts} ok{took}")
        else:
            self._write(
                f"{text(name)}: attempt {result.attempts} failed{took} for good: "
                f"{self._describe(result.error)} ({result.elapsed:.1f}s in all)"
            )
