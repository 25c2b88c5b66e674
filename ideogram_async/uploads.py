"""An upload that can be sent again: any image input as a validated, streamed multipart part.

:func:`prepare_image` checks the input before anything is sent (exists, not empty,
under the size cap, JPEG/PNG/WebP by its first bytes) and returns a
:class:`PreparedImage` that can produce the same bytes for every attempt:

- a path is checked in a worker thread (the paths of calls that start together in
  one hop), which reads a file of at most
  :data:`~ideogram_async.images.HEADER_BYTES` (64 KB) whole, sent from memory; a larger
  one is reopened per attempt and read in chunks in a worker thread;
- ``bytes``-like data is sent from memory without copies;
- a seekable binary file is rewound to where it started for every attempt and
  left there afterwards; the caller's file is never closed;
- a one-shot stream (an async iterator of bytes, or an unseekable file) is spooled
  once, in memory up to :data:`SPOOL_MEMORY`, then into an anonymous temporary
  file that the operating system deletes when it is closed.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import io
import os
import re
import stat
import tempfile
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable
from contextlib import aclosing
from pathlib import Path
from typing import IO, Any, BinaryIO, TypeAlias, TypeVar

from aiohttp import payload
from aiohttp.abc import AbstractStreamWriter

from ._batched import Batched
from .errors import IdeogramError, ImageChangedError, ValidationError
from .images import HEADER_BYTES, SNIFF_BYTES, image_size, sniff

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_MAX_FILE_SIZE",
    "SPOOL_MEMORY",
    "ImageInput",
    "ImagePayload",
    "PreparedImage",
    "in_thread",
    "open_regular",
    "path_error",
    "prepare_image",
]

ImageInput: TypeAlias = (
    str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO | AsyncIterable[bytes]
)
"""What ``upscale`` accepts as an image."""

_FILENAME_ESCAPES = str.maketrans({'"': "%22", "\r": "%0D", "\n": "%0A"})
DEFAULT_MAX_FILE_SIZE = 25 * 1024 * 1024
"""The official API's cap on an uploaded image (25 MB)."""
_T = TypeVar("_T")


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

    def dimensions(self) -> tuple[int, int] | None:
        """``(width, height)`` from the header in the first :data:`HEADER_BYTES`, if any."""
        return image_size(self.head(HEADER_BYTES))

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
    while left > 0:
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
                        prefix="ideogram-async-"
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
    nonblock = getattr(os, "O_NONBLOCK", 0)
    binary = getattr(os, "O_BINARY", 0)
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


