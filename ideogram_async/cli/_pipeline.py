"""The command line's pipeline: upscale many files, download each result, record outcomes.

Upscales fan out through ``IdeogramClient.upscale_many`` with a window of
``client.allowance.maximum``, so every input taken up is an upscale call in flight; each
finished upscale gets a download task, so downloads overlap further upscales. At most
``client.allowance.maximum`` download tasks exist at once (the consumer waits for one to
end before starting another), so memory stays O(concurrency) however many files there
are.

A run that cannot succeed stops early (:class:`FailFast`): when the service refuses the
key, or when nothing has reached the service and a call could not connect at all.

:func:`run_job` wraps one run with its manifest, progress display and summary, and
stops it cleanly when the ``stop`` event is set (by SIGINT or SIGTERM).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import attrs

from ideogram_async import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BatchResult,
    BatchRun,
    Flavor,
    IdeogramClient,
    IdeogramError,
    ResponseFormatError,
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


# The library's hints name its Python arguments; the command line has options instead.
_OPTION_NAMES = (
    ("api_key= or IDEOGRAM_API_KEY", "IDEOGRAM_API_KEY or --api-key-file"),
    ("allowance= or requests_per_second", "--allowance"),
    ("check base_url", "check --base-url"),
)


def describe(error: BaseException) -> str:
    """An error as one line for the user: the library's message, else its type too."""
    text = " ".join(str(error).split())
    for python, option in _OPTION_NAMES:
        text = text.replace(python, option)
    if isinstance(error, IdeogramError) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class RunStopped(Exception):
    """No further image can succeed; the message says why and what to check."""


def _cannot_connect(error: BaseException) -> bool:
    """Whether ``error`` means no connection to the service could be opened at all."""
    if isinstance(error, APITimeoutError):
        return error.kind == "connect"
    return isinstance(error, APIConnectionError) and isinstance(
        error.__cause__, aiohttp.ClientConnectorError
    )


class FailFast:
    """Decides when a run must stop because every further image would fail too.

    A 401/403 stops it at once. A call that could not connect at all (refused, an
    unknown host, a connect timeout) stops it as long as nothing has reached the
    service yet; once anything has, such failures are the images' own.
    """

    def __init__(self, service: str, *, official: bool) -> None:
        self._service = service
        self._check = "the network" if official else "--base-url (or IDEOGRAM_BASE_URL)"
        self._reached = False

    def retried(self, event: RetryEvent) -> None:
        """A request failed and is retried; any failure but a connect one reached the service."""
        if not _cannot_connect(event.error):
            self._reached = True

    def reason_to_stop(self, result: BatchResult[Any]) -> str | None:
        """Why the run must stop after ``result``, or ``None`` to go on."""
        error = result.error
        if isinstance(error, AuthenticationError):
            return f"{self._service} refused the API key: {describe(error)}"
        if error is not None and _cannot_connect(error):
            if self._reached:
                return None
            cause = error.__cause__  # what the connection attempt ran into
            why = f"{type(cause).__name__}: {cause}" if cause is not None else describe(error)
            return (
                f"cannot reach the service at {self._service} ({' '.join(why.split())}). "
                f"Check {self._check}, and that the service is up"
            )
        if error is None or isinstance(error, APIError | ResponseFormatError):
            self._reached = True  # an answer (any status), or a failure after connecting
        return None


async def run_batch(
    client: IdeogramClient,
    sources: Sequence[Source],
    request: UpscaleRequest | V2Options,
    out_dir: Path,
    *,
    fail_fast: FailFast,
    on_start: Callable[[], None],
    on_answer: Callable[[bool], None],
    on_finish: Callable[[Outcome, bool], None],
) -> None:
    """Upscale every source and download its results into ``out_dir``.

    ``on_start`` is called as each input's upscale call starts (at most
    the allowance's maximum are in progress), ``on_answer(ok)`` when it has ended (its
    downloads start when ``ok``), and ``on_finish(outcome, downloaded)`` once the input
    is done. Raises :class:`RunStopped` when ``fail_fast`` says so: nothing more is
    sent, the calls in flight are cancelled, and results already paid for are still
    downloaded. Cancelling this coroutine cancels everything in progress and waits
    until it has let go.
    """

    def pulled() -> Iterator[Path]:
        for source in sources:
            on_start()
            yield source.path

    async def finish(source: Source, result: BatchResult[Any], response: Answer) -> None:
        on_finish(await _download(client, source, result, response, out_dir), True)

    stopped: str | None = None
    downloads: set[asyncio.Task[None]] = set()
    try:
        window = client.allowance.maximum
        run: BatchRun[Any] = (
            client.v2.upscale_many(pulled(), request, window=window)
            if isinstance(request, V2Options)
            else client.upscale_many(pulled(), request, window=window)
        )
        async with run:
            async for result in run:
                on_answer(result.ok)
                stopped = fail_fast.reason_to_stop(result)
                if stopped is not None:
                    break  # leaving the block cancels the calls in flight
                source = sources[result.index]
                if result.error is not None:
                    on_finish(_failed(source, result, describe(result.error)), False)
                    continue
                assert result.response is not None  # there is one whenever error is None
                if len(downloads) >= window:
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
    if stopped is not None:
        raise RunStopped(stopped)


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
    written so far, and the status is 130. A run stopped early (a refused key, an
    unreachable service) says why on stderr and returns 1.
    """
    tally = Tally(total=len(job.sources))
    reporter = make_reporter(tally, live=live)
    fail_fast: FailFast | None = None

    def retried(event: RetryEvent) -> None:
        tally.retries += 1
        if fail_fast is not None:
            fail_fast.retried(event)
        reporter.changed()

    client = connect(retried)
    fail_fast = FailFast(client.base_url, official=client.flavor is Flavor.OFFICIAL)
    tally.allowance = client.allowance
    manifest = Manifest(job.manifest, append=job.append) if job.manifest else None
    reporter.start()

    def started() -> None:
        tally.in_flight += 1
        reporter.changed()

    def answered(ok: bool) -> None:
        tally.in_flight -= 1
        if ok:
            tally.downloading += 1
        reporter.changed()

    def finished(outcome: Outcome, downloaded: bool) -> None:
        if downloaded:
            tally.downloading -= 1
        if outcome.ok:
            tally.ok += 1
        else:
            tally.failed += 1
        if manifest is not None:
            manifest.write(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
        reporter.finished(outcome)

    stopped: RunStopped | None = None
    try:
        async with client:
            batch = run_batch(
                client,
                job.sources,
                job.request,
                job.out_dir,
                fail_fast=fail_fast,
                on_start=started,
                on_answer=answered,
                on_finish=finished,
            )
            completed = await until_stopped(batch, stop)
    except RunStopped as exc:
        stopped, completed = exc, True
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
    if stopped is not None:
        print(
            f"Stopped: {stopped}. Nothing more was sent: {tally.ok} of {tally.total} "
            f"image(s) upscaled, {tally.total - tally.done} not done. {job.rerun_hint}",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_FAILED
    reporter.note(tally.summary())
    if tally.ok:
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
