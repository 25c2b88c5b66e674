"""The rows of the result table, the machine they were measured on, and their rendering."""

from __future__ import annotations

import enum
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

import aiohttp
import attrs
import httpx

import ideogram_async

__all__ = ["Compare", "Row", "Unit", "machine", "render_table"]


class Unit(enum.StrEnum):
    """How a figure is shown."""

    SECONDS = "s"
    MILLISECONDS = "ms"
    MEGABYTES = "MB"
    TIMES = "x"
    REQUESTS = "requests"
    PER_CALL = "per call"


class Compare(enum.StrEnum):
    """How the library's figure is compared with the baseline's."""

    RATIO = "ratio"
    """library / baseline"""
    DIFFERENCE = "difference"
    """library - baseline"""


@attrs.frozen(kw_only=True)
class Row:
    """One line of the table: the library's figure against one baseline's."""

    workload: str
    metric: str
    unit: Unit
    library: float
    baseline_name: str
    baseline: float
    compare: Compare = Compare.RATIO
    target: str = "report"
    """The target as the reader should see it."""
    met: bool | None = None
    """Whether the target is met; None when the figure is only reported."""

    @property
    def comparison(self) -> float:
        """The ratio or the difference of library to baseline."""
        if self.compare is Compare.RATIO:
            return self.library / self.baseline if self.baseline else float("inf")
        return self.library - self.baseline

    def cells(self) -> list[str]:
        """The row's cells, formatted."""
        if self.compare is Compare.RATIO:
            shown = f"{self.comparison:.2f}x"
        elif self.unit is Unit.REQUESTS:
            shown = f"{self.comparison:+.0f}"
        elif self.unit is Unit.PER_CALL:
            shown = f"{self.comparison:+.3f}"
        else:
            shown = f"{self.comparison:+.1f} {self.unit}"
        met = {None: "-", True: "yes", False: "NO"}[self.met]
        return [
            self.workload,
            self.metric,
            _figure(self.library, self.unit),
            f"{self.baseline_name} {_figure(self.baseline, self.unit)}",
            shown,
            self.target,
            met,
        ]

    def to_json(self) -> dict[str, Any]:
        """The row as plain data, with the computed comparison and verdict."""
        data = attrs.asdict(self)
        data["comparison"] = self.comparison
        return data


def _figure(value: float, unit: Unit) -> str:
    if unit is Unit.REQUESTS:
        return f"{value:.0f}"
    if unit is Unit.TIMES:
        return f"{value:.3f}x"
    if unit is Unit.PER_CALL:
        return f"{value:.3f} per call"
    if unit is Unit.MILLISECONDS:
        return f"{value:.3f} ms"
    if unit is Unit.MEGABYTES:
        return f"{value:.1f} MB"
    return f"{value:.2f} s"


HEADINGS = ["workload", "metric", "library", "baseline", "ratio", "target", "met"]


def render_table(rows: Sequence[Row], errors: Sequence[tuple[str, str]]) -> str:
    """A plain-text table of ``rows``, then one line per workload that errored."""
    lines = [row.cells() for row in rows]
    lines += [
        [workload, "ERROR", message.splitlines()[0], "", "", "", "NO"]
        for workload, message in errors
    ]
    widths = [max(len(cells[i]) for cells in [HEADINGS, *lines]) for i in range(len(HEADINGS))]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
            + " |"
        )

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(HEADINGS), rule, *(line(cells) for cells in lines)])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for text in cpuinfo:
                if text.startswith("model name"):
                    return text.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> dict[str, str | int]:
    """What the figures were measured on."""
    return {
        "cpus": os.cpu_count() or 0,
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "aiohttp": aiohttp.__version__,
        "httpx": httpx.__version__,
        "ideogram_async": ideogram_async.__version__,
    }
