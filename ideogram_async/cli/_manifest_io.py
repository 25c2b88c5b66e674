"""The manifest file of a command-line run: appended line by line, read back by ``--resume``.

Lines (see :mod:`._manifest`) are appended as inputs are upscaled and finish; when
the manifest is closed it is rewritten (atomically) to hold one line per input, its
last. A line the file system refuses (a full disk, a quota, a read-only mount) is
not lost: it goes to a fallback file in the temporary folder (:func:`fallback_path`),
which the next ``--resume`` takes in (:func:`take_in_fallback`); should that fail
too, the lines are kept for the run to print. :class:`ManifestLock` keeps two runs
from sharing a manifest.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, BinaryIO

from ._inputs import UsageError
from ._manifest import Outcome, Record, Settings, parse_lines

__all__ = [
    "Manifest",
    "ManifestLock",
    "fallback_path",
    "read_records",
    "take_in_fallback",
]


def fallback_path(manifest: Path, folder: Path | None = None) -> Path:
    """Where the lines ``manifest`` refused go: in ``folder`` (the temporary folder), under
    a name made from the manifest's absolute path, so that ``--resume`` finds them."""
    digest = hashlib.sha256(os.fsencode(os.path.abspath(manifest))).hexdigest()[:16]
    return Path(folder or tempfile.gettempdir()) / f"ideogram-async-manifest-{digest}.jsonl"


def _write_all(file: BinaryIO, data: bytes) -> None:
    """Write all of ``data``: an unbuffered write may take only part of it (a disk filling)."""
    view = memoryview(data)
    while view:
        view = view[file.write(view) :]


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as file:
        if file.seek(0, os.SEEK_END) == 0:
            return True
        file.seek(-1, os.SEEK_END)
        return file.read(1) == b"\n"


def _open_for_append(path: Path) -> BinaryIO:
    """``path`` opened to append whole lines: one left unfinished (a killed run) is ended."""
    file: BinaryIO = open(path, "ab", buffering=0)  # noqa: SIM115
    try:
        if not _ends_with_newline(path):
            _write_all(file, b"\n")
    except BaseException:
        file.close()
        raise
    return file


class Manifest:
    """The JSONL record of a run, one line per event of an input, with the run's settings.

    Each line goes out in unbuffered writes, so an interrupted run leaves whole lines
    behind (at most the last one torn, which reading skips). ``append`` continues an
    existing manifest (``--resume``). When a write fails, :attr:`refused` holds why, and
    that line and every later one go to :func:`fallback_path` (in ``fallback_dir``, by
    default the temporary folder), or, when that fails too, stay in :attr:`unsaved`.
    """

    def __init__(
        self, path: Path, *, append: bool, settings: Settings, fallback_dir: Path | None = None
    ) -> None:
        self.path = path
        self.settings = settings
        self.written = 0
        """Lines written to the manifest by this run."""
        self.refused: OSError | None = None
        """Why the manifest refused a line, once it has."""
        self.fallback = fallback_path(path, fallback_dir)
        self.diverted = 0
        """Lines written to :attr:`fallback`."""
        self.unsaved: list[bytes] = []
        """Lines neither the manifest nor the fallback took."""
        self._fallback_file: BinaryIO | None = None
        self._created = not path.exists()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = (
                _open_for_append(path) if append else open(path, "wb", buffering=0)  # noqa: SIM115
            )
        except OSError as exc:
            raise UsageError(f"cannot write the manifest {path}: {exc.strerror or exc}") from None

    def write(self, outcome: Outcome) -> None:
        """Record ``outcome``: in the manifest, else in the fallback, else in :attr:`unsaved`."""
        line = outcome.line(self.settings)
        if self.refused is None:
            try:
                _write_all(self._file, line)
            except OSError as exc:
                self.refused = exc
            else:
                self.written += 1
                return
        self._divert(line)

    def _divert(self, line: bytes) -> None:
        if self._fallback_file is None and not self.diverted and not self.unsaved:
            with contextlib.suppress(OSError):
                self._fallback_file = _open_for_append(self.fallback)
        if self._fallback_file is not None:
            try:
                _write_all(self._fallback_file, line)
            except OSError:
                self._fallback_file.close()
                self._fallback_file = None
            else:
                self.diverted += 1
                return
        self.unsaved.append(line)

    def problem(self) -> str | None:
        """What the user must be told when the manifest refused lines, and where they are."""
        if self.refused is None:
            return None
        why = self.refused.strerror or str(self.refused)
        head = f"The manifest {self.path} could not be written ({why})"
        parts = []
        if self.diverted:
            parts.append(
                f"{self.diverted} record(s) are saved in {self.fallback}, which --resume "
                f"takes in once {self.path} can be written"
            )
        if self.unsaved:
            lines = b"".join(self.unsaved).decode("utf-8").rstrip("\n")
            parts.append(
                f"{len(self.unsaved)} record(s) could not be saved anywhere; here they are, "
                f"to keep (their urls hold the results paid for):\n{lines}"
            )
        return f"{head}: {'; '.join(parts)}."

    def close(self) -> None:
        """Close the files; leave one line per input (its last), or no manifest if it is
        empty and this run made it."""
        self._file.close()
        if self._fallback_file is not None:
            self._fallback_file.close()
        if self.refused is not None:
            return  # a full disk cannot take a compacted copy; the lines as written are valid
        with contextlib.suppress(OSError):
            if self._created and self.path.stat().st_size == 0:
                self.path.unlink()
                return
            _compact(self.path)


