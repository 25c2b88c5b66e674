"""The Celery workers' records in Redis (``JobStore``), against a real ``redis-server``.

What each image's record and each job hold, how a claim is taken, renewed and given
back, how long everything is kept, and what a Redis that does not answer looks like.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from ideogram_async import SharedAllowanceError
from ideogram_async.celery import PREFIX, Event, ImageRecord, JobStore, open_store
from ideogram_async.testing import RedisServer, free_port

WEEK = 7 * 24 * 3600
"""How long records, jobs and events are kept after their last change (docs/celery.md)."""


@pytest_asyncio.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[JobStore]:
    opened = open_store(redis_server.url)
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest_asyncio.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client of the same Redis, to look at what the store wrote."""
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def assert_kept_a_week(raw: aioredis.Redis, name: str) -> None:
    assert WEEK - 5 <= await raw.ttl(name) <= WEEK


async def test_an_image_without_a_record_reads_as_empty(store: JobStore, redis_key: str) -> None:
    assert await store.record(redis_key) == ImageRecord()
    assert ImageRecord() == ImageRecord(
        status="", source="", urls=(), outputs=(), error=None, attempts=0, seconds=0.0,
        retries=0, refused={}, bound=None, job="", allowance="",
    )  # fmt: skip


async def test_written_fields_read_back_as_the_record(
    store: JobStore, raw: aioredis.Redis, redis_key: str
) -> None:
    await store.write(
        redis_key,
        source="/in/a.png",
        status="ok",
        urls=("https://x/1", "https://x/2"),
        outputs=["/out/a-1.png", "/out/a-2.png"],
        error="",
        bound=3,
        job="job-7",
        allowance="the-key",
        attempts=None,  # None: left as it is
    )
    await store.add(
        redis_key, attempts=2, seconds=0.5, retries=1, refused={"inflight_limit": 2, "x": 0}
    )
    await store.add(redis_key, attempts=1, seconds=0.25, retries=2, refused={"inflight_limit": 1})
    record = await store.record(redis_key)
    assert record == ImageRecord(
        status="ok",
        source="/in/a.png",
        urls=("https://x/1", "https://x/2"),
        outputs=("/out/a-1.png", "/out/a-2.png"),
        error=None,  # an empty error is none
        attempts=3,  # deliveries add up
        seconds=0.75,
        retries=3,
        refused={"inflight_limit": 3},  # a reason counted 0 times is left out
        bound=3,
        job="job-7",
        allowance="the-key",
    )
    name = f"{PREFIX}:image:{redis_key}"
    stored = await raw.hgetall(name)
    assert stored["urls"] == '["https://x/1", "https://x/2"]'  # JSON lists
    assert stored["bound"] == "3"
    assert stored["refused:x"] == "0"
    await assert_kept_a_week(raw, name)
    await store.write(redis_key, error="boom", status="failed")
    failed = await store.record(redis_key)
    assert (failed.status, failed.error, failed.urls) == ("failed", "boom", record.urls)


async def test_counts_alone_keep_the_record_a_week(
    store: JobStore, raw: aioredis.Redis, redis_key: str
) -> None:
    await store.add(redis_key, attempts=0, seconds=0.0, retries=0, refused={})
    await assert_kept_a_week(raw, f"{PREFIX}:image:{redis_key}")
    assert await store.record(redis_key) == ImageRecord()


def test_a_record_reads_every_field_of_its_hash() -> None:
    record = ImageRecord.from_hash(
        {
            "status": "failed",
            "source": "/s.png",
            "urls": '["u"]',
            "outputs": '["o"]',
            "error": "bad",
            "attempts": "4",
            "seconds": "1.5",
            "retries": "2",
            "refused:inflight_limit": "2",
            "refused:unknown": "1",
            "bound": "",
            "job": "j",
            "allowance": "k",
        }
    )
    assert record == ImageRecord(
        status="failed", source="/s.png", urls=("u",), outputs=("o",), error="bad",
        attempts=4, seconds=1.5, retries=2, refused={"inflight_limit": 2, "unknown": 1},
        bound=None, job="j", allowance="k",
    )  # fmt: skip


