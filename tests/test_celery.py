"""Celery workers (``ideogram_async.celery``) and ``enqueue``/``status``, with real parts.

Every test that runs workers starts its own ``redis-server`` (broker, shared allowance
and records), real ``celery worker`` processes (``--pool threads``) and the emulator in
allowance mode, in this process. The idempotency rules of one image are tested
in-process against the same real Redis and emulator, without Celery.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import attrs
import pytest
import pytest_asyncio
from PIL import Image

from ideogram_async import IdeogramClient, ValidationError
from ideogram_async.celery import (
    TASK_NAME,
    JobStore,
    WorkerSettings,
    enqueue,
    image_message,
    open_store,
    redacted,
    register,
)
from ideogram_async.celery._task import ImageBusy, ImageTask, run_image
from ideogram_async.cli import main
from ideogram_async.limits import RedisAllowance, organization_key
from ideogram_async.testing import Emulator, Fault, FaultPlan, RedisServer, free_port

from .test_cli import run_main

KEY = "sk-celery-5ecr3t-key"
"""Distinctive, so that a leak into any output is easy to spot."""
ROOT = Path(__file__).resolve().parent.parent
JSON_KEYS = {
    "total",
    "succeeded",
    "failed",
    "skipped",
    "refused",
    "retries",
    "seconds",
    "usd",
    "allowance",
    "failures",
}


def make_inputs(folder: Path, count: int) -> list[Path]:
    """``count`` distinct 16x16 PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"img{index:03d}.png"
        Image.new("RGB", (16, 16), (index % 256, index // 256, 99)).save(path)
        paths.append(path)
    return paths


def assert_one_decoding_output_each(inputs: list[Path], out: Path) -> None:
    """Every input has exactly one result in ``out``, a whole 32x32 image; nothing else."""
    files = sorted(out.iterdir())
    assert [f.name for f in files] == sorted(f"{p.stem}.upscaled.png" for p in inputs)
    for path in files:
        with Image.open(path) as image:
            image.load()
            assert image.size == (32, 32)


@attrs.frozen
class Cluster:
    """What the workers of one test are pointed at."""

    redis: RedisServer
    emulator: Emulator
    allowance: int
    logs: Path
    key: str | None = "celery-tests"
    """``IDEOGRAM_ALLOWANCE_KEY`` of the workers; ``None``: the organization's default."""

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IDEOGRAM_")}
        env.update(
            IDEOGRAM_BROKER_URL=self.redis.url,
            IDEOGRAM_ALLOWANCE=str(self.allowance),
            IDEOGRAM_BASE_URL=self.emulator.base_url,
            IDEOGRAM_API_KEY=KEY,
            IDEOGRAM_LEASE="1.5",
            IDEOGRAM_VISIBILITY_TIMEOUT="3",
            PYTHONPATH=str(ROOT),
        )
        if self.key is not None:
            env["IDEOGRAM_ALLOWANCE_KEY"] = self.key
        return env

    def worker(self, name: str, *, threads: int, app: str = "ideogram_async.celery") -> Worker:
        """Start a ``celery worker`` process (threads pool); its output goes to a log."""
        log = (self.logs / f"{name}.log").open("wb")
        command = [sys.executable, "-m", "celery", "-A", app, "worker", "--pool", "threads"]
        command += ["--concurrency", str(threads), "-n", f"{name}@%h", "--loglevel", "INFO"]
        command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        process = subprocess.Popen(
            command,
            env=self.env(),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return Worker(process, self.logs / f"{name}.log")


@attrs.frozen
class Worker:
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), killed if it takes too long."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """The workers a test starts, all stopped at its end."""
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.stop()
    for worker in started:
        assert KEY not in worker.log.read_text(errors="replace")


@pytest_asyncio.fixture
async def cluster(own_redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Cluster]:
    """A redis-server and an emulator that allows 6 images in flight, 50 ms per upscale."""
    logs = tmp_path / "logs"
    logs.mkdir()
    async with Emulator(api_key=KEY, allowance=6, latency=0.05) as emulator:
        yield Cluster(redis=own_redis_server, emulator=emulator, allowance=6, logs=logs)


async def start_cli(cluster: Cluster, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ideogram_async",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cluster.env(),
    )


async def test_a_worker_killed_mid_run_loses_no_image_and_pays_again_only_what_it_had_open(
    cluster: Cluster, workers: list[Worker], tmp_path: Path
) -> None:
    """120 images; the only worker (8 threads) is SIGKILLed while it holds the whole
    allowance of 6 on the wire, two others finish the job: one decoding output per image,
    none refused, never more than 6 in flight. Paid twice: the 6 on the wire, and any
    answer a thread had received but not yet recorded in Redis (rare: one Redis write),
    so at most 120 + 8 upscales asked for."""
    count, allowance, emulator = 120, cluster.allowance, cluster.emulator
    threads = allowance + 2
    inputs = make_inputs(tmp_path / "in", count)
    out, summary = tmp_path / "out", tmp_path / "summary.json"
    workers.append(cluster.worker("first", threads=threads))
    cli = await start_cli(
        cluster, "enqueue", str(tmp_path / "in"), "-o", str(out), "--wait", "--json", str(summary)
    )
    assert cli.stdout is not None
    lines = []
    async for line in cli.stdout:  # the plain progress lines: "[k/120] ok ..."
        lines.append(line.decode())
        if line.startswith(b"[30/"):
            break
    else:
        pytest.fail("enqueue ended before 30 images were done:\n" + "".join(lines))
    emulator.pause()
    async with asyncio.timeout(60):
        await emulator.wait_places(allowance)  # all on the first worker: the only one
    workers[0].process.send_signal(signal.SIGKILL)
    workers[0].process.wait()
    workers.extend(cluster.worker(name, threads=4) for name in ("second", "third"))
    emulator.resume()
    try:
        async with asyncio.timeout(80):
            rest, errors = await cli.communicate()
    except TimeoutError:
        cli.kill()
        logs = "".join(w.log.read_text(errors="replace")[-3000:] for w in workers)
        seen = f"{emulator.stats.requests} requests, {emulator.stats.responses_by_status}"
        pytest.fail(f"the job did not end ({seen}):\n{''.join(lines)}\n{logs}")
    lines += rest.decode().splitlines(keepends=True)
    assert cli.returncode == 0, "".join(lines) + errors.decode()
    assert KEY not in "".join(lines) + errors.decode()

    assert_one_decoding_output_each(inputs, out)
    stats = emulator.stats
    assert count + threads >= stats.requests > count  # the killed worker's were paid for
    unanswered = stats.requests - sum(stats.responses_by_status.values())
    assert unanswered <= allowance  # the ones on the wire when it was killed
    assert stats.responses_by_status[200] - count <= threads - allowance  # not yet recorded
    assert stats.rejected_over_allowance == 0
    assert stats.responses_by_status[429] == 0
    assert stats.peak_places_in_use <= allowance
    written = json.loads(summary.read_text())
    assert set(written) == JSON_KEYS
    assert (written["total"], written["succeeded"], written["failed"]) == (count, count, 0)
    assert written["skipped"] == 0  # an image the killed worker finished is this job's
    assert (written["refused"], written["failures"]) == ({}, [])
    host = cluster.redis.url.removeprefix("redis://")
    assert written["allowance"] == {"shared": {"host": host, "key": cluster.key}, "bound": None}


async def test_enqueue_without_wait_prints_the_job_and_status_follows_it(
    cluster: Cluster, workers: list[Worker], tmp_path: Path
) -> None:
    """Without workers the job waits in the broker (status: 3, all pending); once a
    worker runs it, status says done (0) and a second enqueue skips every image. The
    workers share the organization's allowance (no IDEOGRAM_ALLOWANCE_KEY)."""
    cluster = attrs.evolve(cluster, key=None)
    inputs = make_inputs(tmp_path / "in", 4)
    out = tmp_path / "out"
    # The command line runs in-process (run_main), the workers in processes of their own.
    env = cluster.env()
    cli = await run_main("enqueue", str(tmp_path / "in"), "-o", str(out), env=env)
    assert cli.returncode == 0, cli.stderr
    job = cli.stdout.split("ideogram-async status ")[1].strip()
    status = await run_main("status", job, env=env)
    assert status.returncode == 3, status.stdout + status.stderr
    assert f"Job {job}: 0 of 4 image(s) finished, 4 not yet." in status.stdout

    workers.append(cluster.worker("only", threads=2))
    summary = tmp_path / "again.json"
    again = await run_main(
        "enqueue", str(tmp_path / "in"), "-o", str(out), "--wait", "--quiet",
        "--json", str(summary), env=env,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    # --quiet: no progress and no notes, only the summary (the one upscale shows).
    assert again.stdout.startswith("Done: "), again.stdout
    assert "[1/" not in again.stdout
    assert "Enqueued" not in again.stdout
    assert json.loads(summary.read_text())["total"] == 4
    assert_one_decoding_output_each(inputs, out)
    # The second job's tasks queue behind the first's, so the first is done by now.
    status = await run_main("status", job, "--json", str(tmp_path / "s.json"), env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"Job {job}: 4 of 4 image(s) finished, 0 not yet." in status.stdout
    written = json.loads((tmp_path / "s.json").read_text())
    assert set(written) == JSON_KEYS
    assert written["succeeded"] + written["skipped"] == 4
    organization = organization_key(KEY, cluster.emulator.base_url)
    assert written["allowance"]["shared"]["key"] == organization
    assert cluster.emulator.stats.requests == 4  # each image paid for once over both jobs


async def test_wait_sends_again_an_image_whose_message_was_lost(
    cluster: Cluster, workers: list[Worker], tmp_path: Path
) -> None:
    """A message the broker lost (Celery's Redis transport can, when its worker is killed
    while fetching it): after a silence, --wait sends the image nobody holds again."""
    import redis.asyncio as aioredis

    inputs = make_inputs(tmp_path / "in", 3)
    out = tmp_path / "out"
    cli = await start_cli(cluster, "enqueue", str(tmp_path / "in"), "-o", str(out), "--wait")
    assert cli.stdout is not None
    first = await cli.stdout.readline()
    assert first.startswith(b"Enqueued 3 image(s)"), first
    broker = aioredis.Redis.from_url(cluster.redis.url)
    try:
        assert await broker.rpop("celery") is not None  # the queue of the default app
    finally:
        await broker.aclose()
    workers.append(cluster.worker("only", threads=2))
    async with asyncio.timeout(80):
        rest, errors = await cli.communicate()
    assert cli.returncode == 0, rest + errors
    assert b"sent the 1 that no worker holds again" in rest
    assert_one_decoding_output_each(inputs, out)
    assert cluster.emulator.stats.requests == 3


async def test_an_application_registers_the_task_on_its_own_celery_app(
    cluster: Cluster, workers: list[Worker], tmp_path: Path
) -> None:
    """A worker of the application's own app (tests/celery_app.py) runs the same task."""
    from tests.celery_app import app, upscale

    assert upscale.name == TASK_NAME
    assert TASK_NAME in app.tasks
    assert upscale.acks_late
    assert upscale.reject_on_worker_lost
    app.conf.update(broker_url=cluster.redis.url)
    workers.append(cluster.worker("app", threads=2, app="tests.celery_app"))
    inputs = make_inputs(tmp_path / "in", 3)
    store = open_store(cluster.redis.url)
    try:
        await enqueue(upscale, store, "own-app", [(p, p.stem) for p in inputs], tmp_path / "out")
        seen: set[int] = set()
        after = "0"
        while len(seen) < len(inputs):
            for event in await store.events("own-app", after, block=2.0):
                after = event.id
                assert event.outcome == "ok"
                seen.add(event.index)
    finally:
        await store.aclose()
    assert_one_decoding_output_each(inputs, tmp_path / "out")


# -- one image, in-process: the idempotency rules -------------------------------------


@contextlib.asynccontextmanager
async def connected(
    emulator: Emulator, redis: RedisServer, key: str
) -> AsyncIterator[tuple[IdeogramClient, JobStore]]:
    """A client of ``emulator`` with an allowance of 4 in ``redis``, and the records there."""
    allowance = RedisAllowance(redis.url, 4, key=key)
    store = open_store(redis.url)
    try:
        async with IdeogramClient(
            api_key=KEY, base_url=emulator.base_url, allowance=allowance
        ) as client:
            yield client, store
    finally:
        await allowance.aclose()
        await store.aclose()


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(api_key=KEY) as running:
        yield running


@pytest_asyncio.fixture
async def parts(
    emu: Emulator, redis_server: RedisServer, redis_key: str
) -> AsyncIterator[tuple[IdeogramClient, JobStore]]:
    async with connected(emu, redis_server, redis_key) as opened:
        yield opened


async def test_a_recorded_result_is_never_paid_for_twice(
    parts: tuple[IdeogramClient, JobStore], emu: Emulator, png_path: Path, tmp_path: Path
) -> None:
    client, store = parts
    task = ImageTask.of(png_path, tmp_path / "out")
    assert await run_image(client, store, task, lease=5) == "ok"
    record = await store.record(task.key)
    output = tmp_path / "out" / "photo.upscaled.png"
    assert record.status == "ok"
    assert record.job == ""  # done by no job's task
    assert 0 < record.seconds < 120  # the time spent on it (within this test's time limit)
    assert record.outputs == (str(output),)
    assert len(record.urls) == 1
    assert (emu.stats.requests, emu.stats.image_downloads) == (1, 1)

    assert await run_image(client, store, task, lease=5) == "skipped"  # its output exists
    assert (emu.stats.requests, emu.stats.image_downloads) == (1, 1)

    output.unlink()  # a worker died after the upscale: the recorded URL is downloaded
    leftover = output.with_name(".photo.upscaled.png.0123456789abcdef.part")
    leftover.write_bytes(b"half an image")  # what its download left behind
    assert await run_image(client, store, task, lease=5) == "ok"
    assert (emu.stats.requests, emu.stats.image_downloads) == (1, 2)
    assert sorted(p.name for p in output.parent.iterdir()) == [output.name]
    again = await store.record(task.key)
    assert again.attempts == 1  # the second delivery only downloaded
    assert again.allowance == ""  # no shared allowance was named


async def test_an_image_done_by_an_earlier_delivery_of_the_job_counts_as_its_success(
    parts: tuple[IdeogramClient, JobStore], emu: Emulator, png_path: Path, tmp_path: Path
) -> None:
    client, store = parts
    first = ImageTask.of(png_path, tmp_path / "out", job="job-1")
    assert await run_image(client, store, first, lease=5) == "ok"
    assert await run_image(client, store, first, lease=5) == "ok"  # delivered again
    later = ImageTask.of(png_path, tmp_path / "out", job="job-2")
    assert await run_image(client, store, later, lease=5) == "skipped"
    assert emu.stats.requests == 1


async def test_a_v2_model_runs_through_the_same_task(
    emu: Emulator, redis_server: RedisServer, redis_key: str, png_path: Path, tmp_path: Path
) -> None:
    from ideogram_async.v2 import TopazStandard2

    allowance = RedisAllowance(redis_server.url, 4, key=redis_key)
    store = open_store(redis_server.url)
    task = ImageTask.of(png_path, tmp_path / "out", TopazStandard2(upscale_factor="x2"))
    try:
        async with IdeogramClient(
            api_key=KEY, base_url=emu.base_url, flavor="official", allowance=allowance
        ) as client:
            assert await run_image(client, store, task, lease=5) == "ok"
    finally:
        await allowance.aclose()
        await store.aclose()
    [upload] = emu.stats.v2_uploads
    assert upload.model == "topaz-standard-2"
    assert upload.fields["upscale_factor"] == "x2"
    with Image.open(tmp_path / "out" / "photo.upscaled.png") as image:
        image.load()


async def test_the_urls_are_recorded_before_the_download(
    redis_server: RedisServer, redis_key: str, png_path: Path, tmp_path: Path
) -> None:
    """A download that fails leaves the paid result's URL recorded; the next delivery
    downloads it without a second upscale."""
    task = ImageTask.of(png_path, tmp_path / "out")
    emulator = Emulator(api_key=KEY, image_faults=FaultPlan([Fault.status(404)]))
    async with emulator, connected(emulator, redis_server, redis_key) as (client, store):
        assert await run_image(client, store, task, lease=5) == "failed"
        record = await store.record(task.key)
        assert record.status == "failed"
        assert len(record.urls) == 1
        assert record.error == (
            "download failed: HTTP 404: Not Found (injected fault) — the image URL has expired "
            "or does not exist; download results soon after upscaling"
        )
        assert await run_image(client, store, task, lease=5) == "ok"
        again = await store.record(task.key)
    assert (again.status, again.error, again.source) == ("ok", None, str(png_path))
    assert (emulator.stats.requests, emulator.stats.image_downloads) == (1, 1)
    assert (tmp_path / "out" / "photo.upscaled.png").is_file()


async def test_each_image_of_an_upscale_is_downloaded_under_its_number(
    parts: tuple[IdeogramClient, JobStore], emu: Emulator, png_path: Path, tmp_path: Path
) -> None:
    from ideogram_async import UpscaleRequest

    client, store = parts
    task = ImageTask.of(png_path, tmp_path / "out", UpscaleRequest(num_images=2))
    assert await run_image(client, store, task, lease=5) == "ok"
    record = await store.record(task.key)
    outputs = [str(tmp_path / "out" / f"photo.upscaled-{n}.png") for n in (1, 2)]
    assert list(record.outputs) == outputs
    assert len(record.urls) == 2
    for output in outputs:
        with Image.open(output) as image:
            image.load()
    assert (emu.stats.requests, emu.stats.image_downloads) == (1, 2)


async def test_the_claim_is_renewed_while_the_image_is_worked_on(
    own_redis_server: RedisServer, png_path: Path, tmp_path: Path
) -> None:
    """An upscale that takes longer than the lease: the claim is extended every third of
    it (Redis tells of each extension), so no other delivery can take the image; it is
    given back at the end."""
    import redis.asyncio as aioredis

    from ideogram_async.celery import PREFIX

    task = ImageTask.of(png_path, tmp_path / "out")
    claim = f"{PREFIX}:image:{task.key}:claim"
    watcher = aioredis.Redis.from_url(own_redis_server.url, decode_responses=True)
    await watcher.config_set("notify-keyspace-events", "Kg$")
    heard = watcher.pubsub()
    await heard.subscribe(f"__keyspace@0__:{claim}")
    emulator = Emulator(api_key=KEY, allowance=4)
    try:
        async with emulator, connected(emulator, own_redis_server, "renewal") as (client, store):
            emulator.pause()
            run = asyncio.create_task(run_image(client, store, task, lease=0.3))
            await emulator.wait_places(1)
            events: list[str] = []
            async with asyncio.timeout(10):
                while events.count("expire") < 3:
                    message = await heard.get_message(ignore_subscribe_messages=True, timeout=1)
                    if message is not None:
                        events.append(message["data"])
            assert "expired" not in events
            assert await store.claimed(task.key)  # held past its first lease
            assert not await store.claim(task.key, "another-delivery", 5)
            emulator.resume()
            assert await run == "ok"
            assert not await store.claimed(task.key)
    finally:
        await heard.aclose()
        await watcher.aclose()


async def test_an_answer_without_every_image_is_a_failure_saying_why(
    redis_server: RedisServer, redis_key: str, png_path: Path, tmp_path: Path
) -> None:
    """A v1 answer missing one image's URL, and a v2 image the safety check withheld:
    nothing is downloaded, and the record says which it was."""
    from ideogram_async.v2 import TopazBloom2

    images = [{"url": "http://127.0.0.1:9/x.png", "is_image_safe": True}, {"url": None}]
    body = {"created": "2025-01-01T00:00:00Z", "data": images}
    emulator = Emulator(api_key=KEY, faults=FaultPlan([Fault.status(200, body=json.dumps(body))]))
    async with emulator, connected(emulator, redis_server, redis_key) as (client, store):
        task = ImageTask.of(png_path, tmp_path / "out")
        assert await run_image(client, store, task, lease=5) == "failed"
        record = await store.record(task.key)
        assert (record.status, record.error) == (
            "failed",
            "the service answered without an image URL",
        )
        assert record.urls == ()
    emulator = Emulator(api_key=KEY)
    allowance = RedisAllowance(redis_server.url, 4, key=redis_key)
    store = open_store(redis_server.url)
    withheld = ImageTask.of(png_path, tmp_path / "out", TopazBloom2(prompt="[withhold] a cat"))
    try:
        async with (
            emulator,
            IdeogramClient(
                api_key=KEY, base_url=emulator.base_url, flavor="official", allowance=allowance
            ) as client,
        ):
            assert await run_image(client, store, withheld, lease=5) == "failed"
            record = await store.record(withheld.key)
    finally:
        await allowance.aclose()
        await store.aclose()
    assert (record.status, record.error) == (
        "failed",
        "1 image(s) withheld by the service's safety check (the upscale is billed)",
    )
    assert emulator.stats.image_downloads == 0
    assert not (tmp_path / "out").exists()


async def test_an_error_the_client_does_not_describe_is_recorded_with_its_type(
    parts: tuple[IdeogramClient, JobStore],
    png_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An error no part of the client describes (here, a download that breaks in an
    unforeseen way) fails the image, recorded under its type's name."""
    client, store = parts

    async def broken(url: str, dest: Path) -> Path:
        raise LookupError("a fault of its own")

    monkeypatch.setattr(client, "download", broken)
    task = ImageTask.of(png_path, tmp_path / "out")
    assert await run_image(client, store, task, lease=5) == "failed"
    record = await store.record(task.key)
    assert record.error == "download failed: LookupError: a fault of its own"


async def test_a_second_delivery_steps_back_while_the_first_holds_the_claim(
    parts: tuple[IdeogramClient, JobStore], emu: Emulator, png_path: Path, tmp_path: Path
) -> None:
    client, store = parts
    task = ImageTask.of(png_path, tmp_path / "out")
    assert await store.claim(task.key, "another-delivery", 5)
    with pytest.raises(ImageBusy) as caught:
        await run_image(client, store, task, lease=5)
    assert str(caught.value) == (
        f"{png_path} is being worked on by another delivery of its task; "
        "this one steps back and looks again later"
    )
    assert emu.stats.requests == 0
    await store.release(task.key, "another-delivery")
    assert await run_image(client, store, task, lease=5) == "ok"


async def test_a_failed_upscale_is_recorded_with_its_error_and_counts(
    redis_server: RedisServer, redis_key: str, png_path: Path, tmp_path: Path
) -> None:
    detail = json.dumps({"detail": "not\n  an   image"})
    faults = FaultPlan([Fault.status(400, body=detail)])
    emulator = Emulator(api_key=KEY, faults=faults, allowance=4)
    async with emulator, connected(emulator, redis_server, redis_key) as (client, store):
        task = ImageTask.of(png_path, tmp_path / "out", job=redis_key)
        await store.create_job(redis_key, [task.key], str(tmp_path / "out"))
        assert await run_image(client, store, task, lease=5) == "failed"
        record = await store.record(task.key)
        events = await store.events(redis_key, "0", block=None)
        emulator.pause()  # delivered again: while it works, the record shows no outcome
        again = asyncio.create_task(run_image(client, store, task, lease=5))
        await emulator.wait_places(1)
        working = await store.record(task.key)
        emulator.resume()
        assert await again == "ok"
    assert (working.status, working.error) == ("", None)
    assert record.status == "failed"
    assert record.attempts == 1
    assert record.urls == ()
    assert record.error == (
        "HTTP 400: not an image — fix the request or the image; retrying will not help"
    )
    assert [(event.index, event.outcome) for event in events] == [(0, "failed")]


async def test_every_refusal_is_counted_against_its_image(
    redis_server: RedisServer, redis_key: str, tmp_path: Path
) -> None:
    """Workers told of 8 places against a service that allows 2: the records' refusals
    add up to the service's count, by the reason it gave, and carry its number."""
    from ideogram_async.celery import _CountedAllowance

    inputs = make_inputs(tmp_path / "in", 8)
    emulator = Emulator(api_key=KEY, allowance=2, latency=0.05)
    allowance = _CountedAllowance(
        RedisAllowance(redis_server.url, 8, key=redis_key, adaptive=False)
    )
    store = open_store(redis_server.url)
    tasks = [ImageTask.of(path, tmp_path / "out") for path in inputs]
    try:
        async with (
            emulator,
            IdeogramClient(api_key=KEY, base_url=emulator.base_url, allowance=allowance) as client,
        ):
            outcomes = await asyncio.gather(
                *(run_image(client, store, task, lease=5) for task in tasks)
            )
            records = [await store.record(task.key) for task in tasks]
    finally:
        await allowance.aclose()
        await store.aclose()
    assert outcomes == ["ok"] * 8
    assert emulator.stats.rejected_over_allowance > 0
    refused = sum(sum(record.refused.values()) for record in records)
    assert refused == emulator.stats.rejected_over_allowance
    assert {reason for record in records for reason in record.refused} == {"inflight_limit"}
    assert {record.bound for record in records if record.refused} == {2}
    assert allowance.inner.limit == 2  # the shared allowance learned the service's number


async def test_an_unreachable_allowance_is_no_failure_of_the_image(
    emu: Emulator, redis_server: RedisServer, png_path: Path, tmp_path: Path
) -> None:
    """Without the shared bound nothing is sent, and the image is left to a later try
    (the task retries), not recorded as failed."""
    from ideogram_async import SharedAllowanceError

    allowance = RedisAllowance(f"redis://127.0.0.1:{free_port()}/0", 4)
    store = open_store(redis_server.url)
    task = ImageTask.of(png_path, tmp_path / "out")
    try:
        async with IdeogramClient(
            api_key=KEY, base_url=emu.base_url, allowance=allowance
        ) as client:
            with pytest.raises(SharedAllowanceError):
                await run_image(client, store, task, lease=5)
        record = await store.record(task.key)
    finally:
        await allowance.aclose()
        await store.aclose()
    assert record.status == ""
    assert emu.stats.requests == 0


def test_a_message_round_trips_and_rebuilds_the_options(tmp_path: Path) -> None:
    from ideogram_async import MagicPrompt, UpscaleRequest
    from ideogram_async.v2 import MODELS, TopazBloom2

    v1 = UpscaleRequest(prompt="crisp", magic_prompt_option=MagicPrompt.OFF, num_images=2)
    message = image_message(tmp_path / "a.png", tmp_path / "out", v1)
    assert json.loads(json.dumps(message)) == message  # plain JSON for the broker
    assert ImageTask.from_message(message).request() == v1
    v2 = TopazBloom2(upscale_factor="x4", creativity=5)
    task = ImageTask.from_message(image_message(tmp_path / "a.png", tmp_path / "out", v2))
    assert task.request() == v2
    assert task.model == "topaz-bloom-2"
    assert task.key != ImageTask.of(tmp_path / "a.png", tmp_path / "out", v1).key
    with pytest.raises(ValidationError) as caught:
        ImageTask.from_message(["a.png"])
    assert str(caught.value) == (
        "not an image task message (expected an object, got list); build it with image_message()"
    )
    assert type(message["options"]["magic_prompt_option"]) is str  # the enum's value
    with pytest.raises(ValidationError) as caught:
        image_message(tmp_path / "a.png", tmp_path / "out", "x4")  # type: ignore[arg-type]
    assert str(caught.value) == (
        "request must be an UpscaleRequest or a v2 model's options, got str"
    )
    with pytest.raises(ValidationError) as caught:
        ImageTask.from_message({**message, "model": "topaz-nope"}).request()
    assert str(caught.value) == (f"unknown model 'topaz-nope'; choose one of {', '.join(MODELS)}")
    named = image_message(tmp_path / "a.png", tmp_path / "out", stem="renamed")
    assert (named["stem"], named["source"]) == ("renamed", str(tmp_path / "a.png"))
    odd = ImageTask.from_message({**message, "options": {"zoom": 2, "prompt": "x", "blur": 1}})
    with pytest.raises(ValidationError) as caught:
        odd.request()
    assert str(caught.value) == (
        "unknown option(s) 'blur', 'zoom' for UpscaleRequest; "
        "build the message with image_message()"
    )


@pytest.mark.parametrize("stem", ["", ".", "..", 7])
def test_a_stem_that_names_no_file_is_refused_before_anything_is_sent(
    tmp_path: Path, stem: object
) -> None:
    with pytest.raises(ValidationError) as caught:
        image_message(tmp_path / "a.png", tmp_path / "out", stem=stem)  # type: ignore[arg-type]
    assert str(caught.value) == (
        f"stem {stem!r} does not name a file; give a plain name such as 'photo' "
        "(the result is saved as <stem>.upscaled.<ext>)"
    )


def test_a_stem_too_long_for_a_file_name_is_refused(tmp_path: Path) -> None:
    message = image_message(tmp_path / "a.png", tmp_path / "out")
    fits = "é" * 119  # 238 bytes: with ".upscaled-10.jpeg", 255
    assert ImageTask.from_message({**message, "stem": fits}).stem == fits
    with pytest.raises(ValidationError) as caught:
        ImageTask.from_message({**message, "stem": fits + "x"})
    assert str(caught.value) == (
        f"stem {'é' * 40!r}... is too long for a file name (255 bytes at most with "
        "'.upscaled-10.jpeg'); give a shorter one"
    )


@pytest.mark.parametrize("stem", ["../up", "sub/name", "back\\slash", "nul\0byte"])
def test_a_stem_with_a_separator_or_nul_is_refused(tmp_path: Path, stem: str) -> None:
    message = image_message(tmp_path / "a.png", tmp_path / "out")
    with pytest.raises(ValidationError) as caught:
        ImageTask.from_message({**message, "stem": stem})
    assert str(caught.value) == (
        f"stem {stem!r} holds a path separator or a NUL byte; give a plain name such as "
        "'photo' (the result is saved in out_dir as <stem>.upscaled.<ext>)"
    )
    assert ImageTask.from_message({**message, "stem": ".hidden"}).stem == ".hidden"


async def test_enqueue_records_the_job_and_sends_one_task_per_image_in_order(
    own_redis_server: RedisServer, tmp_path: Path
) -> None:
    """Without a worker: the job's record lists its images, and the broker's queue holds
    one message per image, in input order, each carrying its name, place and options."""
    import base64

    import redis.asyncio as aioredis
    from celery import Celery

    from ideogram_async import UpscaleRequest
    from ideogram_async.celery import celery_config

    app = Celery("enqueuer", set_as_current=False)
    app.conf.update(celery_config({"IDEOGRAM_BROKER_URL": own_redis_server.url}))
    task = register(app)
    inputs = make_inputs(tmp_path / "in", 3)
    store = open_store(own_redis_server.url)
    broker = aioredis.Redis.from_url(own_redis_server.url)
    try:
        with pytest.raises(ValidationError) as caught:
            await enqueue(task, store, "nothing", [], tmp_path / "out")
        assert str(caught.value) == "nothing to enqueue: pass at least one image"
        assert await store.job("nothing") is None
        sources = [(path, f"name{index}") for index, path in enumerate(inputs)]
        request = UpscaleRequest(prompt="crisp")
        messages = await enqueue(task, store, "job-9", sources, tmp_path / "out", request)
        job = await store.job("job-9")
        queued = await broker.lrange("celery", 0, -1)
    finally:
        await broker.aclose()
        await store.aclose()
        app.close()
    assert [ImageTask.from_message(m) for m in messages] == [
        ImageTask.of(path, tmp_path / "out", request, stem=stem, job="job-9", index=index)
        for index, (path, stem) in enumerate(sources)
    ]
    assert [m["options"] for m in messages] == [{"prompt": "crisp"}] * 3
    assert [(m["job"], m["index"]) for m in messages] == [("job-9", 0), ("job-9", 1), ("job-9", 2)]
    assert job is not None
    info, keys = job
    assert keys == [ImageTask.from_message(m).key for m in messages]
    assert (info["out_dir"], info["total"]) == (str(tmp_path / "out"), "3")
    sent = []
    for raw in reversed(queued):  # the broker pushes on the left and takes from the right
        envelope = json.loads(raw)
        assert envelope["headers"]["task"] == TASK_NAME
        args, _, _ = json.loads(base64.b64decode(envelope["body"]))
        sent.append(args[0])
    assert sent == messages


# -- settings and usage ---------------------------------------------------------------


def test_worker_settings_come_from_the_environment(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(f"{KEY}\n")
    settings = WorkerSettings.from_env(
        {
            "IDEOGRAM_BROKER_URL": "redis://:pw-s3cret@broker:6379/1",
            "IDEOGRAM_ALLOWANCE": "24",
            "IDEOGRAM_API_KEY_FILE": str(key_file),
        }
    )
    assert settings.redis_url == "redis://:pw-s3cret@broker:6379/1"  # the broker's Redis
    assert (settings.allowance, settings.api_key, settings.flavor) == (24, KEY, "official")
    assert KEY not in repr(settings)
    assert "pw-s3cret" not in repr(settings)
    with pytest.raises(ValidationError, match="IDEOGRAM_SHARED_ALLOWANCE"):
        WorkerSettings.from_env({"IDEOGRAM_BROKER_URL": "amqp://mq", "IDEOGRAM_API_KEY": KEY})
    with pytest.raises(ValidationError, match="IDEOGRAM_ALLOWANCE must be a whole number"):
        WorkerSettings.from_env({"IDEOGRAM_ALLOWANCE": "0", "IDEOGRAM_API_KEY": KEY})
    with pytest.raises(ValidationError, match="no API key"):
        WorkerSettings.from_env({})


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw-s3cret@broker:6379/1", "redis://:***@broker:6379/1"),
        ("redis://user:pw-s3cret@broker/0?password=pw-s3cret", "redis://user:***@broker/0"),
        ("redis://broker:6379/0", "redis://broker:6379/0"),
        # A password holding '/', '?' or '#' ends the host part early: nothing is shown.
        ("redis://user:pw/s3cret@broker:6379/0", "redis://***"),
        ("amqp://user:pw?s3#cret@broker//", "amqp://***"),
        ("redis://user:pw/s3://cret@broker:6379/0", "redis://***"),  # a second "://"
        ("redis://us@er:pw-s3cret@broker:6379/0", "redis://us@er:***@broker:6379/0"),
        ("redis://[pw-s3cret/0", "redis://***"),
    ],
)
def test_urls_in_messages_never_show_a_password(url: str, shown: str) -> None:
    assert redacted(url) == shown


def test_a_worker_with_a_wrong_setting_stops_at_start_saying_why(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDEOGRAM_")}
    env["IDEOGRAM_BROKER_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    command = [sys.executable, "-m", "celery", "-A", "ideogram_async.celery", "worker"]
    done = subprocess.run(
        [*command, "--pool", "threads"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "ideogram_async.celery: no API key for the workers" in done.stderr


def test_enqueue_usage_errors_send_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_inputs(tmp_path / "in", 1)
    assert main(["enqueue", str(tmp_path / "in")]) == 2
    assert "--out DIR is required" in capsys.readouterr().err
    assert main(["enqueue", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--json", "x"]) == 2
    assert "--json show(s) the wait for the job: add --wait" in capsys.readouterr().err
    assert main(["enqueue", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "-q"]) == 2
    assert "--quiet show(s) the wait for the job: add --wait" in capsys.readouterr().err
    assert main(["enqueue", str(tmp_path / "in"), "-o", "o", "--wait", "-v"]) == 2
    assert "unrecognized arguments: -v" in capsys.readouterr().err  # attempts are the workers'
    assert main(["enqueue", str(tmp_path / "in"), "-o", "o", "--factor", "x4"]) == 2
    assert "add --model MODEL" in capsys.readouterr().err
    nowhere = f"redis://:pw-s3cret@127.0.0.1:{free_port()}/0"
    assert (
        main(["enqueue", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--broker", nowhere]) == 2
    )
    err = capsys.readouterr().err
    assert "could not be read or written" in err
    assert "pw-s3cret" not in err
    assert not (tmp_path / "o").exists()  # nothing was sent: no folder left behind
    assert main(["status", "0123abcd", "--shared-allowance", nowhere]) == 2
    err = capsys.readouterr().err
    assert "could not be read or written" in err
    assert "pw-s3cret" not in err


def test_register_returns_the_task_on_the_given_app() -> None:
    from celery import Celery

    other = Celery("other", set_as_current=False)
    returned = register(other)
    task = other.tasks[TASK_NAME]
    assert (returned.name, returned.app) == (TASK_NAME, other)
    assert task.app is other
    assert task.acks_late
    assert task.reject_on_worker_lost
    assert task.ignore_result  # progress is in the records, not in a result backend
    assert task.max_retries is None  # retries without end while Redis is away
    bystander = Celery("bystander", set_as_current=False)
    bystander.finalize()
    assert TASK_NAME not in bystander.tasks  # registered on the app given, no other


def test_the_docs_show_the_app_module_the_tests_run() -> None:
    """docs/celery.md's own-app example is tests/celery_app.py, word for word."""
    docs = (ROOT / "docs" / "celery.md").read_text(encoding="utf-8")
    block = docs.split("```python\n")[1].split("```")[0]
    module = (ROOT / "tests" / "celery_app.py").read_text(encoding="utf-8")
    assert module.split('"""\n\n', 1)[1] == block
