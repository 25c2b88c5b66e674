"""The end-of-run summary: one typed record, its text for people and its JSON for scripts.

Every command that runs upscales (``upscale``, ``demo``, and any command that waits
for workers) builds a :class:`Summary` from what it counted and shows it with
:func:`render` (and, with ``--json PATH``, :func:`write_json`). The record says only
what happened: the allowance's bound appears only when the service named a number,
and dollars only when the prices are known.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs

__all__ = ["AllowanceReport", "Failure", "SharedAt", "Summary", "render", "to_json", "write_json"]

LISTED_FAILURES = 20
"""Failures listed by name in the text summary; the rest are counted."""


@attrs.frozen(kw_only=True)
class SharedAt:
    """Where a shared allowance lives: the Redis server (never its password) and the key."""

    host: str
    """``host:port/db`` of the Redis server."""
    key: str
    """The name of the allowance's keys on that server."""

    @classmethod
    def from_url(cls, url: str, key: str) -> SharedAt:
        """Where the Redis at ``url`` is (``host:port/db``, or a socket's path), with ``key``.

        ``url`` is read as the shared allowance reads it (it needs the ``redis`` extra,
        which a shared allowance needs anyway).
        """
        from ideogram_async.limits import RedisLocation

        return cls(host=RedisLocation.parse(url).place, key=key)


@attrs.frozen(kw_only=True)
class AllowanceReport:
    """The allowance a run used: local or shared, and the bound the service made it settle at."""

    shared: SharedAt | None = None
    """Where the shared allowance lives; ``None`` for this process's own."""
    bound: int | None = None
    """The bound it settled at, only when the service named the organization's allowance."""
    reported: int | None = None
    """The allowance the service named in its last 429 (``max_inflight_requests``)."""


@attrs.frozen(kw_only=True)
class Failure:
    """One input that failed, as the user named it, and why."""

    source: str
    error: str


@attrs.frozen(kw_only=True)
class Summary:
    """What a run did, counted as it happened."""

    total: int
    """Inputs the run was given (skipped ones included)."""
    succeeded: int
    failed: int
    skipped: int = 0
    """Inputs not attempted: already done (``--resume``), or left when the run stopped."""
    refused: Mapping[str, int] = attrs.field(factory=dict)
    """Requests the service refused with 429, by ``reject_reason`` (``unknown`` without one)."""
    retries: int = 0
    """Requests sent again after a transient failure."""
    seconds: float
    usd: Decimal | None = None
    """Dollars spent, when known: what a spend budget (``--max-usd``) counted."""
    max_usd: Decimal | None = None
    """The spend budget (``--max-usd``), if any; shown in the text, not in the JSON."""
    allowance: AllowanceReport = attrs.field(factory=AllowanceReport)
    failures: tuple[Failure, ...] = ()

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())

    @property
    def rate(self) -> float | None:
        """Images upscaled per second, or ``None`` before any."""
        return self.succeeded / self.seconds if self.succeeded and self.seconds > 0 else None


def render(summary: Summary, *, failures: bool = True) -> list[str]:
    """The summary as lines of text: the headline, the details, then the failures."""
    failed = f", {summary.failed} failed" if summary.failed else ""
    skipped = f", {summary.skipped} skipped" if summary.skipped else ""
    rate = summary.rate
    shown_rate = f" ({rate:.1f} images/s)" if rate is not None else ""
    lines = [
        f"Done: {summary.succeeded} of {summary.total} image(s) upscaled{failed}{skipped} "
        f"in {summary.seconds:.1f}s{shown_rate}."
    ]
    details = [f"{summary.retries} request(s) retried"]
    if summary.refused:
        reasons = ", ".join(
            f"{count} {reason}" for reason, count in sorted(summary.refused.items())
        )
        details.append(f"{summary.refused_total} refused by the service (429: {reasons})")
    else:
        details.append("none refused by the service")
    if summary.usd is not None:
        limit = "" if summary.max_usd is None else f" of the ${summary.max_usd:,.4f} budget"
        details.append(f"${summary.usd:,.4f} spent{limit}")
    lines.append(f"Requests: {'; '.join(details)}.")
    lines.append(f"Allowance: {_allowance(summary.allowance)}.")
    if failures and summary.failures:
        lines.append("Failed:")
        lines.extend(f"  {f.source}: {f.error}" for f in summary.failures[:LISTED_FAILURES])
        if len(summary.failures) > LISTED_FAILURES:
            lines.append(f"  ... and {len(summary.failures) - LISTED_FAILURES} more")
    return lines


def _allowance(report: AllowanceReport) -> str:
    where = (
        "local"
        if report.shared is None
        else f"shared through Redis at {report.shared.host}, key {report.shared.key!r}"
    )
    if report.reported is None or report.bound is None:
        return f"{where}; the service never named the organization's allowance"
    return (
        f"{where}; the service named an allowance of {report.reported}, "
        f"the bound settled at {report.bound} image(s) in flight"
    )


def to_json(summary: Summary) -> dict[str, Any]:
    """The summary as the JSON object ``--json`` writes (exactly these keys)."""
    shared = summary.allowance.shared
    return {
        "total": summary.total,
        "succeeded": summary.succeeded,
        "failed": summary.failed,
        "skipped": summary.skipped,
        "refused": dict(sorted(summary.refused.items())),
        "retries": summary.retries,
        "seconds": round(summary.seconds, 3),
        "usd": None if summary.usd is None else float(summary.usd),
        "allowance": {
            "shared": None if shared is None else {"host": shared.host, "key": shared.key},
            "bound": summary.allowance.bound if summary.allowance.reported is not None else None,
        },
        "failures": [{"source": f.source, "error": f.error} for f in summary.failures],
    }


def write_json(summary: Summary, path: Path) -> None:
    """Write the summary's JSON to ``path`` atomically (a reader never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(to_json(summary), indent=2, ensure_ascii=False) + "\n"
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
