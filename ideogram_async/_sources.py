"""Where an image's bytes come from: memory, a path, a file, or a one-shot stream spooled once.

Each source can produce the same bytes again for every attempt of an upload.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import tempfile
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable
from contextlib import aclosing
from pathlib import Path
from typing import IO, Any

from .errors import ImageChangedError, ValidationError
from .images import SNIFF_BYTES

CHUNK_SIZE = 256 * 1024
"""Bytes read from a file per step; bounds the memory one upload holds."""
SPOOL_MEMORY = 1024 * 1024
"""A one-shot stream up to this size is kept in memory; a larger one goes to disk."""


class _Source:
    """Where an image's bytes come from; each attempt reads them afresh.

    An attempt calls ``start()`` before its request goes out, then streams the first
    chunk it returned and ``rest()`` after it, and closes the file ``start()`` opened.
    """

    size: int
    blocking = True
    """``start()`` may block (it opens or reads a file), so it runs in a worker thread."""

    def head(self, limit: int = SNIFF_BYTES) -> bytes:
        """Up to ``limit`` first bytes: for type sniffing, or the size in the header."""
        raise NotImplementedError

    def start(self) -> tuple[IO[bytes] | None, bytes | memoryview]:
        """Begin an attempt: the file it must close (``None`` if none) and the first chunk.

        Raises ``ImageChangedError`` if the image is gone or resized since it was checked.
        """
        raise NotImplementedError

    def rest(self, file: IO[bytes] | None, offset: int) -> AsyncGenerator[bytes | memoryview, None]:
        """The bytes after the first ``offset``, read for this attempt."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the client owns (never a caller's file)."""


class _MemorySource(_Source):
    blocking = False

    def __init__(self, data: memoryview) -> None:
        self._data = data
        self.size = len(data)

    def head(self, limit: int = SNIFF_BYTES) -> bytes:
        return bytes(self._data[:limit])

    def start(self) -> tuple[None, memoryview]:
        return None, self._data[:CHUNK_SIZE]

    async def rest(
        self, file: IO[bytes] | None, offset: int
    ) -> AsyncGenerator[bytes | memoryview, None]:
        for start in range(offset, self.size, CHUNK_SIZE):
            yield self._data[start : start + CHUNK_SIZE]


async def _read_file(file: IO[bytes], start: int, size: int) -> AsyncGenerator[bytes, None]:
    """Yield ``size`` bytes of ``file`` from ``start``, reading in a worker thread."""
    loop = asyncio.get_running_loop()
    file.seek(start)
    left = size
    while left > 0:  # pragma: no mutate (>= 0 only adds a read of 0 bytes, which ends it)
        chunk = await loop.run_in_executor(None, file.read, min(CHUNK_SIZE, left))
        if not chunk:
            return  # the file ended early: the caller counts what came
        left -= len(chunk)
        yield chunk


class _FileSource(_Source):
    """A seekable binary file, rewound to ``start`` for every attempt."""

    def __init__(self, file: IO[bytes], start: int, size: int, *, owned: bool) -> None:
        self._file = file
        self._start = start
        self._owned = owned
        self.size = size

    def head(self, limit: int = SNIFF_BYTES) -> bytes:
        self._file.seek(self._start)
        try:
            return self._file.read(min(limit, self.size))
        finally:
            self._file.seek(self._start)

    def start(self) -> tuple[None, bytes]:
        self._file.seek(self._start)
        return None, self._file.read(min(CHUNK_SIZE, self.size))

    async def rest(self, file: IO[bytes] | None, offset: int) -> AsyncGenerator[bytes, None]:
        async for chunk in _read_file(self._file, self._start + offset, self.size - offset):
            yield chunk

    def close(self) -> None:
        if self._owned:
            self._file.close()
        elif not self._file.closed:
            # Leave the caller's file where we found it, so it can be sent again.
            self._file.seek(self._start)


def _changed(name: str, expected: int, found: str) -> ImageChangedError:
    return ImageChangedError(
        f"{name}: the file changed after it was checked (expected {expected} bytes, "
        f"found {found}); upload it again once it is complete"
    )


