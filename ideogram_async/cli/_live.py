"""The live display of the command line, drawn with ``rich`` (the ``cli`` extra).

Imported only when rich is wanted; :mod:`._progress` falls back to plain lines
when this import fails.
"""

from __future__ import annotations

from collections.abc import Sequence

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
from rich.table import Table
from rich.text import Text

from ._manifest import Outcome
from ._progress import Tally

__all__ = ["RichReporter", "print_table"]


class _RateColumn(ProgressColumn):
    """Images per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        shown = "--" if speed is None else f"{speed:.1f}"
        return Text(f"{shown} img/s", style="progress.data.speed")


class _PlacesColumn(ProgressColumn):
    """Places (images) in flight out of the allowance's current bound."""

    def __init__(self, tally: Tally) -> None:
        super().__init__()
        self._tally = tally

    def render(self, task: Task) -> Text:
        places = self._tally.allowance
        if places is None:
            return Text("")
        return Text(f"{places.in_use}/{places.limit} places", style="cyan")


class RichReporter:
    """A live bar (done, ok, failed, in flight, downloading, places, retries, rate, ETA).

    "In flight" counts the upscale calls that ``--allowance`` bounds; downloads of
    finished upscales are counted apart.

    Failures are printed above the bar as they happen.
    """

    def __init__(self, tally: Tally, console: Console | None = None) -> None:
        self._tally = tally
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "[green]{task.fields[ok]} ok[/] [red]{task.fields[failed]} failed[/] "
                "{task.fields[in_flight]} in flight {task.fields[downloading]} downloading "
                "{task.fields[retries]} retries"
            ),
            _PlacesColumn(tally),
            _RateColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console or Console(),
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
            in_flight=tally.in_flight,
            downloading=tally.downloading,
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


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print a table with ``columns`` (the first left-aligned, the rest right-aligned)."""
    table = Table(title=title)
    for number, column in enumerate(columns):
        table.add_column(column, justify="left" if number == 0 else "right")
    for row in rows:
        table.add_row(*(Text(cell, style="red") if cell == "failed" else cell for cell in row))
    Console().print(table)
