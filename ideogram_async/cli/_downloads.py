"""Saving results that were paid for: after an upscale, or from URLs a manifest recorded.

A write the file system refuses for want of room (no space, a quota, a read-only file
system, a file size limit) is told apart from other failures (:func:`refusal`): it
stops the run, since every later result would be lost the same way. A recorded URL
that the image host no longer has (404 or 410, or 403 once a day has passed) marks its
input for upscaling again.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs

from ideogram_async import APIStatusError, IdeogramClient, UpscaleResponse, V2UpscaleResponse

from ._inputs import Source, output_path
from ._manifest import Outcome
from ._resume import Recorded

__all__ = ["Saved", "paid_urls", "refusal", "refused_folder", "save", "save_recorded"]

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})
_URL_LIFETIME = timedelta(hours=24)
"""How long the service keeps result images."""

Describe = Callable[[BaseException], str]


def refusal(error: BaseException | None) -> OSError | None:
    """The ``OSError`` behind ``error`` when a file system refused a write for want of room."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in _FULL:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def refused_folder(folder: Path, error: OSError) -> str:
    """The one line that stops a run whose ``folder`` refused a write."""
    return f"cannot write into {folder} ({error.strerror or error})"


def paid_urls(response: UpscaleResponse | V2UpscaleResponse) -> tuple[tuple[str, ...], str | None]:
    """The result URLs of a successful upscale, or why there is nothing to download."""
    urls = tuple(image.url for image in response.data if image.url)
    if not response.data:
        return (), "the service answered with no images"
    if len(urls) < len(response.data):
        missing = len(response.data) - len(urls)
        withheld = sum(image.is_image_safe is False for image in response.data)
        return (), (
            f"{withheld} image(s) withheld by the service's safety check (the upscale is billed)"
            if withheld
            else f"the service answered with {missing} image(s) without a URL"
        )
    return urls, None


@attrs.frozen
class Saved:
    """How saving an input's results went."""

    outcome: Outcome
    refused: OSError | None = None
    """Why the file system refused a write for want of room: the run must stop."""
    expired: bool = False
    """The image host no longer has a result: the input must be upscaled again."""


def _expired(error: BaseException, upscaled_at: str | None) -> bool:
    if not isinstance(error, APIStatusError):
        return False
    if error.status in (404, 410):
        return True
    if error.status != 403 or upscaled_at is None:
        return False
    try:  # a 403 once the URL's lifetime has passed: how signed URLs say "expired"
        upscaled = datetime.fromisoformat(upscaled_at)
    except ValueError:
        return False
    return datetime.now(UTC) - upscaled > _URL_LIFETIME


async def save(
    client: IdeogramClient,
    source: Source,
    urls: Sequence[str],
    out_dir: Path,
    *,
    describe: Describe,
    attempts: int,
    seconds: float,
    upscaled_at: str | None,
    resolutions: tuple[str | None, ...] = (),
) -> Saved:
    """Download every result of ``source`` into ``out_dir``; any failure fails the input.

    The outcome keeps ``urls`` either way, so a failed download can be done again.
    """
    started = time.monotonic()
    targets = [
        output_path(out_dir, source, url, None if len(urls) == 1 else number)
        for number, url in enumerate(urls, 1)
    ]
    written = await asyncio.gather(
        *(client.download(url, target) for url, target in zip(urls, targets, strict=True)),
        return_exceptions=True,
    )
    outcome = Outcome(
        source=source,
        ok=True,
        urls=tuple(urls),
        outputs=tuple(path for path in written if isinstance(path, Path)),
        resolutions=resolutions,
        attempts=attempts,
        seconds=seconds + time.monotonic() - started,
        upscaled_at=upscaled_at,
    )
    errors = [error for error in written if isinstance(error, BaseException)]
    if not errors:
        return Saved(outcome)
    failed = attrs.evolve(outcome, ok=False, error=f"download failed: {describe(errors[0])}")
    refused = next((error for error in map(refusal, errors) if error is not None), None)
    expired = any(_expired(error, upscaled_at) for error in errors)
    return Saved(failed, refused=refused, expired=expired and refused is None)


async def save_recorded(
    client: IdeogramClient,
    recorded: Sequence[Recorded],
    out_dir: Path,
    *,
    describe: Describe,
    stopped: Callable[[], bool],
    on_start: Callable[[], None],
    on_saved: Callable[[Saved], None],
) -> list[Source]:
    """Download the results ``recorded`` (the allowance's maximum of inputs at a time).

    ``on_start`` is called as an input's downloads start, ``on_saved`` as they end;
    none starts once ``stopped()``. Returns the inputs whose URLs expired, in order.
    """
    items = enumerate(recorded)  # shared: each worker takes the next item
    expired: dict[int, Source] = {}

    async def worker() -> None:
        for index, item in items:
            if stopped():
                return
            on_start()
            saved = await save(
                client,
                item.source,
                item.urls,
                out_dir,
                describe=describe,
                attempts=item.attempts,
                seconds=0.0,
                upscaled_at=item.upscaled_at,
            )
            if saved.expired:
                expired[index] = item.source
            on_saved(saved)

    await asyncio.gather(*(worker() for _ in range(client.allowance.maximum)))
    return [expired[index] for index in sorted(expired)]
