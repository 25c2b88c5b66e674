"""The image formats the service takes and returns: JPEG, PNG and WebP.

The one place that knows their signatures, file suffixes and content types, and
reads an image's width and height from its header without decoding it::

    fmt = sniff(head)            # ImageFormat or None, from the first SNIFF_BYTES
    size = image_size(head)      # (width, height) or None, from the first HEADER_BYTES
"""

from __future__ import annotations

import struct

import attrs

__all__ = [
    "FORMATS",
    "HEADER_BYTES",
    "JPEG",
    "PNG",
    "SNIFF_BYTES",
    "SUFFIXES",
    "WEBP",
    "ImageFormat",
    "image_size",
    "sniff",
]

SNIFF_BYTES = 12
"""How many leading bytes :func:`sniff` needs."""
HEADER_BYTES = 64 * 1024
"""Leading bytes that hold the size of nearly every image: a JPEG's EXIF block or
embedded thumbnail can push its frame header well past the first few KB."""


@attrs.frozen
class ImageFormat:
    """One image format: its name, content type and file suffixes (the first is preferred)."""

    name: str
    content_type: str
    suffixes: tuple[str, ...]

    @property
    def suffix(self) -> str:
        """The suffix a file of this format is given, e.g. ``".jpg"``."""
        return self.suffixes[0]


PNG = ImageFormat("png", "image/png", (".png",))
JPEG = ImageFormat("jpeg", "image/jpeg", (".jpg", ".jpeg"))
WEBP = ImageFormat("webp", "image/webp", (".webp",))
FORMATS = (PNG, JPEG, WEBP)
SUFFIXES = frozenset(suffix for fmt in FORMATS for suffix in fmt.suffixes)
"""File name endings of the images the service takes and returns (lower case)."""

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def sniff(head: bytes) -> ImageFormat | None:
    """The format of an image from its first :data:`SNIFF_BYTES` bytes, else ``None``."""
    if head.startswith(_PNG_SIGNATURE):
        return PNG
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    return None


def image_size(head: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of a JPEG, PNG or WebP image from its leading bytes.

    ``head`` is the start of the file, as much as the caller has read
    (:data:`HEADER_BYTES` is enough for nearly every image). ``None`` when the bytes
    are not one of the three formats, are malformed, or end before the size is given.
    """
    fmt = sniff(head)
    if fmt is PNG:
        size = _png_size(head)
    elif fmt is JPEG:
        size = _jpeg_size(head)
    elif fmt is WEBP:
        size = _webp_size(head)
    else:
        return None
    if size is None or size[0] <= 0 or size[1] <= 0:
        return None
    return size


def _png_size(head: bytes) -> tuple[int, int] | None:
    # Signature, then the IHDR chunk first: length (4), type (4), width (4), height (4).
    # Width and height are at most 2**31 - 1: read signed, a larger one is negative, invalid.
    if len(head) < 24 or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">ii", head[16:24])
    return width, height


# Start-of-frame markers: C0-CF except DHT (C4), JPG (C8) and DAC (CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length: TEM, RST0-7, SOI.
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8), 0xD8})


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    """Walk the marker segments up to the first start-of-frame (SOFn) one."""
    pos = 2
    while pos + 1 < len(head):
        if head[pos] != 0xFF:
            return None  # not at a marker: malformed
        marker = head[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _STANDALONE_MARKERS:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame
            return None
        if pos + 4 > len(head):
            return None
        (length,) = struct.unpack(">H", head[pos + 2 : pos + 4])
        if length < 2:
            return None
        if marker in _SOF_MARKERS:
            # Length (2), precision (1), height (2), width (2).
            if pos + 9 > len(head):
                return None
            height, width = struct.unpack(">HH", head[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    """The size in the first chunk: VP8 (lossy), VP8L (lossless) or VP8X (extended)."""
    chunk, data = head[12:16], head[20:30]
    if chunk == b"VP8 " and len(data) >= 10 and data[3:6] == b"\x9d\x01\x2a":
        # 14 bits of each are kept: signedness, or a slice past data's 10 bytes, cannot show.
        width, height = struct.unpack("<HH", data[6:10])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 5 and data[0] == 0x2F:
        (bits,) = struct.unpack("<I", data[1:5])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 10:
        width = int.from_bytes(data[4:7], "little") + 1
        height = int.from_bytes(data[7:10], "little") + 1
        return width, height
    return None
