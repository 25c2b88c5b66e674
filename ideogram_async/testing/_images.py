"""Image helpers of the emulator: a Pillow-free PNG and the 2x upscale.

Pillow is imported only inside the functions that decode images, so the emulator (and
``import ideogram_async.testing``) works without it when upscaling is turned off.
"""

from __future__ import annotations

import io
import struct
import zlib

__all__ = ["require_pillow", "solid_png", "upscale_2x"]

_PILLOW_HINT = (
    "The emulator needs Pillow to upscale images: pip install 'ideogram-async[emulator]' "
    "(or run it with upscale=False / --no-upscale, which answers with a fixed tiny PNG)."
)


def solid_png(width: int, height: int, rgb: tuple[int, int, int] = (128, 128, 128)) -> bytes:
    """Encode a solid-colour RGB PNG with the standard library only."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    row = b"\x00" + bytes(rgb) * width  # filter byte "None", then the pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def require_pillow() -> None:
    """Fail early, with the install command, when Pillow is missing."""
    try:
        import PIL.Image  # noqa: F401
    except ImportError as exc:
        raise ImportError(_PILLOW_HINT) from exc


def upscale_2x(data: bytes) -> tuple[bytes, int, int]:
    """Decode an image, resize it to twice its size and encode it as PNG.

    Returns the PNG bytes and the new width and height. CPU-bound: run it in a thread.
    Raises whatever Pillow raises for data it cannot decode.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as opened:
        image: Image.Image = opened
        if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
            image = image.convert("RGBA" if "A" in image.mode else "RGB")
        width, height = image.width * 2, image.height * 2
        resized = image.resize((width, height), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    resized.save(out, format="PNG", compress_level=1)  # fast: the emulator is a test tool
    return out.getvalue(), width, height
