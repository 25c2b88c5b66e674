"""The PNG files the workloads upload, generated with the standard library."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

__all__ = ["write_png"]

_FILLER_BLOCK = 1024 * 1024


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def write_png(path: Path, *, side: int = 32, size: int = 0) -> Path:
    """Write a solid ``side`` x ``side`` RGB PNG to ``path`` and return ``path``.

    With ``size`` > 0 the file is padded to exactly ``size`` bytes by a private
    ancillary chunk (``fiLl``, which decoders skip), so it stays a valid PNG of
    any size without costing the server a decode of that many pixels.
    """
    rows = (b"\x00" + b"\x80\x40\x20" * side) * side
    head = (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(rows))
    )
    tail = _chunk(b"IEND", b"")
    filler = size - len(head) - len(tail) - 12  # a chunk adds length, tag and CRC
    with path.open("wb") as file:
        file.write(head)
        if filler > 0:
            # The CRC is computed as the filler is written, so memory stays small.
            crc = zlib.crc32(b"fiLl")
            file.write(struct.pack(">I", filler) + b"fiLl")
            block = bytes(range(256)) * (_FILLER_BLOCK // 256)
            left = filler
            while left:
                piece = block[: min(left, _FILLER_BLOCK)]
                file.write(piece)
                crc = zlib.crc32(piece, crc)
                left -= len(piece)
            file.write(struct.pack(">I", crc))
        file.write(tail)
    return path
