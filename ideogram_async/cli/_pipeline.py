"""The command line's pipeline: upscale many files, download each result, record outcomes.

Upscales fan out through ``IdeogramClient.upscale_many``; each finished upscale gets a
download task, so downloads overlap further upscales. At most ``client.max_concurrency``
download tasks exist at once (the consumer waits for one to end before starting
another), so memory stays O(concurrency) however many files there are.

:func:`run_job` wraps one run with its manifest, progress display and summary, and
stops it cleanly when the ``stop`` event is set (by SIGINT or SIGTERM).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from ideogram_async import (
    BatchResult,
    IdeogramClient,
    IdeogramError,
    RetryEvent,
    UpscaleRequest,
    UpscaleResponse,
    V2Options,
    V2UpscaleResponse,
)

from ._inputs import Source, output_path
from ._manifest import Manifest, Outcome
from ._progress import PlainReporter, Reporter, Tally

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
Answer = UpscaleResponse | V2UpscaleResponse


def describe(error: BaseException) -> str:
    """An error as one line for the user: the library's message, else its type too."""
    text = " ".join(str(error).split())
    if isinstance(error, IdeogramError) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


async def run_batch(
    client: IdeogramClient,
    sources: Sequence[Source],
    request: UpscaleRequest | V2Options,
    out_dir: Path,
    *,
    on_start: Callable[[], None],
    on_finish: Callable[[Outcome], None],
) -> None:
    """Upscale every source and download its results into ``out_dir``.

    ``on_start`` is called as each input is taken up, ``on_finish`` with its
    outcome once its upscale and all its downloads have ended. Cancelling this
    coroutine cancels everything in progress and waits until it has let go.
    """

    def pulled() -> Iterator[Path]:
        for source in sources:
            on_start()
            yield source.path

    async def finish(source: Source, result: BatchResult[Any], response: Answer) -> None:
        on_finish(await _download(client, source, result, response, out_dir))

    downloads: set[asyncio.Task[None]] = set()
    try:
        async with client.upscale_many(pulled(), request) as run:
            async for result in run:
                source = sources[result.index]
                if result.error is not None:
                    on_finish(_failed(source, result, describe(result.error)))
                    continue
                assert result.response is not None  # there is one whenever error is None
                if len(downloads) >= client.max_concurrency:
                    await asyncio.wait(downloads, return_when=asyncio.FIRST_COMPLETED)
                for task in [task for task in downloads if task.done()]:
                    downloads.discard(task)
                    task.result()  # raise a failure of on_finish (a full disk) at once
                downloads.add(asyncio.create_task(finish(source, result, result.response)))
        await asyncio.gather(*downloads)
    finally:
        for task in downloads:
            task.cancel()
        await asyncio.gather(*downloads, return_exceptions=True)


def _failed(source: Source, result: BatchResult[Any], error: str) -> Outcome:
    return Outcome(
        source=source, ok=False, error=error, attempts=result.attempts, seconds=result.elapsed
    )


async def _download(
    client: IdeogramClient,
    source: Source,
    result: BatchResult[Any],
    response: Answer,
    out_dir: Path,
) -> Outcome:
    """Download every image of a successful upscale; any failure fails the input."""
    started = time.monotonic()
    urls = tuple(image.url for image in response.data if image.url)
    resolutions = tuple(image.resolution for image in response.data if image.url)
    if not response.data:
        return _failed(source, result, "the service answered with no images")
    if len(urls) < len(response.data):
        missing = len(response.data) - len(urls)
        withheld = sum(image.is_image_safe is False for image in response.data)
        why = (
            f"{withheld} image(s) withheld by the service's safety check (the upscale is billed)"
            if withheld
            else f"the service answered with {missing} image(s) without a URL"
        )
        return _failed(source, result, why)
    targets = [
        output_path(out_dir, source, url, None if len(urls) == 1 else number)
        for number, url in enumerate(urls, 1)
    ]
    written = await asyncio.gather(
        *(client.download(url, target) for url, target in zip(urls, targets, strict=True)),
        return_exceptions=True,
    )
    outputs = tuple(path for path in written if isinstance(path, Path))
    seconds = result.elapsed + time.monotonic() - started
    errors = [error for error in written if isinstance(error, BaseException)]
    if errors:
        return attrs.evolve(
            _failed(source, result, f"download failed: {describe(errors[0])}"),
            urls=urls,
            outputs=outputs,
            seconds=seconds,
        )
    return Outcome(
        source=source,
        ok=True,
        urls=urls,
        outputs=outputs,
        resolutions=resolutions,
        attempts=result.attempts,
        seconds=seconds,
    )


@attrs.frozen(kw_only=True)
class Job:
    """What one run does: which inputs, with which options, into which folder."""

    sources: Sequence[Source]
    request: UpscaleRequest | V2Options
    out_dir: Path
    manifest: Path | None = None
    append: bool = False
    """Continue the manifest (``--resume``) instead of starting it afresh."""
    rerun_hint: str
    """What to tell the user after an interruption."""


async def run_job(
    job: Job,
    connect: Callable[[Callable[[RetryEvent], None]], IdeogramClient],
    stop: asyncio.Event,
    *,
    live: bool,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> int:
    """Run ``job`` with progress and a manifest; return the exit status.

    ``connect`` builds the client around a retry hook (it may raise ``UsageError``).
    When ``stop`` is set the run is cancelled, the manifest keeps every whole line
    written so far, and the status is 130.
    """
    tally = Tally(total=len(job.sources))
    reporter = make_reporter(tally, live=live)

    def retried(_: RetryEvent) -> None:
        tally.retries += 1
        reporter.changed()

    client = connect(retried)
    tally.allowance = client.allowance
    manifest = Manifest(job.manifest, append=job.append) if job.manifest else None
    reporter.start()

    def started() -> None:
        tally.active += 1
        reporter.changed()

    def finished(outcome: Outcome) -> None:
        tally.active -= 1
        if outcome.ok:
            tally.ok += 1
        else:
            tally.failed += 1
        if manifest is not None:
            manifest.write(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
        reporter.finished(outcome)

    try:
        async with client:
            batch = run_batch(
                client,
                job.sources,
                job.request,
                job.out_dir,
                on_start=started,
                on_finish=finished,
            )
            completed = await until_stopped(batch, stop)
    finally:
        reporter.close()
        if manifest is not None:
            manifest.close()
    if not completed:
        reporter.note(
            f"Interrupted: {tally.done} of {tally.total} finished "
            f"({tally.ok} ok, {tally.failed} failed). {job.rerun_hint}"
        )
        return EXIT_INTERRUPTED
    reporter.note(tally.summary())
    reporter.note(f"Results: {job.out_dir}")
    if manifest is not None:
        reporter.note(f"Manifest: {manifest.path}")
    return EXIT_FAILED if tally.failed else EXIT_OK


async def until_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run ``work`` to its end, or cancel it once ``stop`` is set.

    Returns whether it ran to its end; its own errors are raised. Either way,
    nothing it started is left running.
    """
    task = asyncio.create_task(work)
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, waiter):
            pending.cancel()
        await asyncio.gather(task, waiter, return_exceptions=True)
    if task.cancelled():
        return False
    task.result()
    return True


def make_reporter(tally: Tally, *, live: bool) -> Reporter:
    """A live bar when ``live`` (stdout is a terminal) and rich is installed, else plain lines."""
    if live:
        try:
            from ._live import RichReporter
        except ImportError:  # rich is in the cli extra
            pass
        else:
            return RichReporter(tally)
    return PlainReporter(tally)
