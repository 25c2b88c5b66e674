"""What a refused or changed image input says, word for word: the problem and the fix.

Every one of these is raised before anything is sent (``ValidationError``), or by an
attempt that finds the file changed since it was checked (``ImageChangedError``).
"""

from __future__ import annotations

import errno
import io
import os
import stat
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ideogram_async import ImageChangedError, ValidationError
from ideogram_async.images import HEADER_BYTES
from ideogram_async.uploads import (
    CHUNK_SIZE,
    SPOOL_MEMORY,
    PreparedImage,
    open_regular,
    path_error,
    prepare_image,
)

from ._support import make_image

PNG = make_image("png", (4, 4))
LARGE = PNG + bytes(HEADER_BYTES)
"""Over the size a check reads whole: each attempt opens the file again."""


async def refused(image: object, **options: object) -> str:
    with pytest.raises(ValidationError) as caught:
        await prepare_image(image, **options)  # type: ignore[arg-type]
    return str(caught.value)


async def stream(*chunks: object) -> AsyncIterator[object]:
    for chunk in chunks:
        yield chunk


async def test_an_empty_input_names_itself_or_its_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    expected = "is empty (0 bytes); pass a JPEG, PNG or WebP image"
    assert await refused(b"") == f"the image {expected}"
    assert await refused(empty) == f"empty.png {expected}"
    assert await refused(b"", filename="given.png") == f"given.png {expected}"


async def test_an_input_over_the_cap_says_by_how_much() -> None:
    assert await refused(PNG, max_file_size=len(PNG) - 1) == (
        f"the image is {len(PNG)} bytes, over the cap of {len(PNG) - 1} bytes; shrink the "
        "image or raise max_file_size if the service accepts more"
    )


async def test_a_non_image_shows_its_first_bytes() -> None:
    assert await refused(b"GIF89a-and-more") == (
        "the image is not a JPEG, PNG or WebP image (its first bytes are b'GIF89a-a'); "
        "the service accepts only those three formats"
    )


async def test_a_stream_over_the_cap_is_stopped_while_spooling() -> None:
    assert await refused(stream(PNG, b"x"), max_file_size=len(PNG)) == (
        f"the image stream is over the cap of {len(PNG)} bytes; shrink the image or raise "
        "max_file_size"
    )


async def test_a_stream_of_text_is_refused_with_the_fix() -> None:
    assert await refused(stream("text")) == (
        "the image stream yielded str, not bytes; open files in binary mode and yield bytes"
    )


async def test_files_closed_or_in_text_mode_and_other_objects_are_refused(tmp_path: Path) -> None:
    closed = io.BytesIO(PNG)
    closed.close()
    assert await refused(closed) == "the image file is closed; pass it while it is still open"
    with open(tmp_path / "t.txt", "w+") as text:
        assert await refused(text) == "the image file is open in text mode; open it with 'rb'"
    assert await refused(42) == (
        "cannot upload a int; pass a path, bytes, a binary file object or an async iterator "
        "of bytes"
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (FileNotFoundError(errno.ENOENT, "x"), "p.png: no such file; check the path"),
        (
            IsADirectoryError(errno.EISDIR, "x"),
            "p.png is a directory; pass an image file (upscale_many takes many)",
        ),
        (PermissionError(errno.EACCES, "x"), "p.png: permission denied; make the file readable"),
        (
            NotADirectoryError(errno.ENOTDIR, "x"),
            "p.png: a part of the path is a file, not a folder; check the path",
        ),
        (OSError(errno.ELOOP, "x"), "p.png: a symbolic link loop; fix the link"),
        (OSError(errno.ENAMETOOLONG, "x"), "p.png: the name is too long; check the path"),
        (OSError(errno.EIO, "I/O error"), "p.png: cannot be read (I/O error); check the path"),
        (OSError("odd"), "p.png: cannot be read (odd); check the path"),
    ],
)
def test_each_path_problem_names_its_fix(error: OSError, expected: str) -> None:
    assert str(path_error(Path("p.png"), error)) == expected


async def test_a_fifo_is_refused_as_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert await refused(fifo) == (
        f"{fifo} is not a regular file (a FIFO, device or socket); pass an image file"
    )
    with pytest.raises(IsADirectoryError):
        open_regular(tmp_path)


