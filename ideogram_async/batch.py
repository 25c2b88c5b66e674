"""The one bounded fan-out: lazy input, O(window) tasks, per-item results.

It runs ``upscale_many`` of v1 (:class:`UpscaleRequest`) and of v2 (a model's
options), and v2's ``quote_many``; a :class:`BatchResult` is typed by the answer it
carries.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Generic, Self, TypeAlias, TypeVar

import attrs

from ._checks import int_at_least
from .errors import ValidationError
from .models import UpscaleRequest
from .retry import counting_attempts
from .uploads import ImageInput

if TYPE_CHECKING:  # v2's options are a kind of request this module only names
    from .v2._options import V2Options

__all__ = ["BatchInput", "BatchResult", "BatchRun", "UpscaleJob"]

_R = TypeVar("_R")
"""The answer a batch yields: v1's, v2's or a v2 price quote."""


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
    request: UpscaleRequest | V2Options | None
    """The options it was upscaled with (``None`` only for an item that had none)."""
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
    ImageInput | tuple[ImageInput, "UpscaleRequest | V2Options | None"] | UpscaleJob
)
"""One item of ``upscale_many``'s input: an image, an ``(image, request)`` pair or a job."""

# The call run for each item: the client's upscale, or a v2 upscale or quote.
Runner: TypeAlias = Callable[[UpscaleJob], Awaitable[_R]]


Kind: TypeAlias = tuple[type, str]
"""The request type of a batch and its name in messages."""
V1: Kind = (UpscaleRequest, "an UpscaleRequest")


def as_job(item: object, default: UpscaleRequest | V2Options | None, kind: Kind) -> UpscaleJob:
    """Normalise an input item (image, ``(image, request)`` pair or job) to a job.

    Its request must be of the batch's ``kind``: v1 (:data:`V1`) or v2 (a model's
    options; ``default`` is ``None`` when a v2 batch has none).
    """
    cls, name = kind
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
    if job.request is not None and not isinstance(job.request, cls):
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
    index: int,
    item: BatchInput,
    run: Runner[_R],
    default: UpscaleRequest | V2Options | None,
    kind: Kind,
) -> BatchResult[_R]:
    started = time.monotonic()
    source, request = _image_of(item), default
    response: _R | None = None
    error: Exception | None = None
    with counting_attempts() as tally:
        try:
            job = as_job(item, default, kind)
            request = job.request or default
            response = await run(job)
        except Exception as exc:
            error = exc
    return BatchResult(
        index=index,
        source=source,
        request=request,
        response=response,
        error=error,
        attempts=tally.attempts,
        elapsed=time.monotonic() - started,
    )


def many(
    what: str,
    inputs: Iterable[BatchInput] | AsyncIterable[BatchInput],
    run: Runner[_R],
    default: UpscaleRequest | V2Options | None,
    *,
    kind: Kind,
    window: int | None,
    maximum: int,
    ordered: bool,
    stop_on_error: bool,
) -> BatchRun[_R]:
    """Check a batch call's arguments and start its :func:`fan_out` (see ``upscale_many``).

    ``window`` defaults to twice ``maximum``, the allowance's.
    """
    if isinstance(inputs, str | bytes | bytearray | memoryview | os.PathLike):
        raise ValidationError(
            f"{what} takes an iterable of images, not one image; "
            f"wrap it in a list or call {what.removesuffix('_many')}() for a single image"
        )
    size = int_at_least("window", 2 * maximum if window is None else window, 1)
    return BatchRun(
        fan_out(
            inputs,
            run,
            default,
            kind=kind,
            window=size,
            ordered=ordered,
            stop_on_error=stop_on_error,
        )
    )


async def fan_out(
    inputs: Iterable[BatchInput] | AsyncIterable[BatchInput],
    run: Runner[_R],
    default: UpscaleRequest | V2Options | None,
    *,
    kind: Kind,
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
    try:
        while True:
            while len(pending) + len(done_early) < window:
                try:
                    item = await anext(source)
                except StopAsyncIteration:  # and again, at once, each time it is asked
                    break
                pending.add(asyncio.create_task(_one(next_index, item, run, default, kind)))
                next_index += 1
            # Nothing pending is the end: in ordered mode the next index to yield is always
            # pending until it finishes, so nothing can be left waiting for it then.
            if not pending:
                return
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