async def test_one_claim_at_a_time_renewed_and_released_only_by_its_holder(
    store: JobStore, raw: aioredis.Redis, redis_key: str
) -> None:
    name = f"{PREFIX}:image:{redis_key}:claim"
    assert not await store.claimed(redis_key)
    assert await store.claim(redis_key, "first", 600)
    assert await store.claimed(redis_key)
    assert await raw.get(name) == "first"
    assert 599_000 < await raw.pttl(name) <= 600_000  # the lease, in milliseconds
    assert not await store.claim(redis_key, "second", 600)  # held: the second steps back
    assert await raw.get(name) == "first"

    assert not await store.renew(redis_key, "second", 900)  # not the second's to renew
    assert await raw.pttl(name) <= 600_000
    assert await store.renew(redis_key, "first", 60)
    assert 59_000 < await raw.pttl(name) <= 60_000  # renewed to a lease from now

    await store.release(redis_key, "second")  # not the second's to give back
    assert await store.claimed(redis_key)
    await store.release(redis_key, "first")
    assert not await store.claimed(redis_key)
    assert not await store.renew(redis_key, "first", 60)  # gone: nothing to renew
    assert await store.claim(redis_key, "second", 2.5)


async def test_a_job_lists_its_images_in_order_and_its_events(
    store: JobStore, raw: aioredis.Redis, redis_key: str
) -> None:
    assert await store.job(redis_key) is None
    await store.create_job(redis_key, ["k1", "k2", "k3"], "/out")
    found = await store.job(redis_key)
    assert found is not None
    info, keys = found
    assert keys == ["k1", "k2", "k3"]
    assert (info["out_dir"], info["total"]) == ("/out", "3")
    assert float(info["created"]) > 0
    await assert_kept_a_week(raw, f"{PREFIX}:job:{redis_key}")
    await assert_kept_a_week(raw, f"{PREFIX}:job:{redis_key}:images")

    assert await store.events(redis_key, "0", block=None) == []
    await store.announce(redis_key, 2, "ok")
    await store.announce(redis_key, 0, "failed")
    await store.announce(redis_key, 1, "skipped")
    await assert_kept_a_week(raw, f"{PREFIX}:job:{redis_key}:events")
    events = await store.events(redis_key, "0", block=None)
    assert [(e.index, e.outcome) for e in events] == [(2, "ok"), (0, "failed"), (1, "skipped")]
    assert all(isinstance(event, Event) for event in events)
    later = await store.events(redis_key, events[0].id, block=None)
    assert later == events[1:]  # after an id: only what came after it
    assert await store.events(redis_key, events[-1].id, block=0.0001) == []  # waited 1 ms


async def test_a_job_of_no_images_has_no_list(
    store: JobStore, raw: aioredis.Redis, redis_key: str
) -> None:
    await store.create_job(redis_key, [], "/out")
    assert await store.job(redis_key) == ({"out_dir": "/out", "total": "0", "created": (
        await raw.hget(f"{PREFIX}:job:{redis_key}", "created"))}, [])  # fmt: skip
    assert not await raw.exists(f"{PREFIX}:job:{redis_key}:images")


async def test_a_redis_that_does_not_answer_fails_every_call_naming_it(redis_key: str) -> None:
    shown = "redis://127.0.0.1:***/0"
    port = free_port()
    store = JobStore.from_url(f"redis://:pw-s3cret@127.0.0.1:{port}/0", shown)
    calls = [
        store.record(redis_key),
        store.write(redis_key, status="ok"),
        store.add(redis_key, attempts=1, seconds=1.0, retries=0, refused={}),
        store.claim(redis_key, "t", 1),
        store.claimed(redis_key),
        store.renew(redis_key, "t", 1),
        store.release(redis_key, "t"),
        store.create_job(redis_key, ["k"], "/out"),
        store.job(redis_key),
        store.announce(redis_key, 0, "ok"),
        store.events(redis_key, "0", block=None),
    ]
    try:
        for call in calls:
            with pytest.raises(SharedAllowanceError) as caught:
                await call
            message = str(caught.value)
            assert message.startswith(
                f"the job records in Redis at {shown} could not be read or written (Connection"
            ), message
            assert f"connecting to 127.0.0.1:{port}" in message  # what Redis' client said
            assert message.endswith("); check that Redis is up"), message
            assert ".)" not in message  # Redis' own sentence loses its full stop
            assert "pw-s3cret" not in message
            assert caught.value.url == shown
    finally:
        await store.aclose()


