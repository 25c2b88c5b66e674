"""Downloads written safely: checked on their first bytes, capped, renamed in when complete."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from .errors import IdeogramError, ResponseFormatError
from .images import FORMATS, SNIFF_BYTES, SUFFIXES, sniff
from .uploads import in_thread

DEFAULT_MAX_DOWNLOAD_SIZE = 100 * 1024 * 1024
"""The largest image ``download`` writes by default (100 MB), decoded size."""
NAME_MAX = 255
"""The longest file name (in bytes) common file systems take."""
_T = TypeVar("_T")


def name_too_long(target: Path) -> bool:
    """Whether ``target``'s name, with an image suffix added if it has none, is too long."""
    added = 0 if target.suffix.lower() in SUFFIXES else max(len(f.suffix) for f in FORMATS)
    return len(os.fsencode(target.name)) + added > NAME_MAX


def _over_cap(target: Path, max_size: int, announced: int | None = None) -> ResponseFormatError:
    size = "" if announced is None else f" ({announced} bytes announced)"
    return ResponseFormatError(
        f"the image for {target.name} is larger than max_download_size ({max_size} bytes)"
        f"{size}; raise max_download_size if such images are expected",
        body="",
    )


async def write_atomically(
    target: Path,
    chunks: AsyncIterator[bytes],
    *,
    max_size: int = DEFAULT_MAX_DOWNLOAD_SIZE,
    length: int | None = None,
) -> Path:
    """Stream ``chunks`` into ``target``; on any failure nothing is left on disk.

    The body must be a JPEG, PNG or WebP image of at most ``max_size`` bytes, or
    ``ResponseFormatError`` is raised: the type is checked on the first bytes before
    anything is written, the size against ``length`` (the announced Content-Length)
    before reading and against the running total while streaming. When ``target``
    does not end in an image suffix, the image's own (``.png``, ``.jpg``, ``.webp``)
    is added. Returns the path written, with the permissions the umask gives any new
    file. Parent folders are created; disk work runs
    in a worker thread; a file system error is an :class:`IdeogramError`.
    """
    if length is not None and length > max_size:
        raise _over_cap(target, max_size, length)
    first: list[bytes] = []
    size = 0
    async for chunk in chunks:
        first.append(chunk)
        size += len(chunk)
        if size >= SNIFF_BYTES:
            break
    if size > max_size:
        raise _over_cap(target, max_size)
    head = b"".join(first)
    fmt = sniff(head[:SNIFF_BYTES])
    if fmt is None:
        raise ResponseFormatError(
            f"the downloaded body for {target.name} is not a JPEG, PNG or WebP image "
            f"(it starts with {head[:8]!r}); the URL may have expired",
            body=head[:SNIFF_BYTES].decode("latin-1"),
        )
    if target.suffix.lower() not in SUFFIXES:
        target = target.with_name(target.name + fmt.suffix)
    return await _write(target, head, chunks, size, max_size)


async def _disk(
    target: Path, work: Callable[..., _T], *args: Any, undo: Callable[[_T], None] | None = None
) -> _T:
    """Run file system ``work`` in a worker thread; its ``OSError`` is an ``IdeogramError``.

    A cancelled call waits for the thread (and ``undo`` removes what it made), so that
    a cancelled download leaves no temporary file behind.
    """
    try:
        return await in_thread(work, *args, undo=undo)
    except OSError as exc:
        raise IdeogramError(
            f"cannot write {target}: {exc.strerror or exc}; check the folder and free space"
        ) from None


def _discard(created: tuple[int, Path]) -> None:
    fd, name = created
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)


def _create_temp(folder: Path, name: str) -> tuple[int, Path]:
    """Create a new, empty ``.part`` file beside ``name``; return its descriptor and path.

    Unlike ``tempfile.mkstemp`` (always mode 0600) the file is created with mode
    0666 and the kernel applies the umask (and any default ACL), so the result
    gets the permissions of any file the user creates. Nothing reads or changes
    the process-wide umask.
    """
    temp = folder / f".{name}.{secrets.token_hex(8)}.part"
    return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), temp


async def _write(
    target: Path, head: bytes, chunks: AsyncIterator[bytes], size: int, max_size: int
) -> Path:
    def create() -> tuple[int, Path]:
        target.parent.mkdir(parents=True, exist_ok=True)
        # A short prefix: the temp name must fit wherever the target's name fits.
        return _create_temp(target.parent, target.name[:40])

    fd, temp_name = await _disk(target, create, undo=_discard)
    file = os.fdopen(fd, "wb")

    def finish() -> None:
        file.close()  # the last flush: a full disk can show only here
        os.replace(temp_name, target)

    try:
        await _disk(target, file.write, head)
        async for chunk in chunks:
            size += len(chunk)
            if size > max_size:
                raise _over_cap(target, max_size)
            await _disk(target, file.write, chunk)
        await _disk(target, finish)
        return target
    except BaseException:
        # Synchronous on purpose: it must also happen when the task is cancelled.
        with contextlib.suppress(OSError):
            file.close()  # closes the descriptor even when its flush fails
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
