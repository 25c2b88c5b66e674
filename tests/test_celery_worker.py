"""The Celery app in this process: its settings, the worker signals and the task itself.

The subprocess tests of tests/test_celery.py run real ``celery worker`` processes; here
the same code runs in-process so that what it does can be looked at directly: the
settings read from the environment, a Celery worker started in a thread of this process
(``celery.contrib.testing.worker.start_worker``) whose signals open and close the
process's runtime, and the task applied eagerly (``Task.apply``) to see how it retries.
Every part is real: a ``redis-server`` per test and the emulator over a real socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_asyncio
import redis
import redis.asyncio as aioredis
from celery import Celery, signals
from celery.contrib.testing.worker import start_worker
from celery.worker import state

from ideogram_async import ValidationError
from ideogram_async.celery import (
    PREFIX,
    ImageRecord,
    JobStore,
    WorkerSettings,
    broker_url,
    celery_config,
    enqueue,
    image_message,
    open_store,
    redelivery_seconds,
    register,
    shared_redis_url,
)
from ideogram_async.celery._task import ImageBusy, ImageTask
from ideogram_async.limits import organization_key
from ideogram_async.testing import Emulator, Fault, FaultPlan, RedisServer, free_port

KEY = "sk-celery-w0rker-key"
"""Distinctive, so that a leak into any output is easy to spot."""
LOOP_THREAD = "ideogram-async-loop"
"""The name of the thread a worker process runs its event loop in."""


# -- settings from the environment -----------------------------------------------------


def test_the_broker_is_redis_on_this_host_unless_named() -> None:
    assert broker_url({}) == "redis://127.0.0.1:6379/0"
    assert broker_url({"IDEOGRAM_BROKER_URL": "  "}) == "redis://127.0.0.1:6379/0"
    assert broker_url({"IDEOGRAM_BROKER_URL": " amqp://mq// "}) == "amqp://mq//"


def test_the_shared_redis_is_named_or_else_the_brokers() -> None:
    named = {"IDEOGRAM_SHARED_ALLOWANCE": "redis://shared/2", "IDEOGRAM_BROKER_URL": "amqp://mq"}
    assert shared_redis_url(named) == "redis://shared/2"
    assert shared_redis_url(named, broker="redis://other/1") == "redis://shared/2"
    assert shared_redis_url({"IDEOGRAM_BROKER_URL": "rediss://b/1"}) == "rediss://b/1"
    assert shared_redis_url({}, broker="unix:///tmp/r.sock") == "unix:///tmp/r.sock"
    assert shared_redis_url({"IDEOGRAM_BROKER_URL": "amqp://mq"}, broker="redis://b/3") == (
        "redis://b/3"
    )  # the broker given wins over the environment's
    assert shared_redis_url({}) == "redis://127.0.0.1:6379/0"
    with pytest.raises(ValidationError) as caught:
        shared_redis_url({}, broker="amqp://user:pw-s3cret@mq//")
    assert str(caught.value) == (
        "the broker amqp://user:***@mq// is not Redis; set IDEOGRAM_SHARED_ALLOWANCE to the "
        "Redis URL (redis://HOST:PORT/DB) that holds the shared allowance and the results"
    )


@pytest.mark.parametrize(
    ("visibility", "restore", "mutex"),
    [("3", 1, 5), ("20", 5, 20), ("0.1", 1, 5), ("100", 10, 100), ("3600", 10, 300)],
)
def test_the_celery_settings_follow_the_visibility_timeout(
    visibility: str, restore: int, mutex: int
) -> None:
    config = celery_config(
        {"IDEOGRAM_BROKER_URL": "redis://b:1/0", "IDEOGRAM_VISIBILITY_TIMEOUT": visibility}
    )
    assert config == {
        "broker_url": "redis://b:1/0",
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": float(visibility),
            "unacked_restore_interval": restore,
            "unacked_restore_throttle": 1,
            "unacked_mutex_expire": mutex,
        },
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_ignore_result": True,
        "worker_prefetch_multiplier": 1,
    }
    assert redelivery_seconds({"IDEOGRAM_VISIBILITY_TIMEOUT": visibility}) == float(
        visibility
    ) + float(restore)


def test_the_visibility_timeout_defaults_to_an_hour() -> None:
    options = celery_config({})["broker_transport_options"]
    assert options["visibility_timeout"] == 3600.0
    assert redelivery_seconds({}) == 3610.0


@pytest.mark.parametrize("text", ["0.09", "0", "-5", "soon", "nan"])
def test_seconds_below_a_tenth_or_not_a_number_are_refused(text: str) -> None:
    with pytest.raises(ValidationError) as caught:
        celery_config({"IDEOGRAM_VISIBILITY_TIMEOUT": text})
    assert str(caught.value) == (
        f"IDEOGRAM_VISIBILITY_TIMEOUT must be a number of seconds >= 0.1, got {text!r}"
    )
    with pytest.raises(ValidationError, match="IDEOGRAM_LEASE must be a number of seconds"):
        WorkerSettings.from_env({"IDEOGRAM_API_KEY": KEY, "IDEOGRAM_LEASE": text})


def test_worker_settings_and_their_defaults() -> None:
    settings = WorkerSettings.from_env({"IDEOGRAM_API_KEY": KEY})
    assert settings == WorkerSettings(
        redis_url="redis://127.0.0.1:6379/0",
        allowance=10,
        allowance_key=None,
        base_url=None,
        api_key=KEY,
        flavor="official",
        lease=30.0,
    )
    named = WorkerSettings.from_env(
        {
            "IDEOGRAM_API_KEY": f" {KEY} ",
            "IDEOGRAM_API_KEY_FILE": "/nowhere/key",  # the key itself wins
            "IDEOGRAM_SHARED_ALLOWANCE": "redis://:pw-s3cret@shared:6379/4",
            "IDEOGRAM_ALLOWANCE": " 1 ",
            "IDEOGRAM_ALLOWANCE_KEY": "team-a",
            "IDEOGRAM_BASE_URL": "http://127.0.0.1:9/",
            "IDEOGRAM_LEASE": "0.1",
        }
    )
    assert named == WorkerSettings(
        redis_url="redis://:pw-s3cret@shared:6379/4",
        allowance=1,
        allowance_key="team-a",
        base_url="http://127.0.0.1:9/",
        api_key=KEY,
        flavor="proxy",  # a base URL: a proxy, unless told otherwise
        lease=0.1,
    )
    shown = repr(named)
    assert shown == (
        "WorkerSettings(redis_url=redis://:***@shared:6379/4, allowance=1, "
        "allowance_key='team-a', base_url='http://127.0.0.1:9/', flavor='proxy', lease=0.1)"
    )
    assert KEY not in shown
    assert "pw-s3cret" not in shown
    official = {"IDEOGRAM_API_KEY": KEY, "IDEOGRAM_BASE_URL": "http://h/"}
    assert WorkerSettings.from_env({**official, "IDEOGRAM_FLAVOR": "official"}).flavor == (
        "official"
    )
    assert WorkerSettings.from_env({**official}, broker="redis://b/5").redis_url == "redis://b/5"


@pytest.mark.parametrize("text", ["0", "-1", "two", "1.5", "ten"])
def test_an_allowance_that_is_not_a_whole_number_from_1_is_refused(text: str) -> None:
    with pytest.raises(ValidationError) as caught:
        WorkerSettings.from_env({"IDEOGRAM_API_KEY": KEY, "IDEOGRAM_ALLOWANCE": text})
    assert str(caught.value) == (
        "IDEOGRAM_ALLOWANCE must be a whole number >= 1 (images in flight for all "
        f"workers together), got {text!r}"
    )


def test_an_unknown_flavor_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        WorkerSettings.from_env({"IDEOGRAM_API_KEY": KEY, "IDEOGRAM_FLAVOR": "Proxy"})
    assert str(caught.value) == "IDEOGRAM_FLAVOR must be proxy or official, got 'Proxy'"


def test_the_key_file_must_hold_the_key(tmp_path: Path) -> None:
    def key_from(path: Path) -> str:
        return WorkerSettings.from_env({"IDEOGRAM_API_KEY_FILE": str(path)}).api_key

    good = tmp_path / "good"
    good.write_text(f"\n {KEY} \n", encoding="utf-8")
    assert key_from(good) == KEY
    empty = tmp_path / "empty"
    empty.write_text(" \n", encoding="utf-8")
    with pytest.raises(ValidationError) as caught:
        key_from(empty)
    assert str(caught.value) == f"IDEOGRAM_API_KEY_FILE {empty} is empty; put the key in it"
    missing = tmp_path / "missing"
    with pytest.raises(ValidationError) as caught:
        key_from(missing)
    assert str(caught.value).startswith(f"cannot read IDEOGRAM_API_KEY_FILE {missing}: [Errno 2]")
    assert str(caught.value).endswith("; point it at a file holding the key")
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00key")
    with pytest.raises(ValidationError, match=r"cannot read IDEOGRAM_API_KEY_FILE .*utf-8"):
        key_from(binary)
    with pytest.raises(ValidationError) as caught:
        WorkerSettings.from_env({"IDEOGRAM_API_KEY": " "})
    assert str(caught.value) == (
        "no API key for the workers: set IDEOGRAM_API_KEY or IDEOGRAM_API_KEY_FILE"
    )


# -- the worker process's runtime and the task, in this process ------------------------


def loop_threads() -> int:
    """The runtimes' event-loop threads running in this process."""
    return sum(thread.name == LOOP_THREAD for thread in threading.enumerate())


