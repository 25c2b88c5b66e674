"""Turning any image input into a validated, resendable, streamed multipart part.

:func:`prepare_image` checks the input before anything is sent (exists, not empty,
under the size cap, JPEG/PNG/WebP by its first bytes) and returns a
:class:`PreparedImage` that can produce the same bytes for every attempt:

- a path is reopened per attempt and read in chunks in a worker thread;
- ``bytes``-like data is sent from memory without copies;
- a seekable binary file is rewound to where it started for every attempt and
  left there afterwards; the caller's file is never closed;
- a one-shot stream (an async iterator of bytes, or an unseekable file) is spooled
  once, in memory up to :data:`SPOOL_MEMORY`, then into an anonymous temporary
  file that the operating system deletes when it is closed.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import os
from collections.abc import AsyncGenerator, AsyncIterable
from contextlib import aclosing
from pathlib import Path
from typing import IO, Any, BinaryIO, TypeAlias

from aiohttp import payload
from aiohttp.abc import AbstractStreamWriter

from ._sources import (
    CHUNK_SIZE,
    SPOOL_MEMORY,
    _aiter_checked,
    _async_reads,
    _changed,
    _file_chunks,
    _FileSource,
    _MemorySource,
    _read_file,
    _Source,
    _spool,
    open_regular,
    path_error,
)
from ._threads import in_thread
from .errors import IdeogramError, ImageChangedError, ValidationError
from .images import HEADER_BYTES, SNIFF_BYTES, image_size, sniff

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_MAX_FILE_SIZE",
    "SPOOL_MEMORY",
    "ImageInput",
    "ImagePayload",
    "PreparedImage",
    "prepare_image",
]

ImageInput: TypeAlias = (
    str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO | AsyncIterable[bytes]
)
"""What ``upscale`` accepts as an image."""

_FILENAME_ESCAPES = str.maketrans({'"': "%22", "\r": "%0D", "\n": "%0A"})
DEFAULT_MAX_FILE_SIZE = 25 * 1024 * 1024
"""The official API's cap on an uploaded image (25 MB)."""


class _PathSource(_Source):
    """A file on disk, opened afresh for every attempt."""

    def __init__(self, path: Path, size: int, head: bytes) -> None:
        self._path = path
        self._head = head
        self.size = size

    def head(self, limit: int = SNIFF_BYTES) -> bytes:
        if limit <= len(self._head):  # pragma: no mutate (< only reads the file again)
            return self._head[:limit]
        with open(self._path, "rb") as file:
            return file.read(limit)

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
            # The payload stops at the size whatever this reads: its mutants are equivalent.
            async for chunk in _read_file(file, offset, self.size - offset):  # pragma: no mutate
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

        ``None`` when the header does not give it within :data:`HEADER_BYTES`.
        """
        try:
            head = self._source.head(HEADER_BYTES)
        except OSError as exc:
            raise ValidationError(f"{self.filename} could not be read: {exc}") from None
        return image_size(head)

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
            image,  # pragma: no mutate
            content_type=image.content_type,
            filename=image.filename,
        )
        self._image = image
        self._size = image.size
        # RFC 7578: the name goes out as UTF-8, with only '"', CR and LF percent-encoded
        # (as browsers do); aiohttp's default would percent-encode every non-ASCII byte.
        self.set_content_disposition(
            "form-data",
            quote_fields=False,  # pragma: no mutate (None is as false)
            name=name,
            filename=image.filename.translate(_FILENAME_ESCAPES),
        )
        self.complete = False
        self.error: IdeogramError | None = None
        self._file: IO[bytes] | None = None
        self._first: bytes | memoryview | None = None
        self._transport: asyncio.Transport | None = None
        self._released = False  # pragma: no mutate (None is as false)

    # pragma below: the text arguments are never used, so their defaults' mutants are equivalent.
    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:  # pragma: no mutate
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
        return await _path_source(Path(os.fspath(image))), Path(image).name
    if isinstance(image, bytes | bytearray | memoryview):
        view = memoryview(image)
        if not view.c_contiguous:
            view = memoryview(view.tobytes())
        return _MemorySource(view.cast("B")), None  # pragma: no mutate ("b": the same bytes)
    read = getattr(image, "read", None)
    closed = getattr(image, "closed", False)  # pragma: no mutate (only True counts below)
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


async def _path_source(path: Path) -> _Source:
    def check() -> _Source:
        try:
            file, size = open_regular(path)
        except OSError as exc:
            raise path_error(path, exc) from None
        with file:
            return _PathSource(path, size, file.read(SNIFF_BYTES))

    return await in_thread(check)


def _file_name(file: object) -> str | None:
    name = getattr(file, "name", None)
    return os.path.basename(name) if isinstance(name, str) and name else None


async def _file_source(file: Any, max_file_size: int) -> _Source:
    if isinstance(file, io.TextIOBase):
        raise ValidationError("the image file is open in text mode; open it with 'rb'")
    try:
        seekable = bool(file.seekable())
    except (AttributeError, ValueError, OSError):
        seekable = False  # pragma: no mutate (None is as false)
    if not seekable:
        return await _spool(_file_chunks(file), max_file_size)
    start = file.tell()
    end = file.seek(0, io.SEEK_END)
    file.seek(start)
    return _FileSource(file, start, end - start, owned=False)  # pragma: no mutate (None)
