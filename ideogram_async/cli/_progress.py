"""Progress of a command-line run: a live bar on a terminal, plain lines otherwise.

The live bar needs ``rich`` (the ``cli`` extra); without it, a terminal gets the
plain lines too.

The plain lines are a stable format that scripts (and the tests) read::

    [12/50] ok photo.png -> out/photo.upscaled.png (1 attempt, 0.84s)
    [13/50] FAILED bad.png: <error>
"""

from __future__ import annotations

import time
from typing import Protocol

import attrs

from ideogram_async import Allowance

from ._manifest import Outcome


@attrs.define
class Tally:
    """Running counts of one run."""

    total: int
    ok: int = 0
    failed: int = 0
    in_flight: int = 0
    """Upscale calls started and not answered yet (sending, awaiting, retrying): what
    ``--allowance`` bounds."""
    downloading: int = 0
    """Inputs upscaled whose results are being downloaded (bounded separately)."""
    retries: int = 0
    started: float = attrs.field(factory=time.monotonic)
    allowance: Allowance | None = None
    """The client's places in flight (``in_use`` of ``limit``), once it exists."""

    @property
    def done(self) -> int:
        return self.ok + self.failed

    def summary(self) -> str:
        """One line: counts, time, and the rate of upscaled images (when there are some)."""
        elapsed = time.monotonic() - self.started
        failed = f", {self.failed} failed" if self.failed else ""
        details = [f"{self.ok / elapsed:.1f}/s"] if self.ok and elapsed > 0 else []
        if self.retries:
            details.append(f"{self.retries} request(s) retried")
        shown = f" ({', '.join(details)})" if details else ""
        places = self.allowance
        learned = (
            f" The allowance settled at {places.limit} of {places.maximum} images in flight."
            if places is not None and places.limit < places.maximum
            else ""
        )
        return (
            f"Done: {self.ok} of {self.total} image(s) upscaled{failed} in {elapsed:.1f}s"
            f"{shown}.{learned}"
        )


class Reporter(Protocol):
    """Shows a run's progress; the tally changes before each call."""

    def start(self) -> None:
        """Start any live display."""

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
    """One flushed line per finished input, for logs, pipes and scripts."""

    def __init__(self, tally: Tally) -> None:
        self._tally = tally

    def start(self) -> None:
        pass

    def changed(self) -> None:
        pass

    def finished(self, outcome: Outcome) -> None:
        head = f"[{self._tally.done}/{self._tally.total}]"
        if outcome.ok:
            outputs = ", ".join(str(path) for path in outcome.outputs)
            line = (
                f"{head} ok {outcome.source.shown} -> {outputs} "
                f"({_attempts(outcome.attempts)}, {outcome.seconds:.2f}s)"
            )
        else:
            line = f"{head} FAILED {outcome.source.shown}: {outcome.error}"
        print(line, flush=True)

    def note(self, text: str) -> None:
        print(text, flush=True)

    def close(self) -> None:
        pass