@pytest.fixture(autouse=True)
def logging_left_alone() -> Iterator[None]:
    """A worker built in this process would set up the root logger (level ERROR, a stderr
    handler) for the rest of the session, silencing later tests' captured warnings; a
    ``setup_logging`` receiver tells Celery the application sets up logging itself."""

    def leave(**_: object) -> None:
        """The application's own logging set-up: none, here."""

    signals.setup_logging.connect(leave)
    yield
    signals.setup_logging.disconnect(leave)


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """This process's environment without IDEOGRAM_ settings (the test sets its own).

    At the end the process's runtime, if the test left one, is closed the way a worker
    closes it (``worker_shutdown``), and no event-loop thread of one is left running.
    """
    for name in [name for name in __import__("os").environ if name.startswith("IDEOGRAM_")]:
        monkeypatch.delenv(name)
    yield monkeypatch
    signals.worker_shutdown.send(sender=None)
    assert loop_threads() == 0


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(api_key=KEY) as running:
        yield running


def service(environ: pytest.MonkeyPatch, emulator: Emulator, **more: str) -> None:
    """Point this process's workers at ``emulator`` (and ``more`` settings)."""
    environ.setenv("IDEOGRAM_BASE_URL", emulator.base_url)
    environ.setenv("IDEOGRAM_API_KEY", KEY)
    for name, value in more.items():
        environ.setenv(f"IDEOGRAM_{name}", value)


