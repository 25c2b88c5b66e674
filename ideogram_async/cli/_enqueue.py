"""``ideogram-async enqueue`` and ``status``: send a job to Celery workers, and follow it.

``enqueue`` records a job in the workers' Redis and sends one task per image (see
:mod:`ideogram_async.celery`); with ``--wait`` it shows the same progress (``--progress``,
``--quiet``) and the same summary (and ``--json``) as ``upscale`` until every image is
done, with the same exit statuses. ``status ID`` tells where a job is.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from ideogram_async import IdeogramError, UpscaleRequest, V2Options

from ._inputs import Source, UsageError
from ._manifest import Outcome
from ._pipeline import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, View, make_reporter, until_stopped
from ._progress import Reporter, Tally
from ._summary import AllowanceReport, Failure, SharedAt, Summary, render, write_json

if TYPE_CHECKING:
    from ideogram_async.celery import Event, ImageRecord, JobStore


def _shown(url: str) -> str:
    from ideogram_async.celery import redacted

    return redacted(url)


__all__ = ["EXIT_RUNNING", "enqueue_job", "job_status"]

EXIT_RUNNING = 3
"""``status``: no image has failed, and some are not done yet."""

_POLL = 2.0
"""Seconds one wait for events lasts (the stop event is honoured in between)."""
_MIN_SILENCE = 10.0
"""Seconds without news, at least, before ``--wait`` sends unheld images again."""


def _urls(broker: str | None, redis: str | None) -> tuple[str, str]:
    """The broker (``--broker``, else the environment) and the workers' Redis."""
    try:
        from ideogram_async.celery import broker_url, shared_redis_url
    except ImportError:
        raise UsageError(
            "enqueue and status need Celery: pip install 'ideogram-async[celery]'"
        ) from None
    except IdeogramError as exc:  # a setting in the environment, read on import
        raise UsageError(str(exc)) from None

    broker = broker or broker_url()
    try:
        return broker, redis or shared_redis_url(broker=broker)
    except IdeogramError as exc:
        raise UsageError(str(exc)) from None


@attrs.define
class _Count:
    """A job's images as they finish: the run's tally, and what the workers recorded."""

    tally: Tally
    refused: Counter[str] = attrs.field(factory=Counter)
    reported: int | None = None
    """The allowance a 429 of the service named, as the workers recorded it."""
    allowance_key: str = ""
    """The key of the workers' shared allowance, as they recorded it."""

    def add(self, source: str, outcome: str, record: ImageRecord) -> None:
        """Count one image that finished ``outcome`` (a skip was done before the job)."""
        if outcome == "skipped":
            self.tally.skipped += 1
            return
        if outcome == "ok":
            self.tally.ok += 1
        else:
            self.tally.failed += 1
            self.tally.failures.append(Failure(source=source, error=record.error or "failed"))
        self.tally.retries += record.retries
        self.refused.update(record.refused)
        self.reported = record.bound if record.bound is not None else self.reported
        self.allowance_key = record.allowance or self.allowance_key

    def summary(self, redis: str) -> Summary:
        """The summary so far: images not finished count as skipped, as in ``upscale``."""
        shared = SharedAt.from_url(redis, self.allowance_key or "unknown")
        return attrs.evolve(
            self.tally.summary(),
            refused=dict(self.refused),
            allowance=AllowanceReport(shared=shared, bound=self.reported, reported=self.reported),
        )


async def enqueue_job(
    sources: Sequence[Source],
    out_dir: Path,
    request: UpscaleRequest | V2Options,
    *,
    broker: str | None,
    redis: str | None,
    wait: bool,
    view: View,
    stop: asyncio.Event,
) -> int:
    """Send one task per source; with ``wait``, follow them to the end. The exit status."""
    broker, redis = _urls(broker, redis)
    from ideogram_async.celery import (
        app,
        enqueue,
        open_store,
        redelivery_seconds,
        resend,
        upscale_image,
    )

    app.conf.update(broker_url=broker)
    job = uuid.uuid4().hex[:16]
    tally = Tally(total=len(sources), remote=True)
    store = open_store(redis)
    try:
        try:
            messages = await enqueue(
                upscale_image,
                store,
                job,
                [(source.path, source.stem) for source in sources],
                out_dir,
                request,
            )
        except IdeogramError as exc:
            raise UsageError(str(exc)) from None
        except Exception as exc:  # kombu's errors when the broker cannot be reached
            raise UsageError(
                f"cannot send the tasks to the broker at {_shown(broker)} "
                f"({type(exc).__name__}: {str(exc).rstrip('.')}); "
                "check --broker (or IDEOGRAM_BROKER_URL)"
            ) from None
        if not wait:
            print(
                f"Enqueued {len(sources)} image(s) as job {job}. "
                f"Follow it with: ideogram-async status {job}",
                flush=True,
            )
            return EXIT_OK
        if not view.quiet:
            print(f"Enqueued {len(sources)} image(s) as job {job}; waiting for them.", flush=True)

        async def again(indices: list[int]) -> None:
            await resend(upscale_image, [messages[index] for index in indices])

        watch = _Watch(
            store=store,
            job=job,
            sources=sources,
            resend=again,
            silence=max(_MIN_SILENCE, 2 * redelivery_seconds()),
        )
        return await _wait(watch, _Count(tally), redis, view, stop)
    finally:
        await store.aclose()


