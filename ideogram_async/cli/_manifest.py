"""The manifest of a command-line run: one JSON line per finished input.

Each line records how one input ended (:class:`Outcome`); ``--resume`` reads the
file back (:func:`finished_sources`) to skip the inputs already done.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import BinaryIO

import attrs

from ._inputs import Source, UsageError

__all__ = ["Manifest", "Outcome", "finished_sources"]


@attrs.frozen(kw_only=True)
class Outcome:
    """How one input ended: upscaled and downloaded, or failed."""

    source: Source
    ok: bool
    urls: tuple[str, ...] = ()
    outputs: tuple[Path, ...] = ()
    """The files written, as paths under the ``--out`` folder as the user named it."""
    resolutions: tuple[str | None, ...] = ()
    error: str | None = None
    attempts: int = 0
    seconds: float = 0.0

    def manifest_line(self) -> bytes:
        """One JSON line for the manifest (absolute paths; never the API key)."""
        record = {
            "source": os.fspath(self.source.path),
            "status": "ok" if self.ok else "failed",
            "urls": list(self.urls),
            "outputs": [os.fspath(path.absolute()) for path in self.outputs],
            "error": self.error,
            "attempts": self.attempts,
            "seconds": round(self.seconds, 3),
        }
        return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


class Manifest:
    """The JSONL record of finished inputs, one line per input as it finishes.

    Each line goes out in a single unbuffered write, so an interrupted run leaves
    only whole lines behind. ``append`` continues an existing manifest (``--resume``),
    first ending a line that a killed run left unfinished.
    """

    def __init__(self, path: Path, *, append: bool) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file: BinaryIO = open(path, "ab" if append else "wb", buffering=0)  # noqa: SIM115
            if append and self._file.tell() > 0 and not _ends_with_newline(path):
                self._file.write(b"\n")
        except OSError as exc:
            raise UsageError(f"cannot write the manifest {path}: {exc.strerror or exc}") from None

    def write(self, outcome: Outcome) -> None:
        """Append the line of ``outcome``."""
        self._file.write(outcome.manifest_line())

    def close(self) -> None:
        self._file.close()


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as file:
        file.seek(-1, os.SEEK_END)
        return file.read(1) == b"\n"


def finished_sources(manifest: Path) -> set[str]:
    """The sources that a manifest records as done (status ``ok``).

    Lines that are not complete JSON objects (a run killed mid-write) are ignored:
    their inputs are simply done again.
    """
    done: set[str] = set()
    try:
        with manifest.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("status") == "ok":
                    source = record.get("source")
                    if isinstance(source, str):
                        done.add(source)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise UsageError(f"cannot read the manifest {manifest}: {exc.strerror or exc}") from None
    return done