def test_a_file_opens_for_reading_where_the_platform_lacks_o_nonblock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(PNG)
    monkeypatch.delattr(os, "O_NONBLOCK")  # as on Windows
    file, size = open_regular(path)
    with file:
        assert (file.read(), size) == (PNG, len(PNG))


def test_a_file_is_opened_binary_where_the_platform_has_o_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Windows has O_BINARY (no newline translation); here O_DIRECTORY stands in for it,
    # a flag whose effect shows: the regular file then cannot be opened.
    path = tmp_path / "photo.png"
    path.write_bytes(PNG)
    monkeypatch.setattr(os, "O_BINARY", os.O_DIRECTORY, raising=False)
    with pytest.raises(NotADirectoryError):
        open_regular(path)


async def changed(path: Path, image: PreparedImage) -> str:
    with image, pytest.raises(ImageChangedError) as caught:
        await image.payload().open()
    return str(caught.value)


async def test_a_file_resized_since_its_check_says_what_was_found(tmp_path: Path) -> None:
    path = tmp_path / "grows.png"
    path.write_bytes(LARGE)
    image = await prepare_image(path)
    path.write_bytes(LARGE + b"more")
    assert await changed(path, image) == (
        f"grows.png: the file changed after it was checked (expected {len(LARGE)} bytes, "
        f"found {len(LARGE) + 4} bytes); upload it again once it is complete"
    )


async def test_a_file_deleted_since_its_check_says_so(tmp_path: Path) -> None:
    path = tmp_path / "gone.png"
    path.write_bytes(LARGE)
    image = await prepare_image(path)
    path.unlink()
    assert await changed(path, image) == (
        "gone.png no longer exists (deleted or moved after it was checked); upload it "
        "again once it is back"
    )


async def test_a_file_replaced_by_a_folder_says_it_cannot_be_opened(tmp_path: Path) -> None:
    path = tmp_path / "swapped.png"
    path.write_bytes(LARGE)
    image = await prepare_image(path)
    path.unlink()
    path.mkdir()
    assert await changed(path, image) == (
        f"swapped.png cannot be opened any more ([Errno 21] Is a directory: '{path}'); "
        "it changed after it was checked"
    )


async def test_a_spool_of_exactly_the_memory_limit_is_kept_in_memory() -> None:
    data = PNG + bytes(SPOOL_MEMORY - len(PNG))
    with await prepare_image(stream(data)) as image:
        assert image.size == SPOOL_MEMORY
        assert image._source.blocking is False


async def test_an_image_payload_has_no_text_form() -> None:
    with await prepare_image(PNG) as image, pytest.raises(TypeError) as caught:
        image.payload().decode()
    assert str(caught.value) == "an image upload is binary and streamed; it has no text form"


@pytest.mark.parametrize("data", [PNG, LARGE], ids=["small", "large"])
async def test_the_dimensions_of_a_path_come_from_its_check(tmp_path: Path, data: bytes) -> None:
    # Read by the check, in its worker thread: never again, and never on the event loop.
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    with await prepare_image(path) as image:
        path.unlink()
        assert image.dimensions() == (4, 4)