@attrs.frozen(kw_only=True)
class _Watch:
    """What ``--wait`` follows, and how it sends again what nobody is working on."""

    store: JobStore
    job: str
    sources: Sequence[Source]
    resend: Callable[[list[int]], Awaitable[None]]
    silence: float
    """Seconds without any image finishing after which the images nobody holds are
    sent again (a worker may have died with them)."""


async def _wait(watch: _Watch, count: _Count, redis: str, view: View, stop: asyncio.Event) -> int:
    """Show the job's progress until every image is done (or ``stop`` is set).

    The summary is shown (and written as JSON with ``view.json``) however the wait ends:
    every image done (0, or 1 when some failed), interrupted (130: the workers go on),
    or Redis lost (1).
    """
    found = await watch.store.job(watch.job)
    assert found is not None  # it was just created
    keys = found[1]
    reporter = make_reporter(count.tally, view)
    lost: IdeogramError | None = None
    reporter.start()
    try:
        completed = await until_stopped(_follow(watch, keys, count, reporter), stop)
    except IdeogramError as exc:  # Redis was lost while waiting
        lost, completed = exc, True
    finally:
        reporter.close()
    summary = count.summary(redis)
    follow = f"The workers go on with the job; follow it with: ideogram-async status {watch.job}"
    if lost is not None:
        print(f"Stopped waiting: {lost}. {follow}", file=sys.stderr)  # line-buffered
    elif not completed:
        tally = count.tally
        print(f"Interrupted: {tally.done + tally.skipped} of {tally.total} finished. {follow}")
    for line in render(summary):
        print(line, flush=True)
    if view.json is not None:
        write_json(summary, view.json)
        if not view.quiet:
            print(f"Summary: {view.json}", flush=True)
    if not completed:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if lost is not None or summary.failed else EXIT_OK


async def _follow(watch: _Watch, keys: list[str], count: _Count, reporter: Reporter) -> None:
    """Take the job's events as they come; each image counts once (its first outcome).

    After ``watch.silence`` seconds without one, the unfinished images that no delivery
    holds are sent again: Celery's Redis transport can lose a message its worker was
    fetching when it was killed, and a second delivery of an image costs nothing.
    """
    after = "0"
    heard = time.monotonic()
    outcomes: set[int] = set()
    while len(outcomes) < len(keys):
        events = await watch.store.events(watch.job, after, block=_POLL)
        if events:
            heard = time.monotonic()
        elif time.monotonic() - heard > watch.silence:
            idle = [
                index
                for index, key in enumerate(keys)
                if index not in outcomes and not await watch.store.claimed(key)
            ]
            await watch.resend(idle)
            reporter.note(
                f"No image finished for {watch.silence:.0f}s: sent the {len(idle)} that "
                "no worker holds again (a worker may have died with them)."
            )
            heard = time.monotonic()
        for event in events:
            after = event.id
            if event.index in outcomes or not 0 <= event.index < len(keys):
                continue
            outcomes.add(event.index)
            record = await watch.store.record(keys[event.index])
            _show(watch.sources[event.index], event, record, count, reporter)


def _show(
    source: Source, event: Event, record: ImageRecord, count: _Count, reporter: Reporter
) -> None:
    count.add(source.shown, event.outcome, record)
    if event.outcome == "skipped":
        reporter.changed()
        return
    ok = event.outcome == "ok"
    reporter.finished(
        Outcome(
            source=source,
            ok=ok,
            outputs=tuple(Path(output) for output in record.outputs),
            error=None if ok else record.error or "failed",
            attempts=record.attempts,
            seconds=record.seconds,
        )
    )


async def job_status(
    job: str, *, broker: str | None, redis: str | None, json_path: Path | None
) -> int:
    """Print where job ``job`` is; 0 all done, 1 some failed, :data:`EXIT_RUNNING` not done."""
    _, redis = _urls(broker, redis)
    from ideogram_async.celery import open_store

    store = open_store(redis)
    try:
        found = await store.job(job)
        if found is None:
            raise UsageError(
                f"no job {job!r} in Redis at {_shown(redis)}; check the id (enqueue printed "
                "it) and --shared-allowance (jobs are kept 7 days)"
            )
        info, keys = found
        outcomes: dict[int, str] = {}
        events = await store.events(job, "0", block=None)
        for event in events:
            outcomes.setdefault(event.index, event.outcome)
        count = _Count(Tally(total=len(keys)))
        for index, outcome in sorted(outcomes.items()):
            record = await store.record(keys[index])
            count.add(record.source or keys[index], outcome, record)
    except IdeogramError as exc:  # Redis does not answer
        raise UsageError(str(exc)) from None
    finally:
        await store.aclose()
    pending = len(keys) - len(outcomes)
    # A stream id starts with the time it was added, in ms: the last one ended the job.
    ended = int(events[-1].id.partition("-")[0]) / 1000 if events and not pending else time.time()
    summary = attrs.evolve(  # the images not finished yet are pending, not skipped
        count.summary(redis),
        skipped=count.tally.skipped,
        seconds=max(0.0, ended - float(info.get("created", ended))),
    )
    print(
        f"Job {job}: {len(outcomes)} of {len(keys)} image(s) finished, {pending} not yet.",
        flush=True,
    )
    for line in render(summary):
        print(line, flush=True)
    if json_path is not None:
        write_json(summary, json_path)
    if summary.failed:
        return EXIT_FAILED
    return EXIT_RUNNING if pending else EXIT_OK