def own_app(broker: str | None) -> tuple[Celery, Any]:
    """An application's Celery app with the upscale task registered on it."""
    app = Celery("own", set_as_current=False)
    if broker is not None:
        app.conf.update(celery_config({"IDEOGRAM_BROKER_URL": broker}))
    return app, register(app)


def outcome(result: Any) -> object:
    """What an eagerly applied task returned (``get()`` refuses once a worker was built
    in this process, as it would inside a task)."""
    assert result.state == "SUCCESS", result.traceback
    return result.result


@contextlib.asynccontextmanager
async def records(url: str) -> AsyncIterator[JobStore]:
    store = open_store(url)
    try:
        yield store
    finally:
        await store.aclose()


async def record_of(url: str, message: dict[str, Any]) -> ImageRecord:
    """What the Redis at ``url`` records of the image of the task ``message``."""
    async with records(url) as store:
        return await store.record(ImageTask.from_message(message).key)


async def test_the_task_opens_the_runtime_at_first_use_and_keeps_it(
    environ: pytest.MonkeyPatch,
    emu: Emulator,
    redis_server: RedisServer,
    redis_key: str,
    png_path: Path,
    tmp_path: Path,
) -> None:
    """Without worker signals (an eager call) the task starts the process's runtime
    itself, with the Redis of its app's broker; later tasks use the same runtime."""
    service(environ, emu, ALLOWANCE_KEY=redis_key, BROKER_URL="amqp://not-this-one//")
    _, task = own_app(redis_server.url)
    message = image_message(png_path, tmp_path / "out")
    first = await asyncio.to_thread(task.apply, (message,))
    assert outcome(first) == "ok"
    # One loop thread, a daemon: a process whose runtime was never closed still exits.
    assert [t.daemon for t in threading.enumerate() if t.name == LOOP_THREAD] == [True]
    record = await record_of(redis_server.url, message)
    assert record.allowance == redis_key  # the allowance its places were held in
    assert record.outputs == (str(tmp_path / "out" / "photo.upscaled.png"),)
    again = await asyncio.to_thread(task.apply, (message,))
    assert outcome(again) == "skipped"
    assert loop_threads() == 1  # the same runtime
    assert emu.stats.requests == 1


