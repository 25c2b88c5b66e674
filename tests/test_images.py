"""Image formats (images.py): sniffing, suffixes, size from the header, completeness."""

from __future__ import annotations

import io
import struct
from typing import Any

import pytest
from PIL import Image

from ideogram_async.images import (
    HEADER_BYTES,
    JPEG,
    PNG,
    SNIFF_BYTES,
    SUFFIXES,
    TAIL_BYTES,
    WEBP,
    ImageFormat,
    image_size,
    is_complete,
    sniff,
)

# Odd sizes, so that a swapped width and height or an off-by-one shows.
SIZES = [(1, 1), (3, 7), (641, 479), (1000, 17)]


def encode(size: tuple[int, int], fmt: str, mode: str = "RGB", **options: Any) -> bytes:
    image = Image.new(mode, size, "#3a7")
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def exif_with_a_large_comment(length: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010E] = "x" * length  # ImageDescription
    return exif


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n\0\0\0\r", PNG),
        (b"\xff\xd8\xff\xe0\0\x10JFIF\0", JPEG),
        (b"RIFF\x10\0\0\0WEBP", WEBP),
        (b"RIFF\x10\0\0\0WAVE", None),
        (b"GIF89a\x01\0\x01\0\0\0", None),
        (b"\x89PNG", None),
        (b"", None),
    ],
)
def test_sniff(head: bytes, expected: ImageFormat | None) -> None:
    assert sniff(head) is expected


def test_formats_know_their_suffixes_and_content_types() -> None:
    assert {".png", ".jpg", ".jpeg", ".webp"} == SUFFIXES
    assert (JPEG.suffix, JPEG.content_type) == (".jpg", "image/jpeg")
    assert (PNG.suffix, PNG.content_type) == (".png", "image/png")
    assert (WEBP.suffix, WEBP.content_type) == (".webp", "image/webp")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(
    ("fmt", "mode", "options"),
    [
        ("PNG", "RGB", {}),
        ("PNG", "P", {}),
        ("JPEG", "RGB", {"quality": 80}),
        ("JPEG", "L", {}),
        ("JPEG", "RGB", {"progressive": True}),
        ("WEBP", "RGB", {"quality": 80}),
        ("WEBP", "RGB", {"lossless": True}),
        ("WEBP", "RGB", {"exif": exif_with_a_large_comment(10)}),
    ],
    ids=[
        "png",
        "png-palette",
        "jpeg",
        "jpeg-grey",
        "jpeg-progressive",
        "webp",
        "webp-ll",
        "webp-x",
    ],
)
def test_image_size_reads_the_header(
    size: tuple[int, int], fmt: str, mode: str, options: dict[str, Any]
) -> None:
    data = encode(size, fmt, mode, **options)
    assert image_size(data) == size
    assert image_size(data[:HEADER_BYTES]) == size


@pytest.mark.parametrize(
    ("options", "chunk"),
    [
        ({"quality": 80}, b"VP8 "),
        ({"lossless": True}, b"VP8L"),
        ({"exif": exif_with_a_large_comment(10)}, b"VP8X"),
    ],
)
def test_each_webp_variant_is_read(options: dict[str, Any], chunk: bytes) -> None:
    data = encode((641, 479), "WEBP", **options)
    assert data[12:16] == chunk  # the variant this case is about
    assert image_size(data) == (641, 479)


def test_progressive_jpeg_has_its_own_frame_marker() -> None:
    data = encode((33, 65), "JPEG", progressive=True)
    assert b"\xff\xc2" in data  # SOF2, not the baseline SOF0
    assert image_size(data) == (33, 65)


def test_jpeg_with_exif_before_the_frame_header() -> None:
    data = encode((301, 203), "JPEG", exif=exif_with_a_large_comment(20_000))
    sof = data.index(b"\xff\xc0")
    assert data.index(b"Exif") < sof
    assert sof > 20_000  # beyond the first few KB a naive reader would look at
    assert image_size(data) == (301, 203)
    assert image_size(data[: sof + 9]) == (301, 203)  # just enough bytes
    assert image_size(data[: sof + 8]) is None  # the size is not in them yet
    assert image_size(data[:4096]) is None


