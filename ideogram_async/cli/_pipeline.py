"""The command line's pipeline: upscale many files, download each result, record outcomes.

Upscales fan out through ``IdeogramClient.upscale_many`` with a window of
``client.allowance.maximum``, so every input taken up is an upscale call in flight; each
finished upscale is recorded as paid for (its result URLs) and then gets a download
task, so downloads overlap further upscales. At most
``client.allowance.maximum`` download tasks exist at once (the consumer waits for one to
end before starting another), so memory stays O(concurrency) however many files there
are.

A run that cannot succeed stops early (:class:`FailFast`): when the service refuses the
key, or when nothing has reached the service and a call could not connect at all. A
write refused for want of room (:class:`Halt`) stops it from sending anything new; the
calls already sent finish and are recorded.

:func:`run_job` wraps one run with its manifest, progress display and summary, and
stops it cleanly when the ``stop`` event is set (by SIGINT or SIGTERM: the upscale
calls already sent are let finish and recorded, unless it is set twice); a resumed run
first downloads the results its manifest records as paid for.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from ideogram_async import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BatchResult,
    BatchRun,
    Budget,
    BudgetExceededError,
    Flavor,
    IdeogramClient,
    IdeogramError,
    ResponseFormatError,
    RetryEvent,
    UpscaleJob,
    UpscaleRequest,
    V2Options,
)
from ideogram_async.limits.budget import usd_text

from ._downloads import Saved, paid_urls, refused_folder, save, save_recorded
from ._inputs import Source
from ._manifest import Outcome, settings_of, text, utc_now
from ._manifest_io import Manifest
from ._progress import AttemptLog, PlainReporter, Reporter, SilentReporter, Tally
from ._resume import Recorded
from ._summary import Failure, SharedAt, render, write_json

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


# The library's hints name its Python arguments; the command line has options instead.
_OPTION_NAMES = (
    ("api_key= or IDEOGRAM_API_KEY", "IDEOGRAM_API_KEY or --api-key-file"),
    ("allowance= or requests_per_second", "--allowance"),
    ("check base_url", "check --base-url"),
    ("raise RetryPolicy.deadline", "raise --deadline"),
    ("(Timeouts.attempt)", "(--timeout)"),
)


def describe(error: BaseException) -> str:
    """An error as one line for the user: the library's message, else its type too.

    A file name's bytes that are not UTF-8 show as U+FFFD.
    """
    line = " ".join(text(str(error)).split())
    for python, option in _OPTION_NAMES:
        line = line.replace(python, option)
    if isinstance(error, IdeogramError) and line:
        return line
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


class RunStopped(Exception):
    """No further image can succeed; the message says why and what to check."""


def _cannot_connect(error: BaseException | None) -> str | None:
    """Why ``error`` means no connection to the service could be opened at all, or ``None``.

    Told by the error's attributes: a connect timeout, or a host that refused the
    connection or whose name did not resolve (``APIConnectionError.unreachable``).
    """
    if isinstance(error, APITimeoutError):
        return "no connection within the connect timeout" if error.kind == "connect" else None
    if isinstance(error, APIConnectionError) and error.unreachable:
        return "the host refused the connection or its name does not resolve"
    return None


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
        self.key_refused = False
        """Whether the service refused the API key: only another key can help."""

    def retried(self, event: RetryEvent) -> None:
        """A request failed and is retried; any failure but a connect one reached the service."""
        if _cannot_connect(event.error) is None:
            self._reached = True

    def reason_to_stop(self, result: BatchResult[Any]) -> str | None:
        """Why the run must stop after ``result``, or ``None`` to go on."""
        error = result.error
        if isinstance(error, AuthenticationError):
            self.key_refused = True
            return f"{self._service} refused the API key: {describe(error)}"
        why = _cannot_connect(error)
        if why is not None:
            if self._reached:
                return None
            return (
                f"cannot reach the service at {self._service} ({why}; "
                f"{result.attempts} attempt(s) in {result.elapsed:.1f}s). "
                f"Check {self._check}, and that the service is up"
            )
        if error is None or isinstance(error, APIError | ResponseFormatError):
            self._reached = True  # an answer (any status or body), or a failure after connecting
        return None


class Halt:
    """Why a run must stop sending (a refused write, an interrupt), once it must.

    Downloads registered with :meth:`abandonable` are cancelled by :meth:`interrupt`:
    their results stay recorded with their URLs.
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self._downloads: set[asyncio.Task[None]] = set()

    def stop(self, reason: str) -> None:
        """Stop the run for ``reason`` (the first reason given is kept)."""
        if self.reason is None:
            self.reason = reason

    def interrupt(self) -> None:
        """Stop the run and cancel its downloads (Ctrl-C or SIGTERM)."""
        self.stop("interrupted")
        for task in list(self._downloads):
            task.cancel()

    def abandonable(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        """Register a download that :meth:`interrupt` cancels; return it."""
        self._downloads.add(task)
        task.add_done_callback(self._downloads.discard)
        return task


async def run_batch(
    client: IdeogramClient,
    sources: Sequence[Source],
    request: UpscaleRequest | V2Options,
    out_dir: Path,
    *,
    fail_fast: FailFast,
    halt: Halt,
    budget: Budget | None = None,
    on_start: Callable[[int], None],
    on_answer: Callable[[BatchResult[Any]], None],
    on_paid: Callable[[Outcome, bool], None],
    on_finish: Callable[[Outcome, bool], None],
) -> None:
    """Upscale every source and download its results into ``out_dir``.

    ``on_start(index)`` is called as each input's upscale call starts (at most
    the allowance's maximum are in progress), ``on_answer(result)`` when it has ended (its
    downloads start when ``result.ok``), ``on_paid(outcome, downloading)`` as soon as
    an upscale's result URLs are known, before anything is downloaded, and
    ``on_finish(outcome, downloaded)`` once the input is done. Raises
    :class:`RunStopped` when ``fail_fast`` says so: nothing more is sent, the calls
    in flight are cancelled, and results already paid for are still downloaded. Once
    ``halt`` is set (a write was refused), no input is taken up and no download
    started: the calls already sent run to their end and their results are passed to
    ``on_paid`` with ``downloading`` false. ``budget`` (v2) is what the upscales may
    spend: once an image would pass it, that image and every later one are not sent
    (nor finished), and :class:`RunStopped` is raised after the calls already under
    way have ended. Cancelling this coroutine cancels everything in progress and
    waits until it has let go.
    """

    def pulled() -> Iterator[UpscaleJob]:
        for index, source in enumerate(sources):
            if halt.reason is not None:
                return
            on_start(index)
            yield UpscaleJob(source.path)

    async def finish(source: Source, paid: Outcome, resolutions: tuple[str | None, ...]) -> None:
        saved = await save(
            client,
            source,
            paid.urls,
            out_dir,
            describe=describe,
            attempts=paid.attempts,
            seconds=paid.seconds,
            upscaled_at=paid.upscaled_at,
            resolutions=resolutions,
        )
        on_finish(saved.outcome, True)
        if saved.refused is not None:
            halt.stop(refused_folder(out_dir, saved.refused))

    stopped: str | None = None
    over_budget: BudgetExceededError | None = None
    downloads: set[asyncio.Task[None]] = set()
    try:
        window = client.allowance.maximum
        run: BatchRun[Any] = (
            client.v2.upscale_many(pulled(), request, window=window, max_usd=budget)
            if isinstance(request, V2Options)
            else client.upscale_many(pulled(), request, window=window)
        )
        async with run:
            async for result in run:
                on_answer(result)
                stopped = fail_fast.reason_to_stop(result)
                if stopped is not None:
                    break  # leaving the block cancels the calls in flight
                if isinstance(result.error, BudgetExceededError):
                    over_budget = over_budget or result.error
                    continue  # not sent: not done, so --resume does it
                source = sources[result.index]
                if result.error is not None:
                    on_finish(_failed(source, result, describe(result.error)), False)
                    continue
                assert result.response is not None  # there is one whenever error is None
                urls, nothing = paid_urls(result.response)
                if nothing is not None:
                    on_finish(_failed(source, result, nothing), True)
                    continue
                paid = Outcome(
                    source=source,
                    ok=False,
                    urls=urls,
                    attempts=result.attempts,
                    seconds=result.elapsed,
                    upscaled_at=utc_now(),
                )
                downloading = halt.reason is None
                on_paid(paid, downloading)  # recorded before anything is downloaded
                if not downloading:
                    continue
                if len(downloads) >= window:
                    await asyncio.wait(downloads, return_when=asyncio.FIRST_COMPLETED)
                for task in [task for task in downloads if task.done()]:
                    downloads.discard(task)
                    if not task.cancelled():  # an interrupt abandons downloads
                        task.result()  # raise a failure of on_finish at once
                resolutions = tuple(image.resolution for image in result.response.data)
                download = asyncio.create_task(finish(source, paid, resolutions))
                downloads.add(halt.abandonable(download))
        for ended in await asyncio.gather(*downloads, return_exceptions=True):
            if isinstance(ended, Exception):  # not a cancelled (abandoned) download
                raise ended
    finally:
        for task in downloads:
            task.cancel()
        await asyncio.gather(*downloads, return_exceptions=True)
    if stopped is None and over_budget is not None:
        stopped = (
            f"the --max-usd budget of {usd_text(over_budget.max_usd)} would be passed by an "
            f"image priced up to {usd_text(over_budget.needed)} "
            f"({usd_text(over_budget.spent + over_budget.reserved)} spent or under way then)"
        )
    if stopped is not None:
        raise RunStopped(stopped)


def _failed(source: Source, result: BatchResult[Any], error: str) -> Outcome:
    return Outcome(
        source=source, ok=False, error=error, attempts=result.attempts, seconds=result.elapsed
    )


@attrs.frozen(kw_only=True)
class Job:
    """What one run does: which inputs, with which options, into which folder."""

    sources: Sequence[Source]
    """The inputs to upscale."""
    request: UpscaleRequest | V2Options
    out_dir: Path
    recorded: Sequence[Recorded] = ()
    """Inputs already upscaled (``--resume``): their recorded results are downloaded first."""
    manifest: Path | None = None
    append: bool = False
    """Continue the manifest (``--resume``) instead of starting it afresh."""
    rerun_hint: str
    """What to tell the user after an interruption."""
    skipped: int = 0
    """Inputs left out before the run as already done (``--resume``), for the summary."""
    budget: Budget | None = None
    """What v2 upscales may spend (``--max-usd``); the summary shows its ``spent``."""


@attrs.frozen(kw_only=True)
class View:
    """How a run shows itself: progress, the attempt log, the summary's JSON."""

    progress: Literal["auto", "rich", "plain", "none"] = "auto"
    """``auto`` (a live display on a terminal, plain lines otherwise), ``rich``, ``plain``
    or ``none``."""
    quiet: bool = False
    """No progress and no notes: only the summary (and errors, on stderr)."""
    verbose: bool = False
    """One line per attempt on stderr."""
    json: Path | None = None
    """Where to write the summary as JSON."""
    shared: SharedAt | None = None
    """Where the shared allowance lives, for the summary (``None``: a local one)."""


def call_name(request: UpscaleRequest | V2Options, source: Source) -> str:
    """The name the client gives a call in its retry events (``upscale photo.png``)."""
    kind = request.model if isinstance(request, V2Options) else "upscale"
    return f"{kind} {source.path.name}"


async def run_job(
    job: Job,
    connect: Callable[[Callable[[RetryEvent], None]], IdeogramClient],
    stop: asyncio.Event,
    *,
    view: View,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> int:
    """Run ``job`` with progress, a manifest and a summary; return the exit status.

    ``connect`` builds the client around a retry hook (it may raise ``UsageError``).
    The recorded results of ``job`` are downloaded first (an expired one joins the
    inputs to upscale), then the inputs are upscaled. When ``stop`` is set the run
    stops (see :func:`until_drained`), the manifest keeps every whole line written so
    far, and the status is 130. A run stopped early (a refused key, an unreachable
    service, a disk or manifest that refuses writes) says why on stderr and returns 1.
    The summary is shown (and written as JSON with ``view.json``) however the run ends.
    """
    todo = len(job.sources) + len(job.recorded)
    tally = Tally(total=todo + job.skipped, skipped=job.skipped)
    reporter = make_reporter(tally, view)
    log = AttemptLog(describe) if view.verbose else None
    batch = list(job.sources)  # what is upscaled: an expired recorded result joins it
    fail_fast: FailFast | None = None

    def retried(event: RetryEvent) -> None:
        tally.retries += 1
        tally.refusals.saw(event.error)
        if fail_fast is not None:
            fail_fast.retried(event)
        if log is not None:
            log.retried(event)
        reporter.changed()

    client = connect(retried)
    fail_fast = FailFast(client.base_url, official=client.flavor is Flavor.OFFICIAL)
    tally.allowance = client.allowance
    settings = settings_of(job.request, official=client.flavor is Flavor.OFFICIAL)
    manifest = (
        Manifest(job.manifest, append=job.append, settings=settings) if job.manifest else None
    )
    halt = Halt()
    unsaved: set[Path] = set()  # inputs upscaled whose results are not saved (yet)
    reporter.start()

    def record(outcome: Outcome) -> None:
        if outcome.urls and not outcome.ok:
            unsaved.add(outcome.source.path)
        else:
            unsaved.discard(outcome.source.path)
        if manifest is not None:
            manifest.write(outcome)
            if manifest.refused is not None:
                why = manifest.refused.strerror or manifest.refused
                halt.stop(f"cannot write the manifest {manifest.path} ({why})")

    def started(index: int) -> None:
        tally.in_flight += 1
        tally.calls[index] = time.monotonic()
        if log is not None:
            log.began(call_name(job.request, batch[index]))
        reporter.changed()

    def answered(result: BatchResult[Any]) -> None:
        tally.in_flight -= 1
        tally.calls.pop(result.index, None)
        tally.refusals.saw(result.error)
        if log is not None and not isinstance(result.error, BudgetExceededError):  # not sent
            log.ended(call_name(job.request, batch[result.index]), result)
        if result.ok:
            tally.downloading += 1
        reporter.changed()

    def paid(outcome: Outcome, downloading: bool) -> None:
        if not downloading:
            tally.downloading -= 1
        record(outcome)
        reporter.changed()

    def finished(outcome: Outcome, downloaded: bool) -> None:
        if downloaded:
            tally.downloading -= 1
        if outcome.ok:
            tally.ok += 1
        else:
            tally.failed += 1
            tally.failures.append(Failure(source=outcome.source.shown, error=outcome.error or ""))
        record(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
        reporter.finished(outcome)

    def fetching() -> None:
        tally.downloading += 1
        reporter.changed()

    def fetched(saved: Saved) -> None:
        if saved.expired:  # upscaled again below: not finished
            tally.downloading -= 1
            reporter.changed()
            return
        finished(saved.outcome, True)
        if saved.refused is not None:
            halt.stop(refused_folder(job.out_dir, saved.refused))

    async def work() -> None:
        expired = await save_recorded(
            client,
            job.recorded,
            job.out_dir,
            describe=describe,
            stopped=lambda: halt.reason is not None,
            on_start=fetching,
            on_saved=fetched,
        )
        if expired:
            reporter.note(f"{len(expired)} recorded result URL(s) expired: upscaling again.")
            batch.extend(expired)
        await run_batch(
            client,
            batch,
            job.request,
            job.out_dir,
            fail_fast=fail_fast,
            halt=halt,
            budget=job.budget,
            on_start=started,
            on_answer=answered,
            on_paid=paid,
            on_finish=finished,
        )

    stopped: RunStopped | None = None
    try:
        async with client:
            completed = await until_drained(
                work(),
                stop,
                halt=halt,
                in_flight=lambda: tally.in_flight,
                note=reporter.note,
            )
    except RunStopped as exc:
        stopped, completed = exc, True
    finally:
        reporter.close()
        if manifest is not None:
            manifest.close()
        summary = tally.summary(shared=view.shared, budget=job.budget)
        if view.json is not None:
            write_json(summary, view.json)
    kept = (
        f" {len(unsaved)} image(s) already upscaled are recorded with their result URLs: "
        f"--resume downloads them without upscaling them again."
        if unsaved and manifest is not None and manifest.refused is None
        else ""
    )
    problem = manifest.problem() if manifest is not None else None
    if problem is not None:
        print(problem, file=sys.stderr)  # stderr is line-buffered: no flush needed
    reason = str(stopped) if stopped is not None else halt.reason
    if not completed:
        print(
            f"Interrupted: {tally.done} of {todo} finished "
            f"({tally.ok} ok, {tally.failed} failed).{kept} {job.rerun_hint}"
        )  # flushed by the summary's lines below
    elif reason is not None:
        hint = job.rerun_hint
        if fail_fast.key_refused:
            again = " with --resume" if manifest is not None and manifest.written else ""
            hint = (
                "The API key is what must change: set IDEOGRAM_API_KEY or --api-key-file "
                f"to a valid key, then run the command again{again}."
            )
        print(
            f"Stopped: {reason}. Nothing more was sent: {tally.ok} of {todo} "
            f"image(s) upscaled, {todo - tally.done} not done.{kept} {hint}",
            file=sys.stderr,
        )
    for line in render(summary):
        print(line, flush=True)
    if not completed:
        return EXIT_INTERRUPTED
    if reason is not None:
        return EXIT_FAILED
    if tally.ok:
        _note(view, f"Results: {job.out_dir}")
    if manifest is not None:
        _note(view, f"Manifest: {manifest.path}")
    if view.json is not None:
        _note(view, f"Summary: {view.json}")
    return EXIT_FAILED if tally.failed else EXIT_OK


def nothing_left(job: Job, view: View) -> int:
    """End a resumed run that finds every input done: say so, show and write the summary."""
    print("Nothing left to do.")  # flushed by the summary's lines below
    tally = Tally(total=job.skipped)  # nothing done: all of them count as skipped
    summary = tally.summary(shared=view.shared, budget=job.budget)
    if view.json is not None:
        write_json(summary, view.json)
    for line in render(summary):
        print(line, flush=True)
    if view.json is not None:
        _note(view, f"Summary: {view.json}")
    return EXIT_OK


def _note(view: View, message: str) -> None:
    if not view.quiet:
        print(message, flush=True)


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


async def until_drained(
    work: Coroutine[Any, Any, None],
    stop: asyncio.Event,
    *,
    halt: Halt,
    in_flight: Callable[[], int],
    note: Callable[[str], None],
) -> bool:
    """Run ``work`` (a run's upscales) to its end, or stop it once ``stop`` is set.

    At the first ``stop``, the upscale calls in flight (``in_flight()``) are let
    finish, since their results are paid for, and are recorded, while ``halt`` stops
    everything else (nothing new is sent, downloads are abandoned); a second ``stop``,
    or nothing in flight, cancels at once. Returns whether ``work`` ran to its end
    undisturbed; its own errors are raised. Nothing it started is left running.
    """
    task = asyncio.create_task(work)
    try:
        if await _ends_first(task, stop):
            task.result()
            return True
        calls = in_flight()
        if calls:
            halt.interrupt()
            note(
                f"Stopping: waiting for the {calls} upscale call(s) already sent, whose "
                f"results are paid for, to record them; interrupt again to abandon them."
            )
            stop.clear()
            if await _ends_first(task, stop) and not task.cancelled():
                with contextlib.suppress(RunStopped):  # the interrupt comes first
                    task.result()
        return False
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _ends_first(task: asyncio.Task[None], stop: asyncio.Event) -> bool:
    """Wait until ``task`` ends or ``stop`` is set; return whether ``task`` ended."""
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
    return task.done()


def make_reporter(tally: Tally, view: View) -> Reporter:
    """The progress display ``view`` asks for.

    ``auto`` draws a live display when stdout is a terminal and rich is installed,
    plain lines otherwise; ``rich`` draws it whatever stdout is (falling back to plain
    lines without rich); ``none`` and ``quiet`` show no progress.
    """
    if view.quiet or view.progress == "none":
        return SilentReporter()
    if view.progress == "rich" or (view.progress == "auto" and sys.stdout.isatty()):
        try:
            from ._live import RichReporter
        except ImportError:  # rich is in the cli extra
            pass
        else:
            return RichReporter(tally)
    return PlainReporter(tally)