async def _file_chunks(file: Any) -> AsyncGenerator[bytes, None]:
    loop = asyncio.get_running_loop()
    while chunk := await loop.run_in_executor(None, file.read, CHUNK_SIZE):
        yield _checked_chunk(chunk)


async def _async_reads(read: Callable[[int], Awaitable[Any]]) -> AsyncGenerator[bytes, None]:
    while chunk := await read(CHUNK_SIZE):
        yield _checked_chunk(chunk)


async def _aiter_checked(stream: AsyncIterable[Any]) -> AsyncGenerator[bytes, None]:
    async for chunk in stream:
        yield _checked_chunk(chunk)


def _checked_chunk(chunk: object) -> bytes:
    if not isinstance(chunk, bytes | bytearray | memoryview):
        raise ValidationError(
            f"the image stream yielded {type(chunk).__name__}, not bytes; "
            f"open files in binary mode and yield bytes"
        )
    return bytes(chunk)


async def _spool(chunks: AsyncGenerator[bytes, None], max_file_size: int) -> _Source:
    """Read a one-shot stream once: in memory up to SPOOL_MEMORY, then to a temp file."""
    buffered: list[bytes] = []
    size = 0
    spill: IO[bytes] | None = None
    loop = asyncio.get_running_loop()
    try:
        async with aclosing(chunks):
            async for chunk in chunks:
                size += len(chunk)
                if size > max_file_size:
                    raise ValidationError(
                        f"the image stream is over the cap of {max_file_size} bytes; "
                        f"shrink the image or raise max_file_size"
                    )
                if spill is None and size <= SPOOL_MEMORY:
                    buffered.append(chunk)
                    continue
                if spill is None:
                    # Anonymous: the OS deletes it on close, even if the process dies.
                    spill = tempfile.TemporaryFile(  # noqa: SIM115
                        prefix="ideogram-async-"  # pragma: no mutate (nobody sees the name)
                    )
                    buffered.append(chunk)
                    data, buffered = b"".join(buffered), []
                    await loop.run_in_executor(None, spill.write, data)
                else:
                    await loop.run_in_executor(None, spill.write, chunk)
    except BaseException:
        if spill is not None:
            spill.close()
        raise
    if spill is None:
        return _MemorySource(memoryview(b"".join(buffered)))
    return _FileSource(spill, 0, size, owned=True)


def open_regular(path: Path) -> tuple[IO[bytes], int]:
    """Open ``path`` for reading and return it with its size; it may block (a slow disk).

    Opened without blocking, so that a FIFO with no writer cannot hang the thread,
    then refused unless it is a regular file (a FIFO, device or socket never ends).
    """
    # A platform has each flag or not, so the mutants of their defaults are equivalent.
    nonblock = getattr(os, "O_NONBLOCK", 0)  # pragma: no mutate
    binary = getattr(os, "O_BINARY", 0)  # pragma: no mutate
    fd = os.open(path, os.O_RDONLY | nonblock | binary)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(info.st_mode):
            raise ValidationError(
                f"{path} is not a regular file (a FIFO, device or socket); pass an image file"
            )
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise


def path_error(path: Path, exc: OSError) -> ValidationError:
    """The ``ValidationError`` for a path that cannot be opened, with the fix."""
    if isinstance(exc, FileNotFoundError):
        return ValidationError(f"{path}: no such file; check the path")
    if isinstance(exc, IsADirectoryError):
        return ValidationError(
            f"{path} is a directory; pass an image file (upscale_many takes many)"
        )
    if isinstance(exc, PermissionError):
        return ValidationError(f"{path}: permission denied; make the file readable")
    if isinstance(exc, NotADirectoryError):
        return ValidationError(
            f"{path}: a part of the path is a file, not a folder; check the path"
        )
    if exc.errno == errno.ELOOP:
        return ValidationError(f"{path}: a symbolic link loop; fix the link")
    if exc.errno == errno.ENAMETOOLONG:
        return ValidationError(f"{path}: the name is too long; check the path")
    return ValidationError(f"{path}: cannot be read ({exc.strerror or exc}); check the path")
