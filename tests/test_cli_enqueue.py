"""``enqueue`` and ``status`` in this process, against a real ``redis-server``.

The commands run through :func:`tests.test_cli.run_main` (or, where a test stops the wait
itself, :func:`enqueue_job` in the test's loop), so mutation testing sees their code. The
Redis of the session (``redis_server``) is the broker and holds the job records. A
scripted worker in the test takes each task off the broker's queue (the Redis list Celery's
transport fills) and records and announces its outcome through :class:`JobStore`, as the
real task does; one test runs the real task (:func:`run_image`) against the emulator.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import TypeVar

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from ideogram_async import IdeogramClient, UpscaleRequest
from ideogram_async.celery import PREFIX, JobStore, open_store
from ideogram_async.celery._task import ImageTask, run_image
from ideogram_async.cli._enqueue import EXIT_RUNNING, enqueue_job
from ideogram_async.cli._inputs import Source
from ideogram_async.cli._pipeline import EXIT_FAILED, EXIT_INTERRUPTED, View
from ideogram_async.limits import RedisAllowance
from ideogram_async.testing import Emulator, RedisServer, free_port

from .test_cli import KEY, Piped, cli_env, run_main, save_image

QUEUE = "celery"
"""The queue of the bundled app: a Redis list of Celery's Redis transport."""
JOB_ID = re.compile(r"[0-9a-f]{16}")
C = TypeVar("C")
W = TypeVar("W")


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    """Three small PNGs, in the order ``enqueue`` finds them."""
    return [save_image(tmp_path / "in" / f"{name}.png", (12, 8), shade=i) for i, name in
            enumerate("abc")]  # fmt: skip


@pytest_asyncio.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[JobStore]:
    """The job records in the session's Redis, as workers write them."""
    opened = open_store(redis_server.url)
    yield opened
    await opened.aclose()


async def take(url: str, count: int) -> list[ImageTask]:
    """The next ``count`` tasks sent to the broker at ``url``, taken as a worker takes them."""
    broker = aioredis.Redis.from_url(url, socket_timeout=40)
    tasks = []
    try:
        for _ in range(count):
            popped = await broker.brpop([QUEUE], timeout=30)
            assert popped is not None, "no task came within 30 s"
            envelope = json.loads(popped[1])
            args, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
            assert kwargs == {}
            tasks.append(ImageTask.from_message(args[0]))
    finally:
        await broker.aclose()
    return tasks


async def alongside(command: Awaitable[C], work: Awaitable[W], records: str) -> tuple[C, W]:
    """Run ``command`` and the scripted worker's ``work`` together.

    Should the worker fail, every image of every job in the Redis at ``records`` is
    announced failed, so that the command ends (``run_main``'s thread cannot be stopped)
    before the worker's failure is raised.
    """
    running = asyncio.ensure_future(command)
    try:
        done = await work
    except BaseException:
        raw = aioredis.Redis.from_url(records, decode_responses=True)
        try:
            async for name in raw.scan_iter(f"{PREFIX}:job:*:images"):
                for index in range(await raw.llen(name)):
                    fields = {"index": index, "outcome": "failed"}
                    await raw.xadd(name.replace(":images", ":events"), fields)  # type: ignore[arg-type]
        finally:
            await raw.aclose()
        async with asyncio.timeout(30):
            await asyncio.wait([running])
        raise
    async with asyncio.timeout(30):  # the command ends soon after the worker's last word
        return await running, done


async def xreads(url: str) -> int:
    """How many XREAD commands (event waits) the Redis at ``url`` has answered."""
    raw = aioredis.Redis.from_url(url)
    try:
        stats = await raw.info("commandstats")
    finally:
        await raw.aclose()
    calls: int = stats.get("cmdstat_xread", {}).get("calls", 0)
    return calls


async def take_now(url: str) -> bytes | None:
    """A message waiting in the broker's queue, if any."""
    broker = aioredis.Redis.from_url(url)
    try:
        popped = await broker.rpop(QUEUE)
    finally:
        await broker.aclose()
    assert popped is None or isinstance(popped, bytes)
    return popped