async def test_a_store_opened_by_url_names_it_without_its_password(redis_key: str) -> None:
    port = free_port()
    store = open_store(f"redis://:pw-s3cret@127.0.0.1:{port}/0")
    try:
        with pytest.raises(SharedAllowanceError) as caught:
            await store.record(redis_key)
    finally:
        await store.aclose()
    assert f"in Redis at redis://:***@127.0.0.1:{port}/0 could not be" in str(caught.value)
    assert caught.value.url == f"redis://:***@127.0.0.1:{port}/0"


@pytest.mark.parametrize(
    "client",
    [
        pytest.param({}, id="bytes"),  # a client of the application's that does not decode
        pytest.param({"protocol": 3, "decode_responses": True}, id="resp3"),
    ],
)
async def test_any_client_of_the_redis_reads_the_same_records(
    redis_server: RedisServer, redis_key: str, client: dict[str, Any]
) -> None:
    """A store on the application's own client (answers as bytes, or RESP3 maps)."""
    store = JobStore(aioredis.Redis.from_url(redis_server.url, **client), "the-redis")
    try:
        await store.write(redis_key, status="ok", urls=("u",))
        await store.add(redis_key, attempts=1, seconds=0.5, retries=0, refused={"x": 1})
        record = await store.record(redis_key)
        await store.create_job(redis_key, ["k1", "k2"], "/out")
        job = await store.job(redis_key)
        await store.announce(redis_key, 1, "ok")
        events = await store.events(redis_key, "0", block=None)
    finally:
        await store.aclose()
    assert (record.status, record.urls, record.attempts, record.refused) == (
        "ok", ("u",), 1, {"x": 1},
    )  # fmt: skip
    assert job is not None
    assert (job[0]["total"], job[1]) == ("2", ["k1", "k2"])
    assert [(event.index, event.outcome) for event in events] == [(1, "ok")]
    assert isinstance(events[0].id, str)


async def test_every_change_is_one_transaction(own_redis_server: RedisServer) -> None:
    """Each write is all or nothing (a MULTI/EXEC block): a key is never left without
    its expiry, nor a job without its list of images."""
    store = open_store(own_redis_server.url)
    stats = aioredis.Redis.from_url(own_redis_server.url, decode_responses=True)

    async def transactions() -> int:
        info = await stats.info("commandstats")
        multi = info.get("cmdstat_multi", {"calls": 0})["calls"]
        assert info.get("cmdstat_exec", {"calls": 0})["calls"] == multi
        return int(multi)

    try:
        changes = [
            store.write("k", status="ok"),
            store.add("k", attempts=1, seconds=0.1, retries=0, refused={}),
            store.create_job("j", ["k"], "/out"),
            store.announce("j", 0, "ok"),
        ]
        for number, change in enumerate(changes, 1):
            await change
            assert await transactions() == number
    finally:
        await stats.aclose()
        await store.aclose()


async def test_a_redis_that_stops_answering_fails_the_call_within_the_io_timeout(
    tmp_path: Path,
) -> None:
    """A server that takes the connection and never answers (10 s: the I/O timeout)."""
    taken: list[asyncio.StreamWriter] = []

    async def take(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        taken.append(writer)

    path = tmp_path / "mute-X"
    server = await asyncio.start_unix_server(take, path=str(path))
    store = JobStore.from_url(f"unix://{path}", "the mute Redis")
    try:
        with pytest.raises(SharedAllowanceError) as caught:
            await store.record("k")
    finally:
        await store.aclose()
        for writer in taken:
            writer.close()
        server.close()
        await server.wait_closed()
    assert str(caught.value) == (
        "the job records in Redis at the mute Redis could not be read or written "
        f"(TimeoutError: Timeout reading from {path}); check that Redis is up"
    )