def _records(manifest: Path) -> tuple[dict[str, Record], int]:
    """The last record of each source (in the order of their first), and the line count."""
    last: dict[str, Record] = {}
    count = 0

    def counted(lines: Iterable[str]) -> Iterator[str]:
        nonlocal count
        for line in lines:
            count += 1
            yield line

    try:
        with manifest.open(encoding="utf-8", errors="replace") as lines:
            for record in parse_lines(counted(lines)):
                last[record.source] = record
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise UsageError(f"cannot read the manifest {manifest}: {exc.strerror or exc}") from None
    return last, count


def read_records(manifest: Path) -> dict[str, Record]:
    """The last record of each source in ``manifest`` (none when it does not exist)."""
    return _records(manifest)[0]


def _compact(manifest: Path) -> None:
    """Rewrite ``manifest`` with one line per source, its last; atomically, same mode."""
    last, count = _records(manifest)
    if count == len(last):
        return  # already one whole line per source
    fd, name = tempfile.mkstemp(dir=manifest.parent, prefix=f".{manifest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.writelines(record.line for record in last.values())
            file.flush()
            os.fsync(file.fileno())
        os.chmod(name, stat.S_IMODE(manifest.stat().st_mode))
        os.replace(name, manifest)
    except BaseException:
        os.unlink(name)
        raise


def take_in_fallback(manifest: Path, folder: Path | None = None) -> int:
    """Append the lines a run could not write to ``manifest`` (see :class:`Manifest`;
    ``folder`` as there) to it, then remove their fallback file; return how many."""
    fallback = fallback_path(manifest, folder)
    try:
        data = fallback.read_bytes()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise UsageError(f"cannot read {fallback}: {exc.strerror or exc}") from None
    try:
        manifest.parent.mkdir(parents=True, exist_ok=True)
        with _open_for_append(manifest) as file:
            _write_all(file, data if data.endswith(b"\n") else data + b"\n")
            os.fsync(file.fileno())
    except OSError as exc:
        raise UsageError(
            f"cannot add the records saved in {fallback} to the manifest {manifest} "
            f"({exc.strerror or exc}); make room for it, then run again"
        ) from None
    fallback.unlink()
    return sum(1 for line in data.splitlines() if line.strip())


class ManifestLock:
    """Holds ``<manifest>.lock`` exclusively for one run, so two runs never share a manifest.

    The lock (``flock``) is released when the run ends, or when its process dies; the
    lock file is removed at the end (while still held, so that a run that opened it
    meanwhile sees it was replaced, and takes the new one).
    """

    def __init__(self, manifest: Path) -> None:
        self.manifest = manifest
        self.path = manifest.with_name(manifest.name + ".lock")
        self._file: IO[bytes] | None = None

    def __enter__(self) -> ManifestLock:
        while self._file is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                file = open(self.path, "ab")
            except OSError as exc:
                raise UsageError(
                    f"cannot create the lock file {self.path} beside the manifest "
                    f"({exc.strerror or exc}); give --manifest a path in a folder you can write"
                ) from None
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                file.close()
                raise UsageError(
                    f"another run is using the manifest {self.manifest} (it holds "
                    f"{self.path}); let it finish, or give this run its own --manifest"
                ) from None
            except OSError as exc:
                file.close()
                raise UsageError(
                    f"cannot lock the manifest {self.manifest} ({exc.strerror or exc}: the "
                    f"file system of {self.path} refuses locks); give --manifest a path on "
                    f"a local disk"
                ) from None
            if _same_file(file, self.path):
                self._file = file
            else:  # the run that held it removed it as we opened it: lock the new one
                file.close()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self._file.close()  # releases the lock
            self._file = None


def _same_file(file: IO[bytes], path: Path) -> bool:
    """Whether the open ``file`` is still the one at ``path``."""
    try:
        named = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(file.fileno())
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)