async def finish(
    store: JobStore,
    task: ImageTask,
    outcome: str,
    *,
    error: str = "",
    attempts: int = 1,
    seconds: float = 0.25,
    retries: int = 0,
    refused: Mapping[str, int] | None = None,
    bound: int | None = None,
    allowance: str = "",
) -> None:
    """Record ``task``'s image as a worker does when it ends ``outcome``, then announce it."""
    done = outcome != "failed"  # a skipped image was done before the job
    outputs = (str(Path(task.out_dir) / f"{task.stem}.upscaled.png"),) if done else ()
    await store.write(
        task.key,
        source=task.source,
        status="ok" if done else "failed",
        error=error,
        allowance=allowance,
        outputs=outputs,
        urls=("https://images.example/1.png",) if outputs else (),
        bound=bound,
    )
    await store.add(
        task.key, attempts=attempts, seconds=seconds, retries=retries, refused=refused or {}
    )
    assert task.job is not None
    await store.announce(task.job, task.index, outcome)  # type: ignore[arg-type]


def env_with(**settings: str) -> dict[str, str]:
    return {**cli_env(), **settings}


# -- enqueue ---------------------------------------------------------------------------


async def test_enqueue_sends_one_task_per_image_in_order_and_says_how_to_follow_the_job(
    redis_server: RedisServer,
    store: JobStore,
    images: list[Path],
    tmp_path: Path,
) -> None:
    """Without --wait: one line naming the job; the broker holds one task per image, and
    the job (in the broker's Redis: no --shared-allowance) lists their records."""
    out = tmp_path / "out"
    run = await run_main(
        "enqueue", str(tmp_path / "in"), "-o", str(out), "--broker", redis_server.url,
        "--prompt", "crisp", "--seed", "7",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    job = run.stdout.split()[5].rstrip(".")
    assert JOB_ID.fullmatch(job), run.stdout
    assert run.stdout == (
        f"Enqueued 3 image(s) as job {job}. Follow it with: ideogram-async status {job}\n"
    )
    assert run.stderr == ""
    tasks = await take(redis_server.url, 3)
    assert [(t.job, t.index, t.stem) for t in tasks] == [
        (job, 0, "a"),
        (job, 1, "b"),
        (job, 2, "c"),
    ]
    assert [Path(t.source) for t in tasks] == [p.resolve() for p in images]
    assert {t.out_dir for t in tasks} == {str(out.resolve())}
    assert {t.request() for t in tasks} == {UpscaleRequest(prompt="crisp", seed=7)}
    found = await store.job(job)
    assert found is not None
    info, keys = found
    assert keys == [t.key for t in tasks]
    assert (info["total"], info["out_dir"]) == ("3", str(out.resolve()))


async def test_enqueue_takes_the_broker_from_the_environment(
    redis_server: RedisServer, store: JobStore, images: list[Path], tmp_path: Path
) -> None:
    env = env_with(IDEOGRAM_BROKER_URL=redis_server.url)
    run = await run_main("enqueue", str(images[0]), "-o", str(tmp_path / "out"), env=env)
    assert run.returncode == 0, run.stderr
    [task] = await take(redis_server.url, 1)
    assert run.stdout.startswith(f"Enqueued 1 image(s) as job {task.job}. ")
    assert await store.job(str(task.job)) is not None


async def test_each_enqueue_goes_to_its_own_broker_in_one_process(
    redis_server: RedisServer, store: JobStore, images: list[Path], tmp_path: Path
) -> None:
    """A program that enqueues to one broker and then another reaches each: the bundled
    app sends over a connection to the broker of the call, not a pool kept from the
    first one."""
    with RedisServer() as other:
        for broker, image in ((redis_server.url, images[0]), (other.url, images[1])):
            env = env_with(IDEOGRAM_BROKER_URL=broker, IDEOGRAM_SHARED_ALLOWANCE=redis_server.url)
            run = await run_main("enqueue", str(image), "-o", str(tmp_path / "out"), env=env)
            assert run.returncode == 0, run.stderr
            [task] = await take(broker, 1)
            assert Path(task.source) == image.resolve()
            assert await store.job(str(task.job)) is not None
        assert await take_now(redis_server.url) is None


async def test_wait_shows_each_image_as_it_ends_then_the_summary_of_what_workers_recorded(
    redis_server: RedisServer, store: JobStore, images: list[Path], tmp_path: Path
) -> None:
    """Each image counts once (its first outcome; events of no image of the job are
    passed over); the summary adds up the workers' records: retries, refusals by reason,
    the allowance the service named and the key of the shared allowance."""
    out, summary = tmp_path / "out", tmp_path / "summary.json"
    host = redis_server.url.removeprefix("redis://")

    async def work() -> None:
        a, b, c = await take(redis_server.url, 3)
        job = str(a.job)
        await store.announce(job, 3, "ok")  # no such image
        await store.announce(job, -1, "failed")
        await finish(store, a, "ok", attempts=2, seconds=1.5, retries=1,
                     refused={"inflight_limit": 2}, bound=4, allowance="team")  # fmt: skip
        await store.announce(job, 0, "failed")  # a later delivery: the first outcome counts
        await finish(store, b, "failed", error="the service refused it (400)", retries=2,
                     refused={"inflight_limit": 1, "unknown": 3})  # fmt: skip
        await finish(store, c, "failed", attempts=3, seconds=0.5)  # no error recorded

    run, _ = await alongside(
        run_main(
            "enqueue",
            str(tmp_path / "in"),
            "-o",
            str(out),
            "--broker",
            redis_server.url,
            "--wait",
            "--progress",
            "plain",
            "--json",
            str(summary),
        ),
        work(),
        redis_server.url,
    )
    assert run.returncode == EXIT_FAILED, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    job = lines[0].split()[5].rstrip(";")
    assert lines[0] == f"Enqueued 3 image(s) as job {job}; waiting for them."
    shown = str(tmp_path / "in")
    assert lines[1:4] == [
        f"[1/3] ok {shown}/a.png -> {out.resolve()}/a.upscaled.png (2 attempts, 1.50s)",
        f"[2/3] FAILED {shown}/b.png: the service refused it (400) (1 attempt, 0.25s)",
        f"[3/3] FAILED {shown}/c.png: failed (3 attempts, 0.50s)",
    ]
    assert re.fullmatch(
        r"Done: 1 of 3 image\(s\) upscaled, 2 failed in \d+\.\ds \(.*\)\.", lines[4]
    )
    assert lines[5:] == [
        "Requests: 3 request(s) retried; 6 refused by the service "
        "(429: 3 inflight_limit, 3 unknown).",
        f"Allowance: shared through Redis at {host}, key 'team'; the service named an "
        "allowance of 4, the bound settled at 4 image(s) in flight.",
        "Failed:",
        f"  {shown}/b.png: the service refused it (400)",
        f"  {shown}/c.png: failed",
        f"Summary: {summary}",
    ]
    assert run.stderr == ""
    written = json.loads(summary.read_text())
    assert (written["total"], written["succeeded"], written["failed"]) == (3, 1, 2)
    assert (written["skipped"], written["retries"]) == (0, 3)
    assert written["refused"] == {"inflight_limit": 3, "unknown": 3}
    assert written["allowance"] == {"shared": {"host": host, "key": "team"}, "bound": 4}
    assert [f["error"] for f in written["failures"]] == ["the service refused it (400)", "failed"]


async def test_wait_counts_images_done_before_the_job_as_skipped_and_quiet_shows_the_summary(
    redis_server: RedisServer, store: JobStore, images: list[Path], tmp_path: Path
) -> None:
    """--quiet: no line before the summary and no "Summary:" line; every image done: 0.
    Without a key or a number recorded, the summary says so."""
    summary = tmp_path / "summary.json"

    async def work() -> None:
        a, b, c = await take(redis_server.url, 3)
        await finish(store, a, "skipped")
        await finish(store, b, "ok")
        await finish(store, c, "skipped")

    run, _ = await alongside(
        run_main(
            "enqueue",
            str(tmp_path / "in"),
            "-o",
            str(tmp_path / "out"),
            "--wait",
            "--quiet",
            "--broker",
            redis_server.url,
            "--json",
            str(summary),
        ),
        work(),
        redis_server.url,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    host = redis_server.url.removeprefix("redis://")
    lines = run.stdout.splitlines()
    assert re.fullmatch(
        r"Done: 1 of 3 image\(s\) upscaled, 2 skipped in \d+\.\ds \(.*\)\.", lines[0]
    )
    assert lines[1:] == [
        "Requests: 0 request(s) retried; none refused by the service.",
        f"Allowance: shared through Redis at {host}, key 'unknown'; the service never "
        "named the organization's allowance.",
    ]
    written = json.loads(summary.read_text())
    assert (written["succeeded"], written["skipped"], written["failed"]) == (1, 2, 0)
    assert written["allowance"] == {"shared": {"host": host, "key": "unknown"}, "bound": None}


async def test_wait_runs_the_real_task_that_a_worker_takes_off_the_broker(
    redis_server: RedisServer, redis_key: str, store: JobStore, images: list[Path], tmp_path: Path
) -> None:
    """End to end in this process: what the command sends, the real task upscales."""
    out = tmp_path / "out"

    async def work() -> None:
        allowance = RedisAllowance(redis_server.url, 2, key=redis_key)
        try:
            async with (
                Emulator(api_key=KEY) as emulator,
                IdeogramClient(
                    api_key=KEY, base_url=emulator.base_url, allowance=allowance
                ) as client,
            ):
                for task in await take(redis_server.url, 3):
                    await run_image(client, store, task, lease=5, allowance_key=redis_key)
        finally:
            await allowance.aclose()

    run, _ = await alongside(
        run_main(
            "enqueue",
            str(tmp_path / "in"),
            "-o",
            str(out),
            "--wait",
            "--broker",
            redis_server.url,
        ),
        work(),
        redis_server.url,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"{s}.upscaled.png" for s in "abc"]
    assert "Done: 3 of 3 image(s) upscaled in " in run.stdout
    assert f"key '{redis_key}'" in run.stdout


async def test_wait_sends_again_after_a_silence_the_images_no_worker_holds(
    redis_server: RedisServer, store: JobStore, images: list[Path], tmp_path: Path
) -> None:
    """Image c's message is lost, a and b are held (claimed) by a slow worker: after twice
    the broker's redelivery time (here 11 s: visibility 4.5 s, checked every 1 s) without
    news from the start, c alone is sent again, and the job ends."""
    env = env_with(IDEOGRAM_VISIBILITY_TIMEOUT="4.5")
    reads = await xreads(redis_server.url)

    async def work() -> list[ImageTask]:
        a, b, c = await take(redis_server.url, 3)
        for held in (a, b):
            assert await store.claim(held.key, "slow-worker", 60)
        [again] = await take(redis_server.url, 1)  # c's message was lost: sent again
        # A silence over one wait for events (2 s), far under 11 s: nothing is sent again.
        await asyncio.sleep(3)
        for task in (a, again, b):
            await finish(store, task, "ok")
            await store.release(task.key, "slow-worker")
        return [c, again]

    run, (lost, again) = await alongside(
        run_main(
            "enqueue",
            str(tmp_path / "in"),
            "-o",
            str(tmp_path / "out"),
            "--wait",
            "--broker",
            redis_server.url,
            env=env,
        ),
        work(),
        redis_server.url,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert again == lost
    note = (
        "No image finished for 11s: sent the 1 that no worker holds again "
        "(a worker may have died with them)."
    )
    assert run.stdout.splitlines()[1] == note
    assert run.stdout.count("No image finished") == 1
    assert await take_now(redis_server.url) is None  # and no other message was sent
    assert "Done: 3 of 3 image(s) upscaled in " in run.stdout
    # Each wait for events blocks up to 2 s in Redis: about 8 in 15 s, no busy loop.
    assert await xreads(redis_server.url) - reads < 30


class Tap(Piped):
    """Standard output into a pipe (:class:`Piped`) that calls ``then`` when a line
    starting with ``when`` is printed, and keeps what the pipe had shown by then."""

    def __init__(self, when: str, then: Callable[[], object]) -> None:
        super().__init__()
        self._when, self._then = when, then
        self.shown_before = ""

    def write(self, text: str) -> int:
        written = super().write(text)
        if text.startswith(self._when):
            self.shown_before = self.seen
            self._then()
        return written


def sources_of(images: list[Path]) -> list[Source]:
    return [Source(path=path.resolve(), shown=str(path)) for path in images]


async def test_an_interrupted_wait_shows_the_summary_so_far_and_leaves_the_job_to_the_workers(
    redis_server: RedisServer, store: JobStore, images: list[Path], tmp_path: Path
) -> None:
    """Stopped once the first image shows (130): what finished (a skipped one included)
    is told, and the summary counts what had not as skipped."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Set on the loop between steps, as the command's signal handlers set it.
    out, err = Tap("[1/", lambda: loop.call_soon(stop.set)), io.StringIO()
    summary = tmp_path / "summary.json"

    async def work() -> None:
        a, b, _ = await take(redis_server.url, 3)  # the last image is still being worked on
        await finish(store, a, "skipped")
        await finish(store, b, "ok")

    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code, _ = await alongside(
            enqueue_job(
                sources_of(images),
                tmp_path / "out",
                UpscaleRequest(),
                broker=redis_server.url,
                redis=None,
                wait=True,
                view=View(progress="plain", json=summary),
                stop=stop,
            ),
            work(),
            redis_server.url,
        )
    assert code == EXIT_INTERRUPTED
    lines = out.getvalue().splitlines()
    job = lines[0].split()[5].rstrip(";")
    assert out.shown_before == lines[0] + "\n"  # flushed before the wait began
    assert lines[2] == (
        "Interrupted: 2 of 3 finished. The workers go on with the job; follow it with: "
        f"ideogram-async status {job}"
    )
    assert lines[3].startswith("Done: 1 of 3 image(s) upscaled, 2 skipped in ")
    assert lines[-1] == f"Summary: {summary}"
    assert json.loads(summary.read_text())["skipped"] == 2
    assert err.getvalue() == ""


async def test_a_wait_that_loses_redis_says_so_and_fails(
    redis_server: RedisServer, own_redis_server: RedisServer, images: list[Path], tmp_path: Path
) -> None:
    """The records' Redis stops answering during the wait: the error and how to follow
    the job on stderr, the summary so far on stdout, exit 1."""
    shared = own_redis_server.url
    out, err = Tap("[1/", own_redis_server.stop), io.StringIO()
    records = open_store(shared)

    async def work() -> None:
        a, _, _ = await take(redis_server.url, 3)
        await finish(records, a, "ok")

    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code, _ = await alongside(
                enqueue_job(
                    sources_of(images),
                    tmp_path / "out",
                    UpscaleRequest(),
                    broker=redis_server.url,
                    redis=shared,
                    wait=True,
                    view=View(progress="plain", quiet=False),
                    stop=asyncio.Event(),
                ),
                work(),
                shared,
            )
    finally:
        await records.aclose()
    assert code == EXIT_FAILED
    lines = out.getvalue().splitlines()
    job = lines[0].split()[5].rstrip(";")
    assert lines[2].startswith("Done: 1 of 3 image(s) upscaled, 2 skipped in ")
    assert "Interrupted" not in out.getvalue()
    [said] = err.getvalue().splitlines()
    assert said.startswith(
        "Stopped waiting: the job records in Redis at "
        f"{shared} could not be read or written (ConnectionError: "
    )
    assert said.endswith(
        "check that Redis is up. The workers go on with the job; follow it with: "
        f"ideogram-async status {job}"
    )


async def test_enqueue_names_a_broker_it_cannot_reach_without_its_password(
    redis_server: RedisServer,
    store: JobStore,
    images: list[Path],
    tmp_path: Path,
) -> None:
    """The job's records are written (their Redis answers) but no task can be sent."""
    port = free_port()
    run = await run_main(
        "enqueue", str(images[0]), "-o", str(tmp_path / "out"),
        "--broker", f"redis://:pw-s3cret@127.0.0.1:{port}/0",
        "--shared-allowance", redis_server.url,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.startswith(
        "ideogram-async enqueue: error: cannot send the tasks to the broker at "
        f"redis://:***@127.0.0.1:{port}/0 ("
    )
    assert run.stderr.endswith("); check --broker (or IDEOGRAM_BROKER_URL)\n")
    assert f"(OperationalError: Error 111 connecting to 127.0.0.1:{port}. " in run.stderr
    assert ".)" not in run.stderr
    assert "pw-s3cret" not in run.stderr
    assert not (tmp_path / "out").exists()


# -- status -----------------------------------------------------------------------------


async def make_job(
    redis_server: RedisServer, store: JobStore, images: list[Path], tmp_path: Path,
    events: list[tuple[int, int, str]], *, created: float | None,
) -> tuple[str, list[ImageTask]]:  # fmt: skip
    """A job of ``images`` whose stream holds ``events``: (time in ms, index, outcome)."""
    job = f"status-{free_port()}-{len(events)}"
    tasks = [
        ImageTask.of(path, tmp_path / "out", job=job, index=index)
        for index, path in enumerate(images)
    ]
    await store.create_job(job, [task.key for task in tasks], str(tmp_path / "out"))
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        name = f"{PREFIX}:job:{job}"
        if created is None:
            await raw.hdel(name, "created")
        else:
            await raw.hset(name, "created", str(created))
        for number, (ms, index, outcome) in enumerate(events):
            await raw.xadd(f"{name}:events", {"index": index, "outcome": outcome},
                           id=f"{ms}-{number}")  # fmt: skip
    finally:
        await raw.aclose()
    return job, tasks


T0 = 1_700_000_000_000
"""A time in ms (2023), long before the tests run."""


async def test_status_of_a_job_under_way_counts_the_rest_as_not_yet_and_exits_3(
    redis_server: RedisServer, store: JobStore, images: list[Path], tmp_path: Path
) -> None:
    created = time.time() - 100
    job, (a, b, _) = await make_job(
        redis_server, store, images, tmp_path, [(T0, 0, "ok"), (T0 + 5, 1, "skipped")],
        created=created,
    )  # fmt: skip
    await store.write(a.key, source=a.source, status="ok", allowance="team")
    await store.add(a.key, attempts=1, seconds=1.0, retries=2, refused={"unknown": 1})
    await store.write(b.key, source=b.source, status="ok")
    summary = tmp_path / "status.json"
    run = await run_main(
        "status", job, "--shared-allowance", redis_server.url, "--json", str(summary)
    )
    assert run.returncode == EXIT_RUNNING, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == f"Job {job}: 2 of 3 image(s) finished, 1 not yet."
    assert re.fullmatch(
        r"Done: 1 of 3 image\(s\) upscaled, 1 skipped in 1\d\d\.\ds \(.*\)\.", lines[1]
    )
    assert lines[2] == "Requests: 2 request(s) retried; 1 refused by the service (429: 1 unknown)."
    host = redis_server.url.removeprefix("redis://")
    assert lines[3] == (
        f"Allowance: shared through Redis at {host}, key 'team'; the service never named "
        "the organization's allowance."
    )
    assert len(lines) == 4
    written = json.loads(summary.read_text())
    assert (written["total"], written["succeeded"], written["skipped"]) == (3, 1, 1)
    assert 100 <= written["seconds"] <= time.time() - created
    assert written["allowance"]["shared"] == {"host": host, "key": "team"}


async def test_status_of_a_finished_job_lists_its_failures_in_order_and_exits_1(
    redis_server: RedisServer, store: JobStore, images: list[Path], tmp_path: Path
) -> None:
    """The time is from the job's creation to its last event; an image's first event
    counts; a failed image without a record is named by its record's key."""
    job, (a, b, c) = await make_job(
        redis_server, store, images, tmp_path,
        [(T0, 2, "failed"), (T0 + 10, 1, "failed"), (T0 + 20, 1, "ok"), (T0 + 30_000, 0, "ok")],
        created=T0 / 1000 - 12,
    )  # fmt: skip
    await store.write(a.key, source=a.source, status="ok", bound=3)
    await store.write(b.key, source=b.source, status="failed", error="too big")
    run = await run_main("status", job, "--shared-allowance", redis_server.url)
    assert run.returncode == EXIT_FAILED, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == f"Job {job}: 3 of 3 image(s) finished, 0 not yet."
    assert lines[1] == "Done: 1 of 3 image(s) upscaled, 2 failed in 42.0s (0.0 images/s)."
    assert "the service named an allowance of 3, the bound settled at 3" in lines[3]
    assert lines[4:] == ["Failed:", f"  {b.source}: too big", f"  {c.key}: failed"]


async def test_status_of_a_job_done_exits_0_and_without_its_creation_time_shows_none(
    redis_server: RedisServer, store: JobStore, images: list[Path], tmp_path: Path
) -> None:
    job, _ = await make_job(
        redis_server, store, images, tmp_path,
        [(T0, 0, "ok"), (T0, 1, "skipped"), (T0 + 1, 2, "skipped")], created=None,
    )  # fmt: skip
    run = await run_main("status", job, "--shared-allowance", redis_server.url)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[:2] == [
        f"Job {job}: 3 of 3 image(s) finished, 0 not yet.",
        "Done: 1 of 3 image(s) upscaled, 2 skipped in 0.0s.",
    ]
    pending, _ = await make_job(
        redis_server, store, images, tmp_path, [(T0, 0, "ok")], created=None
    )
    run = await run_main("status", pending, "--shared-allowance", redis_server.url)
    assert run.returncode == EXIT_RUNNING
    assert "Done: 1 of 3 image(s) upscaled in 0.0s." in run.stdout


async def test_status_of_an_unknown_job_names_the_redis_it_looked_in(
    redis_server: RedisServer,
) -> None:
    """Without --shared-allowance, the records are looked for in the broker's Redis
    (--broker, else IDEOGRAM_BROKER_URL)."""
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    hint = "check the id (enqueue printed it) and --shared-allowance (jobs are kept 7 days)\n"
    for args, env in [
        (["--broker", redis_server.url], cli_env()),
        ([], env_with(IDEOGRAM_BROKER_URL=redis_server.url)),
        (["--broker", nowhere, "--shared-allowance", redis_server.url], cli_env()),
    ]:
        run = await run_main("status", "0123abcd", *args, env=env)
        assert run.returncode == 2
        assert run.stderr == (
            f"ideogram-async status: error: no job '0123abcd' in Redis at {redis_server.url}; "
            + hint
        )


async def test_status_needs_the_redis_of_the_records_when_the_broker_is_not_redis() -> None:
    run = await run_main("status", "0123abcd", "--broker", "amqp://user:pw-s3cret@mq//")
    assert run.returncode == 2
    assert run.stderr.startswith(
        "ideogram-async status: error: the broker amqp://user:***@mq// is not Redis; "
        "set IDEOGRAM_SHARED_ALLOWANCE"
    )


async def test_without_celery_enqueue_and_status_say_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "ideogram_async.celery", None)  # import fails
    run = await run_main("status", "0123abcd")
    assert (run.returncode, run.stderr) == (
        2,
        "ideogram-async status: error: enqueue and status need Celery: "
        "pip install 'ideogram-async[celery]'\n",
    )


async def test_a_wrong_celery_setting_in_the_environment_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bundled app reads its settings on import: a wrong one stops the command."""
    monkeypatch.delitem(sys.modules, "ideogram_async.celery")  # imported again, and fails
    run = await run_main("status", "0123abcd", env=env_with(IDEOGRAM_VISIBILITY_TIMEOUT="0"))
    assert (run.returncode, run.stderr) == (
        2,
        "ideogram-async status: error: IDEOGRAM_VISIBILITY_TIMEOUT must be a number of "
        "seconds >= 0.1, got '0'\n",
    )
    assert "ideogram_async.celery" not in sys.modules


async def test_the_live_display_of_a_wait_says_the_upscales_run_on_workers(
    redis_server: RedisServer, store: JobStore, images: list[Path], tmp_path: Path
) -> None:
    """It shows what finished, not what is in flight or downloading: that is the
    workers' to know."""

    async def work() -> None:
        for task in await take(redis_server.url, 3):
            await finish(store, task, "ok")

    run, _ = await alongside(
        run_main(
            "enqueue",
            str(tmp_path / "in"),
            "-o",
            str(tmp_path / "out"),
            "--wait",
            "--progress",
            "rich",
            "--broker",
            redis_server.url,
            env=env_with(COLUMNS="200"),  # wide enough for every field
        ),
        work(),
        redis_server.url,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Upscaling on workers" in run.stdout
    assert "in flight" not in run.stdout  # the workers' calls are not seen from here
    assert "downloading" not in run.stdout