async def test_a_small_path_is_sent_as_it_was_checked(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(PNG)
    with await prepare_image(path) as image:
        path.unlink()  # read whole by the check: what was checked is what is sent
        first, rest = await _sent(image), await _sent(image)
    assert first == rest == PNG


async def _sent(image: Any) -> bytes:
    payload = image.payload()
    sent: list[bytes] = []

    class Writer:
        async def write(self, chunk: bytes) -> None:
            sent.append(bytes(chunk))

    await payload.write_with_length(Writer(), None)
    assert payload.complete
    return b"".join(sent)


@pytest.mark.parametrize("kind", ["path", "file"])
async def test_the_dimensions_read_the_header_not_the_whole_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(PNG)
    os.truncate(path, 20 * 1024 * 1024)  # sparse: real bytes to read, cheap to make
    with open(path, "rb") as file:
        source = path if kind == "path" else file
        with await prepare_image(source, max_file_size=20 * 1024 * 1024) as image:
            tracemalloc.start()
            try:
                assert image.dimensions() == (4, 4)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    assert peak < 1024 * 1024


class _FailingLater(io.BytesIO):
    """A seekable file whose reads start failing once ``failing`` is set (a lost mount)."""

    name = "/mnt/share/photo.png"
    failing = False

    def read(self, size: int | None = -1) -> bytes:
        if self.failing:
            raise OSError(errno.EIO, "Input/output error")
        return super().read(size)


async def test_a_file_that_cannot_be_read_for_its_dimensions_says_which_and_why() -> None:
    file = _FailingLater(PNG)
    with await prepare_image(file) as image:
        file.failing = True
        with pytest.raises(ValidationError) as caught:
            image.dimensions()
    assert str(caught.value) == "photo.png could not be read: [Errno 5] Input/output error"


class _Unseekable(io.RawIOBase):
    """A readable stream whose seekable() itself fails, as some wrappers' do."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        raise OSError("seekable() is not supported here")

    def readinto(self, buffer: Any) -> int:
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


async def test_a_file_whose_seekable_fails_is_read_once_and_spooled() -> None:
    with await prepare_image(_Unseekable(PNG)) as image:
        assert image.size == len(PNG)
        assert image._source.blocking is False  # spooled into memory


class _AsyncFile:
    """Like an aiofiles file: an async ``read`` and a ``name``."""

    def __init__(self, data: bytes, name: str) -> None:
        self._data = io.BytesIO(data)
        self.name = name

    async def read(self, size: int = -1) -> bytes:
        return self._data.read(size)


async def test_an_async_file_keeps_its_name() -> None:
    with await prepare_image(_AsyncFile(PNG, "/photos/cat.png")) as image:
        assert image.filename == "cat.png"


async def test_a_file_that_shrinks_while_it_streams_says_how_much_went_out(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shrinks.png"
    data = PNG + bytes(3 * CHUNK_SIZE)
    path.write_bytes(data)
    with await prepare_image(path, max_file_size=len(data)) as image:
        payload = image.payload()
        await payload.open()  # the first chunk is read; the rest is read while sending
        os.truncate(path, CHUNK_SIZE + 10)
        with pytest.raises(ImageChangedError) as caught:
            await payload.write_with_length(_Sink(), None)  # type: ignore[arg-type]
    assert str(caught.value) == (
        f"shrinks.png: the file changed after it was checked (expected {len(data)} bytes, "
        f"found {CHUNK_SIZE + 10} bytes); upload it again once it is complete"
    )
    assert payload.error is caught.value
    assert not payload.complete


class _Sink:
    """A stream writer that counts what it is given."""

    def __init__(self) -> None:
        self.total = 0

    async def write(self, chunk: bytes | memoryview) -> None:
        self.total += len(chunk)


@pytest.mark.parametrize("kind", ["path", "file"])
async def test_a_file_that_grows_while_it_streams_sends_what_was_checked(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "grows.png"
    data = PNG + bytes(3 * CHUNK_SIZE)
    path.write_bytes(data)
    with open(path, "rb") as file:
        source = path if kind == "path" else file
        with await prepare_image(source, max_file_size=len(data)) as image:
            payload = image.payload()
            await payload.open()
            with open(path, "ab") as appending:
                appending.write(b"x" * CHUNK_SIZE)
            sink = _Sink()
            await payload.write_with_length(sink, None)  # type: ignore[arg-type]
    assert (payload.complete, sink.total) == (True, len(data))


class _Pipe(io.RawIOBase):
    """An unseekable stream of ``size`` bytes that starts like a PNG."""

    def __init__(self, size: int) -> None:
        self._left = size
        self._head = PNG

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self._left)
        head, self._head = self._head[:count], self._head[count:]
        buffer[:count] = head + bytes(count - len(head))
        self._left -= count
        return count


async def test_an_unseekable_stream_is_spooled_a_chunk_at_a_time() -> None:
    size = 8 * 1024 * 1024
    tracemalloc.start()
    try:
        with await prepare_image(_Pipe(size), max_file_size=size) as image:
            _, peak = tracemalloc.get_traced_memory()
            assert image.size == size
    finally:
        tracemalloc.stop()
    assert peak < 3 * 1024 * 1024  # the memory spool (1 MiB) and a chunk, not the stream
