"""The manifest of a command-line run: one JSON line per finished input.

Each line records how one input ended (:class:`Outcome`); ``--resume`` reads the
file back (:func:`read_records`, :func:`finished_sources`) to skip the inputs already
done. Lines are appended as inputs finish; when the manifest is closed it is rewritten
(atomically) to hold one line per input, its last. :class:`ManifestLock` keeps two runs
from sharing a manifest.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO

import attrs

from ._inputs import Source, UsageError

__all__ = ["Manifest", "ManifestLock", "Outcome", "finished_sources", "read_records"]


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
        """Close the file, then leave one line per input in it (its last)."""
        self._file.close()
        _compact(self.path)


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as file:
        file.seek(-1, os.SEEK_END)
        return file.read(1) == b"\n"


def _records(manifest: Path) -> tuple[dict[str, tuple[dict[str, Any], str]], int]:
    """The last record (parsed, and its line) of each source, and how many lines there are.

    Sources keep the order of their first line. Lines that are not complete JSON
    objects with a ``source`` (a run killed mid-write) are left out: their inputs are
    simply done again.
    """
    last: dict[str, tuple[dict[str, Any], str]] = {}
    count = 0
    try:
        with manifest.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                count += 1
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("source"), str):
                    last[record["source"]] = (record, line if line.endswith("\n") else line + "\n")
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise UsageError(f"cannot read the manifest {manifest}: {exc.strerror or exc}") from None
    return last, count


def read_records(manifest: Path) -> dict[str, dict[str, Any]]:
    """The last record of each source in ``manifest`` (none when it does not exist)."""
    return {source: record for source, (record, _) in _records(manifest)[0].items()}


def finished_sources(records: dict[str, dict[str, Any]]) -> tuple[set[str], list[str]]:
    """The sources recorded as done, and those recorded as done whose output is gone.

    Done means the last record is ``ok`` and every output it lists is still a file;
    the inputs of the second list are done again.
    """
    done: set[str] = set()
    gone: list[str] = []
    for source, record in records.items():
        if record.get("status") != "ok":
            continue
        outputs = record.get("outputs")
        if (
            isinstance(outputs, list)
            and outputs
            and all(isinstance(output, str) and os.path.isfile(output) for output in outputs)
        ):
            done.add(source)
        else:
            gone.append(source)
    return done, gone


def _compact(manifest: Path) -> None:
    """Rewrite ``manifest`` with one line per source, its last; atomically, same mode."""
    last, count = _records(manifest)
    if count == len(last):
        return  # already one whole line per source
    fd, name = tempfile.mkstemp(dir=manifest.parent, prefix=f".{manifest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.writelines(line for _, line in last.values())
            file.flush()
            os.fsync(file.fileno())
        os.chmod(name, stat.S_IMODE(manifest.stat().st_mode))
        os.replace(name, manifest)
    except BaseException:
        os.unlink(name)
        raise


class ManifestLock:
    """Holds ``<manifest>.lock`` exclusively for one run, so two runs never share a manifest.

    The lock (``flock``) is released when the run ends, or when its process dies; the
    lock file itself stays, empty.
    """

    def __init__(self, manifest: Path) -> None:
        self.manifest = manifest
        self.path = manifest.with_name(manifest.name + ".lock")
        self._file: IO[bytes] | None = None

    def __enter__(self) -> ManifestLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            file = open(self.path, "ab")
        except OSError as exc:
            raise UsageError(f"cannot write the manifest's lock file {self.path}: {exc}") from None
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            raise UsageError(
                f"another run is using the manifest {self.manifest} (it holds "
                f"{self.path}); let it finish, or give this run its own --manifest"
            ) from None
        self._file = file
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is not None:
            self._file.close()  # releases the lock
            self._file = None