async def in_thread(
    work: Callable[..., _T], *args: Any, undo: Callable[[_T], None] | None = None
) -> _T:
    """``work(*args)`` in a worker thread; if the caller is cancelled, ``undo`` its result.

    A cancelled ``asyncio.to_thread`` leaves its thread running, and whatever it
    opens or creates open behind the cancelled call. Here the result is undone when
    the thread finishes (a done callback, so also if the caller is cancelled again),
    and the first cancellation waits for that: the work is short (a stat, an open, a
    write), so "cancelled" still means "nothing left open".
    """
    future = asyncio.get_running_loop().run_in_executor(None, work, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(lambda done: _undo(done, undo))
        await asyncio.wait([future])
        raise


def _undo(done: asyncio.Future[_T], undo: Callable[[_T], None] | None) -> None:
    if done.cancelled() or done.exception() is not None:  # retrieved: never logged
        return
    if undo is not None:
        undo(done.result())


class _PathSource(_Source):
    """A file on disk over :data:`HEADER_BYTES`, opened afresh for every attempt.

    Its check read the header already (off the event loop): the type and the size in
    pixels are known without opening it again.
    """

    def __init__(self, path: Path, size: int, header: bytes) -> None:
        self._path = path
        self._head = header[:SNIFF_BYTES]
        self._dimensions = image_size(header)
        self.size = size

    def head(self, limit: int = SNIFF_BYTES) -> bytes:
        return self._head[:limit]

    def dimensions(self) -> tuple[int, int] | None:
        return self._dimensions

    def _gone(self) -> ImageChangedError:
        return ImageChangedError(
            f"{self._path.name} no longer exists (deleted or moved after it was "
            f"checked); upload it again once it is back"
        )

    def _unusable(self, exc: Exception) -> ImageChangedError:
        return ImageChangedError(
            f"{self._path.name} cannot be opened any more ({exc}); it changed after it was checked"
        )

    def start(self) -> tuple[IO[bytes] | None, bytes]:
        """Reopen the checked file and read its first chunk (it may block: a slow disk).

        A file that fits in one chunk is closed at once; a larger one stays open
        for :meth:`rest`.
        """
        try:
            file, size = open_regular(self._path)
        except FileNotFoundError:
            raise self._gone() from None
        except (OSError, ValidationError) as exc:
            raise self._unusable(exc) from None
        try:
            if size != self.size:
                raise _changed(self._path.name, self.size, f"{size} bytes")
            first = file.read(min(CHUNK_SIZE, size))
        except BaseException:
            file.close()
            raise
        if len(first) < size:
            return file, first
        file.close()
        return None, first

    async def rest(self, file: IO[bytes] | None, offset: int) -> AsyncGenerator[bytes, None]:
        if file is not None:
            async for chunk in _read_file(file, offset, self.size - offset):
                yield chunk


class PreparedImage:
    """A validated image that streams the same bytes for every attempt."""

    def __init__(self, source: _Source, filename: str, content_type: str) -> None:
        self._source = source
        self.filename = filename
        self.content_type = content_type
        self.size = source.size

    def payload(self, name: str = "image_file") -> ImagePayload:
        """A fresh multipart part ``name`` for one attempt (aiohttp payloads are single-use)."""
        return ImagePayload(self, name)

    def dimensions(self) -> tuple[int, int] | None:
        """``(width, height)`` from the image's header, without decoding it.

        ``None`` when the header does not give it within :data:`HEADER_BYTES`. A path's
        header was read by its check, off the event loop.
        """
        try:
            return self._source.dimensions()
        except OSError as exc:
            raise ValidationError(f"{self.filename} could not be read: {exc}") from None

    def close(self) -> None:
        """Delete any spool and close any file the client opened."""
        self._source.close()

    def __enter__(self) -> PreparedImage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ImagePayload(payload.Payload):
    """The file part (``image_file``; ``image`` for v2): streams a :class:`PreparedImage` in chunks.

    It sends exactly ``size`` bytes; a file that shrank, grew or vanished since it
    was checked fails the attempt with an ``ImageChangedError`` in ``error`` instead
    of sending something else. ``complete`` tells whether the whole image went out.
    """

    def __init__(self, image: PreparedImage, name: str) -> None:
        # aiohttp keeps the value but never reads it here: write() is this class's own.
        super().__init__(
            image,
            content_type=image.content_type,
            filename=image.filename,
        )
        self._image = image
        self._size = image.size
        # RFC 7578: the name goes out as UTF-8, with only '"', CR and LF percent-encoded
        # (as browsers do); aiohttp's default would percent-encode every non-ASCII byte.
        self.set_content_disposition(
            "form-data",
            quote_fields=False,
            name=name,
            filename=_disposition_name(image.filename),
        )
        self.complete = False
        self.error: IdeogramError | None = None
        self._file: IO[bytes] | None = None
        self._first: bytes | memoryview | None = None
        self._transport: asyncio.Transport | None = None
        self._released = False

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("an image upload is binary and streamed; it has no text form")

    async def open(self) -> None:
        """Start the attempt: reopen the file and read its first chunk, off the event loop.

        The client awaits it before the request goes out, so a file deleted or resized
        since it was checked fails with an ``ImageChangedError`` before anything is
        sent, and an image that fits in one chunk costs one worker-thread hop. A
        cancelled open leaves nothing open; :meth:`release` closes what it opened.
        """
        source = self._image._source
        if source.blocking:
            started = await in_thread(source.start, undo=lambda done: _close(done[0]))
        else:
            started = source.start()
        self._file, self._first = started
        if self._released:  # released while it opened (it was written by aiohttp's task)
            self.release()

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        if self._released:
            return  # the attempt was abandoned before aiohttp's writer task started
        size = self._image.size
        self._transport = getattr(writer, "transport", None)
        try:
            if self._first is None:  # used as a plain aiohttp payload, without open()
                await self.open()
            first, self._first = self._first, None
            if first is None:  # released while it opened
                return
            # Every source reads at most the size it was checked at, in chunks.
            await writer.write(first)
            sent = len(first)
            async with aclosing(self._image._source.rest(self._file, sent)) as chunks:
                async for chunk in chunks:
                    await writer.write(chunk)
                    sent += len(chunk)
            if sent != size:
                raise _changed(self._image.filename, size, f"{sent} bytes")
        except IdeogramError as exc:
            self.error = exc
            raise
        finally:
            self.release()
        self.complete = True

    def abort(self) -> None:
        """Drop the connection this attempt's upload went out on, buffered data and all."""
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()

    def release(self) -> None:
        """Close the file this attempt opened, at once (also on cancellation).

        aiohttp writes the body in a task of its own that may outlive a cancelled
        request; the client calls this so the file is never left open behind it,
        nor opened late by a writer task that had not started yet.
        """
        self._released = True
        self._first = None
        file, self._file = self._file, None
        _close(file)


def _disposition_name(name: str) -> str:
    """``name`` as the Content-Disposition ``filename``, per RFC 7578 section 4.2.

    UTF-8 as it is, with ``"``, CR and LF percent-encoded (as browsers do); the bytes
    of a name that is not valid UTF-8 (a file system name decoded with surrogates by
    ``os.fsdecode``) are percent-encoded too, so the name can always be sent.
    """
    escaped = name.translate(_FILENAME_ESCAPES)
    return _SURROGATES.sub(_percent_encoded, escaped)


_SURROGATES = re.compile("[\ud800-\udfff]")


def _percent_encoded(match: re.Match[str]) -> str:
    # A byte os.fsdecode could not decode is U+DC80..U+DCFF; any other lone surrogate
    # goes out as the bytes Python's "surrogatepass" gives it.
    escaped = "\udc80" <= match[0] <= "\udcff"
    raw = match[0].encode("utf-8", "surrogateescape" if escaped else "surrogatepass")
    return "".join(f"%{byte:02X}" for byte in raw)


def _close(file: IO[bytes] | None) -> None:
    if file is not None:
        file.close()


async def prepare_image(
    image: ImageInput | Any,
    *,
    max_file_size: int = DEFAULT_MAX_FILE_SIZE,
    filename: str | None = None,
) -> PreparedImage:
    """Validate ``image`` and make it resendable; raise ``ValidationError`` if it is unusable.

    Nothing is sent here. The caller must ``close()`` the result.
    """
    source, default_name = await _make_source(image, max_file_size)
    try:
        return _finish(source, default_name, filename, max_file_size)
    except BaseException:
        source.close()
        raise


def _finish(
    source: _Source, default_name: str | None, filename: str | None, max_file_size: int
) -> PreparedImage:
    label = filename or default_name or "the image"
    if source.size == 0:
        raise ValidationError(f"{label} is empty (0 bytes); pass a JPEG, PNG or WebP image")
    if source.size > max_file_size:
        raise ValidationError(
            f"{label} is {source.size} bytes, over the cap of {max_file_size} bytes; "
            f"shrink the image or raise max_file_size if the service accepts more"
        )
    head = source.head()
    fmt = sniff(head)
    if fmt is None:
        raise ValidationError(
            f"{label} is not a JPEG, PNG or WebP image (its first bytes are "
            f"{head[:8]!r}); the service accepts only those three formats"
        )
    return PreparedImage(source, filename or default_name or f"image{fmt.suffix}", fmt.content_type)


async def _make_source(image: object, max_file_size: int) -> tuple[_Source, str | None]:
    if isinstance(image, str | os.PathLike):
        path = Path(os.fspath(image))
        return await _path_source(path), path.name
    if isinstance(image, bytes | bytearray | memoryview):
        view = memoryview(image)
        if not view.c_contiguous:
            view = memoryview(view.tobytes())
        return _MemorySource(view.cast("B")), None
    read = getattr(image, "read", None)
    closed = getattr(image, "closed", False)
    if read is not None and closed is True:
        raise ValidationError("the image file is closed; pass it while it is still open")
    if inspect.iscoroutinefunction(read):  # aiohttp's response.content, aiofiles files
        return await _spool(_async_reads(read), max_file_size), _file_name(image)
    if read is not None:
        return await _file_source(image, max_file_size), _file_name(image)
    if isinstance(image, AsyncIterable):
        return await _spool(_aiter_checked(image), max_file_size), None
    raise ValidationError(
        f"cannot upload a {type(image).__name__}; pass a path, bytes, a binary file "
        f"object or an async iterator of bytes"
    )


def _check_path(path: Path) -> _Source:
    """In a worker thread: a regular file, its size, its header (a small file whole)."""
    try:
        file, size = open_regular(path)
    except OSError as exc:
        raise path_error(path, exc) from None
    with file:
        header = file.read(HEADER_BYTES)
    if len(header) == size:
        return _MemorySource(memoryview(header))
    return _PathSource(path, size, header)


_path_checks = Batched(_check_path, most=16)
"""The paths of one loop turn are checked together, in one worker-thread hop."""


async def _path_source(path: Path) -> _Source:
    """Check a path off the event loop: a regular file, its size, its header.

    A file of at most :data:`HEADER_BYTES` is read whole by its check and sent from
    memory, so its call needs no other hop (what was checked is what is sent, on every
    attempt); a larger one is reopened by each attempt. The checks of calls that start
    together (a gather, a batch) share one hop: the check leaves nothing open, so a
    cancelled call has nothing to undo.
    """
    return await _path_checks(path)


def _file_name(file: object) -> str | None:
    name = getattr(file, "name", None)
    return os.path.basename(name) if isinstance(name, str) and name else None


async def _file_source(file: Any, max_file_size: int) -> _Source:
    if isinstance(file, io.TextIOBase):
        raise ValidationError("the image file is open in text mode; open it with 'rb'")
    try:
        seekable = bool(file.seekable())
    except (AttributeError, ValueError, OSError):
        seekable = False
    if not seekable:
        return await _spool(_file_chunks(file), max_file_size)
    start = file.tell()
    end = file.seek(0, io.SEEK_END)
    file.seek(start)
    return _FileSource(file, start, end - start, owned=False)
