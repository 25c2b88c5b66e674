"""The image formats the service takes and returns: JPEG, PNG and WebP.

The one place that knows their signatures, file suffixes and content types, and
reads an image's width and height from its header without decoding it, and tells
from its first and last bytes whether it ends where its own structure says::

    fmt = sniff(head)            # ImageFormat or None, from the first SNIFF_BYTES
    size = image_size(head)      # (width, height) or None, from the first HEADER_BYTES
    whole = is_complete(head, tail, length)  # from the first and last TAIL_BYTES
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
    "TAIL_BYTES",
    "WEBP",
    "ImageFormat",
    "image_size",
    "is_complete",
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
# The last chunk of every PNG: length 0, type IEND, and the CRC of "IEND".
_PNG_END = b"\0\0\0\0IEND\xaeB`\x82"
_JPEG_END = b"\xff\xd9"  # the EOI (end of image) marker
TAIL_BYTES = len(_PNG_END)
"""How many trailing bytes :func:`is_complete` needs (a PNG's closing ``IEND`` chunk)."""
_RIFF_HEADER = 8  # "RIFF" and the size of what follows it


def sniff(head: bytes) -> ImageFormat | None:
    """The format of an image from its first :data:`SNIFF_BYTES` bytes, else ``None``."""
    if head.startswith(_PNG_SIGNATURE):
        return PNG
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    return None


def is_complete(head: bytes, tail: bytes, length: int) -> bool:
    """Whether an image of ``length`` bytes ends where its own structure says it does.

    ``head`` is its first :data:`SNIFF_BYTES` bytes (or more) and ``tail`` its last
    :data:`TAIL_BYTES` (or more), so a download can be judged as it streams, without
    keeping or reading it again: a PNG ends with its ``IEND`` chunk, a JPEG with its
    EOI marker, a WebP after the number of bytes its RIFF header gives. An image cut
    short fails this; so does one followed by stray bytes. ``False`` for other data.
    """
    fmt = sniff(head)
    if fmt is PNG:
        return tail.endswith(_PNG_END)
    if fmt is JPEG:
        return tail.endswith(_JPEG_END)
    if fmt is WEBP:
        return length == _RIFF_HEADER + int.from_bytes(head[4:8], "little")
    return False


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
        # Cut before its two bytes end, the length is too short or runs past the end.
        length = int.from_bytes(head[pos + 2 : pos + 4])  # big-endian
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
    chunk, data = head[12:16], head[20:]
    if chunk == b"VP8 " and len(data) >= 10 and data[3:6] == b"\x9d\x01\x2a":
        # 14 bits of each are kept (the top two are a scale): signedness cannot show.
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
