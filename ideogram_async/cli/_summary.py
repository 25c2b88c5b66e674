"""The end-of-run summary of the command line: a few lines of text, and ``--json``.

``--json PATH`` writes exactly these keys: ``total``, ``succeeded``, ``failed``,
``skipped``, ``refused``, ``retries``, ``seconds``, ``usd``, ``allowance`` (``shared``:
where the allowance is shared, or ``null`` for one process; ``bound``: the allowance
the service reported, or ``null`` when it gave no number) and ``failures`` (a list of
``{source, error}``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import attrs

from ._inputs import UsageError

__all__ = ["MAX_LISTED_FAILURES", "Summary"]

MAX_LISTED_FAILURES = 20
"""Failures listed in the text summary; the rest are counted (``--json`` has them all)."""


@attrs.define(kw_only=True)
class Summary:
    """What one run did, counted."""

    total: int
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    """Inputs already done before this run (nothing sent for them)."""
    refused: int = 0
    """Requests the service refused with a 429 (each was retried)."""
    retries: int = 0
    seconds: float = 0.0
    usd: float | None = None
    """Spent, when the prices are known."""
    shared: str | None = None
    """Where the allowance is shared (its Redis, no password), or ``None``."""
    bound: int | None = None
    """The allowance the service reported in a 429, or ``None``."""
    failures: list[tuple[str, str]] = attrs.field(factory=list)
    """``(source, error)`` of each failed input."""

    def as_json(self) -> dict[str, Any]:
        """The ``--json`` object."""
        return {
            "total": self.total,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "skipped": self.skipped,
            "refused": self.refused,
            "retries": self.retries,
            "seconds": round(self.seconds, 3),
            "usd": self.usd,
            "allowance": {"shared": self.shared, "bound": self.bound},
            "failures": [{"source": source, "error": error} for source, error in self.failures],
        }

    def lines(self) -> list[str]:
        """The summary as text, failures listed (the first :data:`MAX_LISTED_FAILURES`)."""
        rate = f", {self.succeeded / self.seconds:.1f}/s" if self.succeeded and self.seconds else ""
        usd = "" if self.usd is None else f", ${self.usd:.4f} spent"
        lines = [
            f"Done: {self.succeeded} of {self.total} image(s) upscaled, {self.failed} failed, "
            f"{self.skipped} already done, in {self.seconds:.1f}s{rate}; {self.retries} "
            f"request(s) retried, {self.refused} refused by the service{usd}."
        ]
        where = "one process" if self.shared is None else f"shared through {self.shared}"
        bound = "" if self.bound is None else f"; the service reported {self.bound} images"
        lines.append(f"Allowance: {where}{bound}.")
        if self.failures:
            lines.append("Failed:")
            lines.extend(
                f"  {source}: {error}" for source, error in self.failures[:MAX_LISTED_FAILURES]
            )
            if len(self.failures) > MAX_LISTED_FAILURES:
                lines.append(f"  ... and {len(self.failures) - MAX_LISTED_FAILURES} more")
        return lines

    def write_json(self, path: Path) -> None:
        """Write :meth:`as_json` to ``path`` (whole or not at all)."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(self.as_json(), file, indent=2)
                file.write("\n")
            os.replace(name, path)
        except OSError as exc:
            raise UsageError(f"cannot write --json {path}: {exc.strerror or exc}") from None