def _sof_end(data: bytes) -> int:
    """Where a JPEG's frame header ends: its width is the last thing image_size needs."""
    return next(data.index(m) for m in (b"\xff\xc0", b"\xff\xc2") if m in data) + 9


@pytest.mark.parametrize(
    ("fmt", "options", "needed"),
    [
        ("PNG", {}, lambda data: 24),  # signature (8) and IHDR up to the height
        ("WEBP", {"quality": 80}, lambda data: 30),  # VP8 frame header
        ("WEBP", {"lossless": True}, lambda data: 25),  # VP8L's 4 bytes of size bits
        ("WEBP", {"exif": exif_with_a_large_comment(10)}, lambda data: 30),  # VP8X canvas
        ("JPEG", {}, _sof_end),
        ("JPEG", {"progressive": True}, _sof_end),
        ("JPEG", {"exif": exif_with_a_large_comment(300)}, _sof_end),
    ],
    ids=["png", "webp", "webp-ll", "webp-x", "jpeg", "jpeg-progressive", "jpeg-exif"],
)
def test_a_head_cut_anywhere_before_the_size_gives_none(
    fmt: str, options: dict[str, Any], needed: Any
) -> None:
    data = encode((5, 9), fmt, **options)
    end = needed(data)
    assert all(image_size(data[:n]) is None for n in range(end))  # no error either
    assert all(image_size(data[:n]) == (5, 9) for n in range(end, end + 40))


def test_jpeg_size_past_a_segment_longer_than_32k() -> None:
    # A segment length of 0x8000 or more, read as signed, would end the walk early.
    data = encode((301, 203), "JPEG", exif=exif_with_a_large_comment(40_000))
    assert _sof_end(data) > 40_000
    assert image_size(data) == (301, 203)


def _png_header(width: int, height: int) -> bytes:
    ihdr = b"IHDR" + struct.pack(">II", width, height) + b"\x08\x02\0\0\0"
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr


def _jpeg_header(width: int, height: int, *before_frame: bytes) -> bytes:
    frame = b"\xff\xc0\0\x11\x08" + struct.pack(">HH", height, width) + b"\x03" + b"\0" * 9
    return b"\xff\xd8" + b"".join(before_frame) + frame


@pytest.mark.parametrize(
    ("header", "size"),
    [
        (_png_header(2**31 - 1, 1), (2**31 - 1, 1)),  # the largest a PNG may declare
        (_jpeg_header(65_535, 40_000), (65_535, 40_000)),  # 16-bit sizes are unsigned
        (_jpeg_header(7, 5, b"\xff\xe1\0\x02"), (7, 5)),  # an empty segment (length 2)
        (_jpeg_header(7, 5, b"\xff\xe1\0\x03\0"), (7, 5)),  # a one-byte segment
        (_jpeg_header(7, 5, b"\xff"), (7, 5)),  # one fill byte before the frame marker
    ],
    ids=["png-max", "jpeg-large", "jpeg-empty-segment", "jpeg-short-segment", "jpeg-fill"],
)
def test_image_size_of_edge_case_headers(header: bytes, size: tuple[int, int]) -> None:
    assert image_size(header) == size


