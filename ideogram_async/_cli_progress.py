"""Progress of a command-line run: a live ``rich`` bar on a terminal, plain lines otherwise.

The plain lines are a stable format that scripts (and the tests) read::

    [12/50] ok photo.png -> out/photo.upscaled.png (1 attempt, 0.84s)
    [13/50] FAILED bad.png: <error>
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

import attrs
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

if TYPE_CHECKING:
    from ._cli_pipeline import Outcome


@attrs.define
class Tally:
    """Running counts of one run."""

    total: int
    ok: int = 0
    failed: int = 0
    active: int = 0
    """Inputs taken up and not finished yet (uploading, waiting, retrying, downloading)."""
    retries: int = 0
    started: float = attrs.field(factory=time.monotonic)

    @property
    def done(self) -> int:
        return self.ok + self.failed

    def summary(self) -> str:
        """One line: counts, time and rate."""
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        failed = f", {self.failed} failed" if self.failed else ""
        retries = f", {self.retries} request(s) retried" if self.retries else ""
        return (
            f"Done: {self.ok} of {self.total} image(s) upscaled{failed} in {elapsed:.1f}s "
            f"({rate:.1f}/s{retries})."
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


class _RateColumn(ProgressColumn):
    """Images per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        shown = "--" if speed is None else f"{speed:.1f}"
        return Text(f"{shown} img/s", style="progress.data.speed")


class RichReporter:
    """A live bar (done, ok, failed, in flight, retries, rate, ETA) for a terminal.

    Failures are printed above the bar as they happen.
    """

    def __init__(self, tally: Tally, console: Console) -> None:
        self._tally = tally
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "[green]{task.fields[ok]} ok[/] [red]{task.fields[failed]} failed[/] "
                "{task.fields[active]} in flight {task.fields[retries]} retries"
            ),
            _RateColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
        )
        self._task = self._progress.add_task("Upscaling", total=tally.total)
        self.changed()

    def start(self) -> None:
        self._progress.start()

    def changed(self) -> None:
        tally = self._tally
        self._progress.update(
            self._task,
            completed=tally.done,
            ok=tally.ok,
            failed=tally.failed,
            active=tally.active,
            retries=tally.retries,
        )

    def finished(self, outcome: Outcome) -> None:
        if not outcome.ok:
            self._progress.console.print(
                Text.assemble(("FAILED ", "bold red"), f"{outcome.source.shown}: {outcome.error}")
            )
        self.changed()

    def note(self, text: str) -> None:
        self._progress.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        self._progress.stop()


def make_reporter(tally: Tally, *, live: bool) -> Reporter:
    """A live bar when ``live`` (stdout is a terminal), plain lines otherwise."""
    return RichReporter(tally, Console()) if live else PlainReporter(tally)
