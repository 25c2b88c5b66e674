"""Bounded fan-out for ``upscale_many``: lazy input, O(window) tasks, per-item results.

The same machinery runs v1 upscales (:class:`UpscaleRequest`) and v2 ones (a model's
options); a :class:`BatchResult` is typed by the answer it carries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Generic, Self, TypeAlias, TypeVar

import attrs

from .errors import ValidationError
from .models import UpscaleRequest, UpscaleResponse
from .uploads import ImageInput
from .v2 import V2Options, V2UpscaleResponse

__all__ = ["BatchInput", "BatchResult", "BatchRun", "UpscaleJob"]

_R = TypeVar("_R", UpscaleResponse, V2UpscaleResponse)
"""The answer a batch yields: v1's or v2's."""


@attrs.frozen
class UpscaleJob:
    """One item of ``upscale_many``: an image with its own request and file name.

    ``request`` is an :class:`UpscaleRequest` in a v1 batch, a model's options
    (e.g. ``TopazBloom2(...)``) in a v2 one.
    """

    image: ImageInput
    request: UpscaleRequest | V2Options | None = None
    filename: str | None = None


@attrs.frozen(kw_only=True)
class BatchResult(Generic[_R]):
    """The outcome of one input of ``upscale_many``; errors are reported, not raised."""

    index: int
    """Position of the input in the input sequence (0-based)."""
    source: ImageInput
    """The image as it was given: the path (``str`` or ``os.PathLike``), bytes, file or
    stream itself, also when it came in an ``(image, request)`` pair or an ``UpscaleJob``.
    A path stays as given, so use ``Path(result.source)`` to name an output after it."""
    request: UpscaleRequest | V2Options
    """The options it was upscaled with."""
    response: _R | None
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


BatchInput: TypeAlias = (
    ImageInput | tuple[ImageInput, UpscaleRequest | V2Options | None] | UpscaleJob
)
"""One item of ``upscale_many``'s input: an image, an ``(image, request)`` pair or a job."""

# The client's upscale, returning the response and the attempts it took.
Upscaler: TypeAlias = Callable[[UpscaleJob], Awaitable[tuple[_R, int]]]


def as_job(item: object, default: UpscaleRequest | V2Options) -> UpscaleJob:
    """Normalise an input item (image, ``(image, request)`` pair or job) to a job.

    Its request must be of the batch's kind: v1 (:class:`UpscaleRequest`) or v2.
    """
    kind, name = (
        (V2Options, "a v2 model's options")
        if isinstance(default, V2Options)
        else (UpscaleRequest, "an UpscaleRequest")
    )
    if isinstance(item, UpscaleJob):
        job = item
    elif isinstance(item, tuple):
        if len(item) != 2:
            raise ValidationError(
                "a tuple input must be an (image, request) pair; "
                "use UpscaleJob(image, request, filename) for more"
            )
        job = UpscaleJob(item[0], item[1])
    else:
        job = UpscaleJob(item)  # type: ignore[arg-type]
    if job.request is not None and not isinstance(job.request, kind):
        raise ValidationError(
            f"this batch's requests are {name}, got {type(job.request).__name__}; "
            f"run v1 and v2 upscales in separate batches"
        )
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


class BatchRun(Generic[_R]):
    """The async iterator that ``upscale_many`` returns.

    Use it in ``async for``; wrap it in ``async with`` to cancel the remaining work
    the moment the block ends (a plain ``break`` cancels it too, but only once
    the iterator is garbage-collected).
    """

    def __init__(self, results: AsyncGenerator[BatchResult[_R], None]) -> None:
        self._gen: AsyncGenerator[BatchResult[_R], None] = results

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> BatchResult[_R]:
        result: BatchResult[_R] = await self._gen.__anext__()
        return result

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
    index: int, item: BatchInput, upscale: Upscaler[_R], default: UpscaleRequest | V2Options
) -> BatchResult[_R]:
    started = time.monotonic()
    source, request = _image_of(item), default
    response: _R | None = None
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
    upscale: Upscaler[_R],
    default: UpscaleRequest | V2Options,
    *,
    window: int,
    ordered: bool,
    stop_on_error: bool,
) -> AsyncGenerator[BatchResult[_R], None]:
    """Keep at most ``window`` items started-but-not-yielded; yield as they finish."""
    source = _items(inputs)
    pending: set[asyncio.Task[BatchResult[_R]]] = set()
    done_early: dict[int, BatchResult[_R]] = {}  # ordered mode: finished, waiting their turn
    next_index = 0  # next input index to start
    next_out = 0  # ordered mode: next index to yield
    exhausted = False  # pragma: no mutate (None is as false)
    try:
        while True:
            while not exhausted and len(pending) + len(done_early) < window:
                try:
                    item = await anext(source)
                except StopAsyncIteration:
                    # An exhausted source raises the same again: not setting it only costs calls.
                    exhausted = True  # pragma: no mutate
                    break
                pending.add(asyncio.create_task(_one(next_index, item, upscale, default)))
                next_index += 1
            if not pending and not done_early:
                return
            # Only the ordered mode gets here with nothing pending, and it sets its own list.
            finished: list[BatchResult[_R]] = []  # pragma: no mutate
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
