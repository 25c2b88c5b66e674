"""Bounded fan-out for ``upscale_many``: lazy input, O(window) tasks, per-item results."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Self, TypeAlias

import attrs

from .errors import ValidationError
from .models import UpscaleRequest, UpscaleResponse
from .uploads import ImageInput

__all__ = ["BatchInput", "BatchResult", "BatchRun", "UpscaleJob"]


@attrs.frozen
class UpscaleJob:
    """One item of ``upscale_many``: an image with its own request and file name."""

    image: ImageInput
    request: UpscaleRequest | None = None
    filename: str | None = None


@attrs.frozen(kw_only=True)
class BatchResult:
    """The outcome of one input of ``upscale_many``; errors are reported, not raised."""

    index: int
    """Position of the input in the input sequence (0-based)."""
    source: ImageInput
    """The image as it was given: the path (``str`` or ``os.PathLike``), bytes, file or
    stream itself, also when it came in an ``(image, request)`` pair or an ``UpscaleJob``.
    A path stays as given, so use ``Path(result.source)`` to name an output after it."""
    request: UpscaleRequest
    """The options it was upscaled with."""
    response: UpscaleResponse | None
    """The service's answer, or ``None`` when it failed."""
    error: Exception | None
    """Why it failed (usually an ``IdeogramError``), or ``None``."""
    attempts: int
    """HTTP attempts made for it."""
    elapsed: float
    """Seconds from its start to its end, retries included."""

    @property
    def ok(self) -> bool:
        """Whether the upscale succeeded."""
        return self.error is None


BatchInput: TypeAlias = ImageInput | tuple[ImageInput, UpscaleRequest | None] | UpscaleJob
"""One item of ``upscale_many``'s input: an image, an ``(image, request)`` pair or a job."""

# The client's upscale, returning the response and the attempts it took.
Upscaler = Callable[[UpscaleJob], Awaitable[tuple[UpscaleResponse, int]]]


def as_job(item: object, default: UpscaleRequest) -> UpscaleJob:
    """Normalise an input item (image, ``(image, request)`` pair or job) to a job."""
    if isinstance(item, UpscaleJob):
        job = item
    elif isinstance(item, tuple):
        if len(item) != 2 or not isinstance(item[1], UpscaleRequest | None):
            raise ValidationError(
                "a tuple input must be an (image, UpscaleRequest) pair; "
                "use UpscaleJob(image, request, filename) for more"
            )
        job = UpscaleJob(item[0], item[1])
    else:
        job = UpscaleJob(item)  # type: ignore[arg-type]
    return job if job.request is not None else attrs.evolve(job, request=default)


async def _items(
    inputs: Iterable[BatchInput] | AsyncIterable[BatchInput],
) -> AsyncGenerator[BatchInput, None]:
    if isinstance(inputs, AsyncIterable):
        async for item in inputs:
            yield item
    else:
        for item in inputs:
            yield item


class BatchRun:
    """The async iterator that ``upscale_many`` returns.

    Use it in ``async for``; wrap it in ``async with`` to cancel the remaining work
    the moment the block ends (a plain ``break`` cancels it too, but only once
    the iterator is garbage-collected).
    """

    def __init__(self, results: AsyncGenerator[BatchResult, None]) -> None:
        self._gen = results

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> BatchResult:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        """Cancel every item still in progress and wait until they have let go."""
        await self._gen.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _image_of(item: BatchInput) -> ImageInput:
    """The image of an input item, also of one ``as_job`` refuses (a malformed pair)."""
    if isinstance(item, UpscaleJob):
        return item.image
    if isinstance(item, tuple):
        return item[0] if len(item) == 2 else item
    return item


async def _one(
    index: int, item: BatchInput, upscale: Upscaler, default: UpscaleRequest
) -> BatchResult:
    started = time.monotonic()
    source, request, attempts = _image_of(item), default, 0
    response: UpscaleResponse | None = None
    error: Exception | None = None
    try:
        job = as_job(item, default)
        request = job.request or default
        response, attempts = await upscale(job)
    except Exception as exc:
        error = exc
        attempts = getattr(exc, "attempts", 0)
    return BatchResult(
        index=index,
        source=source,
        request=request,
        response=response,
        error=error,
        attempts=attempts,
        elapsed=time.monotonic() - started,
    )


async def fan_out(
    inputs: Iterable[BatchInput] | AsyncIterable[BatchInput],
    upscale: Upscaler,
    default: UpscaleRequest,
    *,
    window: int,
    ordered: bool,
    stop_on_error: bool,
) -> AsyncGenerator[BatchResult, None]:
    """Keep at most ``window`` items started-but-not-yielded; yield as they finish."""
    source = _items(inputs)
    pending: set[asyncio.Task[BatchResult]] = set()
    done_early: dict[int, BatchResult] = {}  # ordered mode: finished, waiting their turn
    next_index = 0  # next input index to start
    next_out = 0  # ordered mode: next index to yield
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) + len(done_early) < window:
                try:
                    item = await anext(source)
                except StopAsyncIteration:
                    exhausted = True
                    break
                pending.add(asyncio.create_task(_one(next_index, item, upscale, default)))
                next_index += 1
            if not pending and not done_early:
                return
            finished: list[BatchResult] = []
            if pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                finished = sorted((task.result() for task in done), key=lambda r: r.index)
            if ordered:
                done_early.update((r.index, r) for r in finished)
                finished = []
                while next_out in done_early:
                    finished.append(done_early.pop(next_out))
                    next_out += 1
            for result in finished:
                yield result
                if stop_on_error and not result.ok:
                    return
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        await source.aclose()
