"""Writing downloads safely: a temp file beside the target, renamed in when complete."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

from .errors import ResponseFormatError
from .images import SNIFF_BYTES, SUFFIXES, sniff


def _create_temp(folder: Path, name: str) -> tuple[int, Path]:
    """Create a new, empty ``.part`` file beside ``name``; return its descriptor and path.

    Unlike ``tempfile.mkstemp`` (always mode 0600) the file is created with mode
    0666 and the kernel applies the umask (and any default ACL), so the result
    gets the permissions of any file the user creates. Nothing reads or changes
    the process-wide umask.
    """
    temp = folder / f".{name}.{secrets.token_hex(8)}.part"
    return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), temp


async def write_atomically(target: Path, chunks: AsyncIterator[bytes]) -> Path:
    """Stream ``chunks`` into ``target``; on any failure ``target`` is left untouched.

    The body must be a JPEG, PNG or WebP image, or ``ResponseFormatError`` is raised.
    When ``target`` does not end in an image suffix, the image's own (``.png``,
    ``.jpg``, ``.webp``) is added. Returns the path written, with the permissions
    the umask gives any new file. Parent folders are created; disk writes run in a
    worker thread.
    """
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, lambda: target.parent.mkdir(parents=True, exist_ok=True))
    fd, temp = _create_temp(target.parent, target.name)
    try:
        with os.fdopen(fd, "wb") as file:
            head = b""
            async for chunk in chunks:
                if len(head) < SNIFF_BYTES:
                    head += chunk[: SNIFF_BYTES - len(head)]
                await loop.run_in_executor(None, file.write, chunk)
        fmt = sniff(head)
        if fmt is None:
            raise ResponseFormatError(
                f"the downloaded body for {target.name} is not a JPEG, PNG or WebP image "
                f"(it starts with {head[:8]!r}); the URL may have expired",
                body=head.decode("latin-1"),
            )
        if target.suffix.lower() not in SUFFIXES:
            target = target.with_name(target.name + fmt.suffix)
        os.replace(temp, target)
        return target
    except BaseException:
        # Synchronous on purpose: it must also happen when the task is cancelled.
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
