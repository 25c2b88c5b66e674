"""The live display of the command line, drawn with ``rich`` (the ``cli`` extra).

One status line that always fits the terminal: each field has a priority, and the
fields that do not fit the width drop out, least important first (they come back
when the terminal widens); a bar takes what room is left. The counts that matter
most (done/total, failed, in flight, rate, ETA) go last. While calls wait over
10 s for the service, a second line says so.

Imported only when rich is wanted; the plain lines of :mod:`._progress` serve when
this import fails.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import attrs
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ._manifest import Outcome
from ._progress import Tally

__all__ = ["Field", "RichReporter", "fit", "print_table", "status_fields"]

_SEP = "  "
_BAR_MIN, _BAR_MAX = 10, 40


@attrs.frozen
class Field:
    """One piece of the status line; a lower ``priority`` is kept longer as the width shrinks."""

    priority: int
    text: str
    style: str = ""


def fit(fields: Sequence[Field], width: int) -> list[Field]:
    """The fields that fit in ``width`` cells, shown in their order.

    They are taken most important first, until the next one does not fit: so a
    narrower terminal only ever drops fields, and a wider one only brings them back.
    """
    kept: set[int] = set()
    used = 0
    for index in sorted(range(len(fields)), key=lambda i: (fields[i].priority, i)):
        cost = cell_len(fields[index].text) + (len(_SEP) if kept else 0)
        if used + cost > width:
            break
        kept.add(index)
        used += cost
    return [fields[index] for index in sorted(kept)]


def _clock(seconds: float) -> str:
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def status_fields(tally: Tally, now: float | None = None) -> list[Field]:
    """The status line's fields for ``tally``, in display order, with their priorities."""
    elapsed = (time.monotonic() if now is None else now) - tally.started
    todo = tally.total - tally.skipped
    rate = tally.done / elapsed if tally.done and elapsed > 0 else None
    eta = "--:--" if rate is None else _clock((todo - tally.done) / rate)
    fields = [
        Field(9, "Upscaling on workers" if tally.remote else "Upscaling", "bold"),
        Field(1, f"{tally.done}/{todo}", "progress.download"),
        Field(5, f"{tally.ok} ok", "green"),
        Field(1, f"{tally.failed} failed", "red" if tally.failed else ""),
    ]
    if not tally.remote:  # the workers' calls and downloads are not seen from here
        fields.append(Field(1, f"{tally.in_flight} in flight", "cyan"))
        fields.append(Field(4, f"{tally.downloading} downloading"))
    places = tally.allowance
    if places is not None:
        fields.append(Field(3, f"{places.in_use}/{places.limit} places", "cyan"))
    fields += [
        Field(2, f"{tally.retries} retries", "yellow" if tally.retries else ""),
        Field(1, "-- img/s" if rate is None else f"{rate:.1f} img/s", "progress.data.speed"),
        Field(6, _clock(elapsed), "progress.elapsed"),
        Field(1, f"ETA {eta}", "progress.remaining"),
    ]
    return fields


class _Status:
    """The renderable the live display redraws: the fitted status line, a wait notice."""

    def __init__(self, tally: Tally) -> None:
        self._tally = tally

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from self.lines(options.max_width)

    def lines(self, width: int) -> Iterator[Text]:
        """The display at ``width`` cells: each line fits, no field cut."""
        fields = status_fields(self._tally)
        kept = fit(fields, width)
        room = width - sum(cell_len(f.text) for f in kept) - len(_SEP) * len(kept)
        line = Text()
        for number, field in enumerate(kept):
            if number:
                line.append(_SEP)
            line.append(field.text, style=field.style)
            if number == 0 and room >= _BAR_MIN:
                line.append(_SEP)
                line.append_text(self._bar(min(room, _BAR_MAX)))
        yield line
        waiting = self._tally.waiting_text()
        if waiting is not None and cell_len(waiting) <= width:
            yield Text(waiting, style="bold yellow")

    def _bar(self, width: int) -> Text:
        todo = self._tally.total - self._tally.skipped
        filled = width if todo <= 0 else width * self._tally.done // todo
        return Text.assemble(("━" * filled, "bar.complete"), ("━" * (width - filled), "bar.back"))


class RichReporter:
    """A live status line that fits the terminal; failures are printed above it as they happen.

    "In flight" counts the upscale calls that ``--allowance`` bounds; downloads of
    finished upscales are counted apart.
    """

    def __init__(self, tally: Tally, console: Console | None = None) -> None:
        self.status = _Status(tally)
        self._live = Live(  # redrawn 4 times a second, rich's default
            self.status,
            console=console or Console(),
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def start(self) -> None:
        self._live.start()

    def changed(self) -> None:
        pass  # redrawn 4 times a second: a busy run does not redraw per event

    def finished(self, outcome: Outcome) -> None:
        if not outcome.ok:
            self._live.console.print(
                Text.assemble(("FAILED ", "bold red"), f"{outcome.source.shown}: {outcome.error}")
            )
        self.changed()

    def note(self, text: str) -> None:
        self._live.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        self._live.stop()


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print a table with ``columns`` (the first left-aligned, the rest right-aligned)."""
    table = Table(title=title)
    for number, column in enumerate(columns):
        if number:
            table.add_column(column, justify="right")
        else:
            table.add_column(column)  # left-aligned, rich's default
    for row in rows:
        table.add_row(*(Text(cell, style="red") if cell == "failed" else cell for cell in row))
    Console().print(table)