async def test_an_app_without_a_broker_uses_the_environments(
    environ: pytest.MonkeyPatch,
    emu: Emulator,
    redis_server: RedisServer,
    png_path: Path,
    tmp_path: Path,
) -> None:
    """The runtime's Redis is the broker's: the app's, else IDEOGRAM_BROKER_URL; its
    allowance is the organization's when IDEOGRAM_ALLOWANCE_KEY names none."""
    service(environ, emu, BROKER_URL=redis_server.url)
    _, task = own_app(None)
    message = image_message(png_path, tmp_path / "out")
    assert outcome(await asyncio.to_thread(task.apply, (message,))) == "ok"
    record = await record_of(redis_server.url, message)
    assert record.status == "ok"
    assert record.allowance == organization_key(KEY, emu.base_url)


@attrs.define
class Retries:
    """The retries the task asked Celery for (``task_retry``); ``then`` runs at each."""

    seen: list[tuple[int, float, BaseException]] = attrs.field(factory=list)
    then: Callable[[], object] = lambda: None

    def heard(self, request: Any, reason: Any, **_: Any) -> None:
        self.seen.append((request.retries, reason.when, reason.exc))
        self.then()


@pytest.fixture
def retries() -> Iterator[Retries]:
    """What the task's retries asked for. Applied eagerly, a retried task runs again at
    once (the countdown is only asked for), so ``then`` mends what made it retry."""
    heard = Retries()
    signals.task_retry.connect(heard.heard, weak=False)
    yield heard
    signals.task_retry.disconnect(heard.heard)


async def test_a_busy_image_is_tried_again_after_a_third_of_the_lease(
    environ: pytest.MonkeyPatch,
    emu: Emulator,
    redis_server: RedisServer,
    redis_key: str,
    retries: Retries,
    png_path: Path,
    tmp_path: Path,
) -> None:
    service(environ, emu, ALLOWANCE_KEY=redis_key, LEASE="1.5")
    _, task = own_app(redis_server.url)
    message = image_message(png_path, tmp_path / "out")
    claim = f"{PREFIX}:image:{ImageTask.from_message(message).key}:claim"
    holder = redis.Redis.from_url(redis_server.url)
    try:
        assert holder.set(claim, "another-delivery", px=5000)
        retries.then = lambda: holder.delete(claim)  # the other delivery is done
        assert outcome(await asyncio.to_thread(task.apply, (message,))) == "ok"
    finally:
        holder.close()
    [(retried, countdown, exc)] = retries.seen
    assert (retried, countdown) == (0, 0.5)
    assert isinstance(exc, ImageBusy)
    assert emu.stats.requests == 1


@pytest.mark.parametrize(("already", "countdown"), [(0, 1), (1, 2), (5, 32), (6, 60), (40, 60)])
async def test_an_unreachable_redis_is_tried_again_backing_off_up_to_a_minute(
    environ: pytest.MonkeyPatch,
    emu: Emulator,
    retries: Retries,
    png_path: Path,
    tmp_path: Path,
    already: int,
    countdown: int,
) -> None:
    """Nothing is sent while the shared Redis does not answer; once it does, the image
    is done."""
    (tmp_path / "redis").mkdir()
    shared = RedisServer(tmp_path / "redis")
    service(environ, emu, SHARED_ALLOWANCE=shared.url)
    _, task = own_app("amqp://unused//")
    message = image_message(png_path, tmp_path / "out")

    before: list[tuple[int, int]] = []

    def redis_is_back() -> None:
        before.append((loop_threads(), emu.stats.requests))
        shared.start()

    retries.then = redis_is_back
    try:
        result = await asyncio.to_thread(task.apply, (message,), retries=already)
        assert outcome(result) == "ok"
    finally:
        signals.worker_shutdown.send(sender=None)
        shared.stop()
    [(retried, asked, exc)] = retries.seen
    assert (retried, asked) == (already, countdown)
    assert before == [(0, 0)]  # nothing sent; the runtime that did not start stopped its loop
    assert str(exc).startswith(f"cannot reach Redis at {shared.url} for the shared allowance")
    assert emu.stats.requests == 1