@pytest.mark.parametrize(
    "header",
    [
        _png_header(2**31, 1),  # beyond the largest a PNG may declare
        _png_header(0, 5),
        _png_header(5, 0),
        _jpeg_header(0, 5),
        _jpeg_header(5, 0),
        # The image ends (EOI) before any frame; what follows is not part of it.
        _jpeg_header(7, 5, b"\xff\xd9\0\x02"),
    ],
    ids=["png-too-wide", "png-0-wide", "png-0-high", "jpeg-0-wide", "jpeg-0-high", "jpeg-eoi"],
)
def test_image_size_of_invalid_headers_is_none(header: bytes) -> None:
    assert image_size(header) is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"GIF89a" + b"\0" * 40,
        b"\x89PNG\r\n\x1a\n" + b"\0\0\0\x0dIHDX" + b"\0" * 16,  # not an IHDR chunk
        b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR" + b"\0" * 8,  # a 0x0 PNG
        b"\xff\xd8\xff\xda\0\x08" + b"\0" * 10,  # scan data before any frame header
        b"\xff\xd8\xff\xe0\0\x01" + b"\0" * 10,  # a segment length below 2
        b"\xff\xd8\xff\xe0\0\x04\0\0\x12\x34" + b"\0" * 10,  # garbage where a marker goes
        b"RIFF\0\0\0\0WEBPVP8 \0\0\0\0" + b"\0" * 10,  # VP8 without its start code
        b"RIFF\0\0\0\0WEBPVP8L\0\0\0\0" + b"\0" * 10,  # VP8L without its signature
        b"RIFF\0\0\0\0WEBPALPH\0\0\0\0" + b"\0" * 10,  # an unknown first chunk
    ],
)
def test_malformed_headers_give_none(data: bytes) -> None:
    assert image_size(data) is None


def test_jpeg_fill_bytes_and_standalone_markers_are_skipped() -> None:
    data = encode((12, 34), "JPEG")
    # Insert fill bytes and a standalone marker (TEM) right after SOI.
    padded = data[:2] + b"\xff\xff\xff\x01" + data[2:]
    assert image_size(padded) == (12, 34)


# -- is_complete: from the first and last bytes only ----------------------------------------

WHOLE = {
    "png": encode((641, 479), "PNG"),
    "jpeg": encode((641, 479), "JPEG"),
    "progressive-jpeg": encode((641, 479), "JPEG", progressive=True),
    "lossy-webp": encode((641, 479), "WEBP"),
    "lossless-webp": encode((641, 479), "WEBP", lossless=True),
    "extended-webp": encode((64, 48), "WEBP", exif=exif_with_a_large_comment(99)),
}


def _complete(data: bytes) -> bool:
    return is_complete(data[:SNIFF_BYTES], data[-TAIL_BYTES:], len(data))


@pytest.mark.parametrize("name", WHOLE)
def test_a_whole_image_is_complete_and_any_cut_or_addition_is_not(name: str) -> None:
    data = WHOLE[name]
    assert _complete(data)
    assert is_complete(data, data, len(data))  # more than the bytes needed does as well
    for cut in (1, 2, 3, TAIL_BYTES, len(data) // 2, len(data) - SNIFF_BYTES):
        assert not _complete(data[:-cut]), cut
    assert not _complete(data + b"\0")
    assert not is_complete(data, data + b"\0", len(data) + 1)  # the end must be at the end


def test_what_the_structure_says_is_read_from_the_bytes_given() -> None:
    png_end = b"\0\0\0\0IEND\xaeB`\x82"
    assert TAIL_BYTES == len(png_end) == 12
    png_head = b"\x89PNG\r\n\x1a\n\0\0\0\x0d"
    assert is_complete(png_head, b"x" + png_end, 99)
    assert not is_complete(png_head, png_end[:-1] + b"\x83", 99)  # a wrong CRC is no IEND
    assert is_complete(b"\xff\xd8\xff\xe0", b"\xff\xd9", 4)
    assert not is_complete(b"\xff\xd8\xff\xe0", b"\xd9\xff", 4)
    # WebP: "RIFF", the size of the rest (little-endian), "WEBP"; the tail is not read.
    webp_head = b"RIFF" + struct.pack("<I", 0x0102) + b"WEBP"
    assert is_complete(webp_head, b"", 8 + 0x0102)
    assert not is_complete(webp_head, b"", 8 + 0x0201)
    assert not is_complete(webp_head, b"", 0x0102)
    for other in (b"GIF89a" + bytes(6), b"", b"\0" * 12):  # not one of the three formats
        assert not is_complete(other, png_end, 20)