@pytest.mark.parametrize(
    "change",
    [
        None,  # not even an object
        {"stem": ""},
        {"stem": "../escape"},
        {"stem": "nul\0byte"},
        {"options": {"prompt": "x", "no_such_option": 1}},
    ],
)
async def test_a_message_that_is_no_image_task_fails_the_task(
    environ: pytest.MonkeyPatch, png_path: Path, change: dict[str, object] | None
) -> None:
    """Refused before anything is started or paid for: no runtime, no request."""
    _, task = own_app("amqp://unused//")
    message = ["photo.png"] if change is None else {**image_message(png_path, "out"), **change}
    result = await asyncio.to_thread(task.apply, (message,))
    assert result.state == "FAILURE"
    assert isinstance(result.result, ValidationError)
    assert loop_threads() == 0  # refused before anything was started


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_a_worker_whose_tasks_run_in_its_process_checks_its_settings_at_start(
    environ: pytest.MonkeyPatch, pool: str
) -> None:
    app, _ = own_app(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(SystemExit) as caught:
        app.WorkController(pool_cls=pool, hostname="test@here")
    assert str(caught.value) == (
        "ideogram_async.celery: no API key for the workers: set IDEOGRAM_API_KEY or "
        "IDEOGRAM_API_KEY_FILE"
    )


def test_a_prefork_worker_leaves_the_runtimes_to_its_children(
    environ: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The prefork parent runs no task: it starts no runtime, so a wrong setting stops
    each child (``worker_process_init``) instead, where the tasks would run."""
    app, _ = own_app(f"redis://127.0.0.1:{free_port()}/0")
    app.WorkController(pool_cls="prefork", hostname="test@here")
    assert loop_threads() == 0
    app.set_current()
    with pytest.raises(SystemExit, match=r"ideogram_async\.celery: no API key"):
        signals.worker_process_init.send(sender=None)
    # Stopping without a runtime (the parent; a child that refused to start) is quiet.
    signals.worker_process_shutdown.send(sender=None)
    signals.worker_shutdown.send(sender=None)
    assert [record.getMessage() for record in caplog.records if record.levelno >= 40] == []


async def test_a_worker_starts_even_while_redis_does_not_answer(
    environ: pytest.MonkeyPatch, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    nowhere = free_port()
    service(environ, emu, SHARED_ALLOWANCE=f"redis://:pw-s3cret@127.0.0.1:{nowhere}/0")
    app, _ = own_app(f"redis://127.0.0.1:{free_port()}/0")
    with caplog.at_level(logging.WARNING, logger="ideogram_async"):
        await asyncio.to_thread(app.WorkController, pool_cls="threads", hostname="test@here")
    [warning] = [r for r in caplog.records if r.name == "ideogram_async"]
    assert warning.levelno == logging.WARNING
    text = warning.getMessage()
    assert f"127.0.0.1:{nowhere}" in text
    assert text.endswith("; the tasks retry until it answers")
    assert "pw-s3cret" not in text
    assert loop_threads() == 0


async def test_a_worker_in_this_process_runs_a_job_and_closes_its_runtime_at_shutdown(
    environ: pytest.MonkeyPatch,
    emu: Emulator,
    own_redis_server: RedisServer,
    png_path: Path,
    tmp_path: Path,
) -> None:
    """A Celery worker (threads pool) in a thread of this process: its start opens the
    runtime, the job's image is done through it, and its warm shutdown closes the runtime
    and every connection it held to the shared Redis."""
    (tmp_path / "shared").mkdir()
    with RedisServer(tmp_path / "shared") as shared:
        service(environ, emu, SHARED_ALLOWANCE=shared.url, ALLOWANCE_KEY="in-process")
        app, task = own_app(own_redis_server.url)
        stack = contextlib.ExitStack()
        await asyncio.to_thread(
            stack.enter_context,
            start_worker(app, pool="threads", concurrency=2, perform_ping_check=False),
        )
        try:
            assert loop_threads() == 1  # opened by the worker's start, before any task
            async with records(shared.url) as store:
                messages = await enqueue(
                    task, store, "job-1", [(png_path, "photo")], tmp_path / "out"
                )
                [event] = await store.events("job-1", "0", block=5.0)
                record = await store.record(ImageTask.from_message(messages[0]).key)
        finally:
            stopped = threading.Event()

            def shut(**_: Any) -> None:
                stopped.set()

            signals.worker_shutdown.connect(shut, weak=False)  # heard after the module's
            state.should_stop = 0  # type: ignore[assignment]  # a warm shutdown, as on SIGTERM
            try:
                assert await asyncio.to_thread(stopped.wait, 30)
                await asyncio.to_thread(stack.close)
            finally:
                state.should_stop = None
                signals.worker_shutdown.disconnect(shut)
        assert (event.index, event.outcome) == (0, "ok")
        assert (record.status, record.allowance) == ("ok", "in-process")
        assert (tmp_path / "out" / "photo.upscaled.png").is_file()
        assert loop_threads() == 0
        checker = aioredis.Redis.from_url(shared.url)
        try:
            assert len(await checker.client_list()) == 1  # only this one
        finally:
            await checker.aclose()


def refusal(reason: str) -> Fault:
    """A 429 giving ``reason`` and an allowance of 3, to be tried again at once."""
    body = {"detail": "refused", "reject_reason": reason, "max_inflight_requests": 3}
    return Fault.status(429, body=json.dumps(body), retry_after=0)


async def test_the_runtime_counts_each_images_retries_and_refusals(
    environ: pytest.MonkeyPatch,
    redis_server: RedisServer,
    redis_key: str,
    png_path: Path,
    tmp_path: Path,
) -> None:
    """Two 429s the client waits out, one it retries and a 503: the image's record
    counts the four answers before its success, the retries and the refusals by reason."""
    plan = FaultPlan(
        [
            refusal("inflight_limit"),
            refusal("inflight_limit"),
            refusal("rate_limit"),
            Fault.status(503, retry_after=0),
        ]
    )
    message = image_message(png_path, tmp_path / "out")
    async with Emulator(api_key=KEY, faults=plan) as emulator:
        service(environ, emulator, ALLOWANCE_KEY=redis_key)
        _, task = own_app(redis_server.url)
        assert outcome(await asyncio.to_thread(task.apply, (message,))) == "ok"
    record = await record_of(redis_server.url, message)
    assert record.refused == {"inflight_limit": 2, "rate_limit": 1}
    assert record.retries == 2
    assert record.bound == 3
    assert record.status == "ok"


async def test_the_runtimes_client_speaks_the_flavor_it_is_given(
    environ: pytest.MonkeyPatch,
    emu: Emulator,
    redis_server: RedisServer,
    redis_key: str,
    png_path: Path,
    tmp_path: Path,
) -> None:
    """IDEOGRAM_FLAVOR=official with a base URL: the v2 models run (a proxy-flavored
    client, the default with a base URL, refuses them before sending anything)."""
    from ideogram_async.v2 import TopazStandard2

    _, task = own_app(redis_server.url)
    message = image_message(png_path, tmp_path / "out", TopazStandard2(upscale_factor="x2"))
    service(environ, emu, ALLOWANCE_KEY=redis_key)
    refused = await asyncio.to_thread(task.apply, (message,))
    assert refused.state == "FAILURE"
    assert "create the client with flavor='official'" in str(refused.result)
    signals.worker_shutdown.send(sender=None)  # the next runtime reads the settings anew
    environ.setenv("IDEOGRAM_FLAVOR", "official")
    assert outcome(await asyncio.to_thread(task.apply, (message,))) == "ok"
    [upload] = emu.stats.v2_uploads
    assert upload.model == "topaz-standard-2"


async def test_the_runtime_takes_the_settings_as_read(
    environ: pytest.MonkeyPatch,
    emu: Emulator,
    redis_server: RedisServer,
    redis_key: str,
    png_path: Path,
    tmp_path: Path,
) -> None:
    """The key from IDEOGRAM_API_KEY_FILE alone, a base URL with stray spaces (as an env
    file may hold them): the client gets the values the settings read."""
    key_file = tmp_path / "key"
    key_file.write_text(f"{KEY}\n", encoding="utf-8")
    environ.setenv("IDEOGRAM_API_KEY_FILE", str(key_file))
    environ.setenv("IDEOGRAM_BASE_URL", f" {emu.base_url} ")
    environ.setenv("IDEOGRAM_ALLOWANCE_KEY", redis_key)
    _, task = own_app(redis_server.url)
    message = image_message(png_path, tmp_path / "out")
    assert outcome(await asyncio.to_thread(task.apply, (message,))) == "ok"
    assert emu.stats.requests == 1


def test_a_client_setting_the_client_refuses_stops_the_worker_at_start(
    environ: pytest.MonkeyPatch, redis_server: RedisServer
) -> None:
    environ.setenv("IDEOGRAM_API_KEY", KEY)
    environ.setenv("IDEOGRAM_BASE_URL", "ftp://127.0.0.1/")
    app, _ = own_app(redis_server.url)
    with pytest.raises(SystemExit) as caught:
        app.WorkController(pool_cls="threads", hostname="test@here")
    assert str(caught.value).startswith("ideogram_async.celery: ")
    assert "ftp://127.0.0.1/" in str(caught.value)
    assert loop_threads() == 0


async def test_the_runtimes_allowance_has_the_number_and_lease_of_the_settings(
    environ: pytest.MonkeyPatch,
    redis_server: RedisServer,
    redis_key: str,
    png_path: Path,
    tmp_path: Path,
) -> None:
    """The shared bound in Redis is IDEOGRAM_ALLOWANCE, and the place of an image on
    the wire is leased for IDEOGRAM_LEASE seconds (what a dead worker's places take to
    come back)."""
    raw = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    tag = "{" + redis_key + "}"
    try:
        async with Emulator(api_key=KEY, allowance=5) as emulator:
            service(environ, emulator, ALLOWANCE_KEY=redis_key, ALLOWANCE="1", LEASE="4")
            _, task = own_app(redis_server.url)
            emulator.pause()
            message = image_message(png_path, tmp_path / "out")
            run = asyncio.create_task(asyncio.to_thread(task.apply, (message,)))
            await emulator.wait_places(1)
            held: Any = await raw.zrange(f"{tag}:holders", 0, -1, withscores=True)
            seconds, micros = await raw.time()
            emulator.resume()
            assert outcome(await run) == "ok"
            bound = await raw.hgetall(f"{tag}:bound")
    finally:
        await raw.aclose()
    assert bound["limit"] == "1"
    [(_, lease_end)] = held
    assert 3000 < lease_end - (seconds * 1000 + micros // 1000) <= 4000


async def test_a_redis_lost_while_the_worker_runs_is_waited_for_and_named(
    environ: pytest.MonkeyPatch,
    emu: Emulator,
    own_redis_server: RedisServer,
    retries: Retries,
    png_path: Path,
    tmp_path: Path,
) -> None:
    """The runtime outlives its Redis: a task meanwhile retries, naming the Redis of the
    records, and goes on once it is back."""
    service(environ, emu, SHARED_ALLOWANCE=own_redis_server.url, LEASE="0.5")
    _, task = own_app("amqp://unused//")
    first = image_message(png_path, tmp_path / "out", stem="first")
    assert outcome(await asyncio.to_thread(task.apply, (first,))) == "ok"
    own_redis_server.stop()
    retries.then = own_redis_server.start
    second = image_message(png_path, tmp_path / "out", stem="second")
    assert outcome(await asyncio.to_thread(task.apply, (second,))) == "ok"
    [(_, _, exc)] = retries.seen
    assert str(exc).startswith(
        f"the job records in Redis at {own_redis_server.url} could not be read or written"
    )
    assert emu.stats.requests == 2


async def test_an_image_refused_to_the_end_counts_every_refusal_by_its_reason(
    environ: pytest.MonkeyPatch,
    redis_server: RedisServer,
    redis_key: str,
    png_path: Path,
    tmp_path: Path,
) -> None:
    """Every attempt refused (rate_limit): the last refusal, the image's failure, is
    counted under its reason like the ones retried before it."""
    message = image_message(png_path, tmp_path / "out")
    async with Emulator(api_key=KEY, faults=FaultPlan.always(refusal("rate_limit"))) as emulator:
        service(environ, emulator, ALLOWANCE_KEY=redis_key)
        _, task = own_app(redis_server.url)
        assert outcome(await asyncio.to_thread(task.apply, (message,))) == "failed"
    record = await record_of(redis_server.url, message)
    assert record.attempts > 1
    assert record.refused == {"rate_limit": record.attempts}
    assert record.retries == record.attempts - 1
