"""Redis losing the shared allowance's data mid-run (FLUSHALL, a restart without
persistence) never lets the organization's bound be passed.

Real parts: worker processes, each with its own RedisAllowance on one key, a real
redis-server flushed and then restarted while requests are in flight, and the
emulator over real sockets enforcing the bound (a request over it is refused, 429).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import redis.asyncio as aioredis

from ideogram_async.limits import RedisAllowance
from ideogram_async.testing import Emulator, RedisServer

from ._support import KEY, release, start_workers
from .test_redis_allowance import deaf

LEASE = 1.0


async def places_held(url: str, key: str) -> list[int]:
    """The places each registered hold of ``key`` has in Redis, sorted."""
    client = aioredis.Redis.from_url(url)
    try:
        return sorted(int(places) for places in await client.hvals(f"{{{key}}}:places"))
    finally:
        await client.aclose()


WORKER = """
import asyncio, sys
from ideogram_async import IdeogramClient, SharedAllowanceError
from ideogram_async.limits import RedisAllowance

async def main(base_url, redis_url, key, image, count, lease):
    async with (
        RedisAllowance(redis_url, 10, key=key, lease=float(lease)) as allowance,
        IdeogramClient(base_url=base_url, allowance=allowance) as client,
    ):
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)

        async def one():
            while True:  # while Redis is down, a call fails: this worker tries again
                try:
                    await client.upscale(image)
                    print("done", flush=True)
                    return
                except SharedAllowanceError:
                    await asyncio.sleep(0.1)

        await asyncio.gather(*(one() for _ in range(int(count))))

asyncio.run(main(*sys.argv[1:]))
"""


async def test_flushed_and_restarted_redis_never_lets_the_bound_be_passed(
    own_redis_server: RedisServer, redis_key: str, tmp_path: Path, png_bytes: bytes
) -> None:
    image = tmp_path / "photo.png"
    image.write_bytes(png_bytes)
    environment = os.environ | {"IDEOGRAM_API_KEY": KEY}
    # A latency of two leases: after the flush, grants may wait up to one lease (the quiet
    # period), and all of the next round must still be in flight together for the restart.
    async with Emulator(api_key=KEY, allowance=10, latency=2 * LEASE, upscale=False) as emulator:
        arguments = [emulator.base_url, own_redis_server.url, redis_key, str(image)]
        workers = await start_workers(WORKER, [[*arguments, "10", str(LEASE)]] * 3, environment)
        await release(workers)
        await emulator.wait_places(10)  # 10 in flight, 20 waiting in the shared queue
        own_redis_server.flush()  # every holder, ticket and the bound are gone
        first = workers[0].stdout
        assert first is not None
        assert await first.readline() == b"done\n"  # the first round ended
        await emulator.wait_places(10)  # the next one is in flight
        own_redis_server.stop()
        own_redis_server.start()  # empty again
        for worker in workers:
            assert await worker.wait() == 0
    stats = emulator.stats
    assert stats.responses_by_status == {200: 30}
    assert stats.rejected_over_allowance == 0  # never more than 10 in flight
    assert stats.peak_places_in_use == 10


async def test_a_waiter_after_the_loss_is_granted_once_the_holds_are_registered_again(
    own_redis_server: RedisServer, redis_key: str
) -> None:
    url = own_redis_server.url
    async with (
        RedisAllowance(url, 10, key=redis_key, lease=LEASE) as a,
        RedisAllowance(url, 10, key=redis_key, lease=LEASE) as b,
        a.hold(8),
    ):
        async with b.hold(1):
            pass  # b knows the allowance's epoch now
        own_redis_server.flush()
        # b finds the state gone: nothing is granted until a's 8 are registered
        # again (a hears "lost" and does at once; in any case within one lease).
        async with b.hold(2):
            assert await places_held(url, redis_key) == [2, 8]


async def test_a_key_first_used_by_a_refusal_still_tells_a_later_loss(
    own_redis_server: RedisServer, redis_key: str
) -> None:
    url = own_redis_server.url
    async with (
        RedisAllowance(url, 10, key=redis_key, lease=LEASE, adaptive=False) as a,
        RedisAllowance(url, 10, key=redis_key, lease=LEASE, adaptive=False) as b,
    ):
        await b.rejected(4)  # the key's first use: a refusal outside any hold
        client = aioredis.Redis.from_url(url)
        try:
            assert await client.get(f"{{{redis_key}}}:epoch")  # a real epoch, not an empty one
        finally:
            await client.aclose()
        async with a.hold(3):
            async with b.hold(1):
                pass  # b knows the allowance's epoch now
            own_redis_server.flush()
            # b finds the state gone: nothing is granted until a's 3 are registered again.
            async with b.hold(1):
                assert await places_held(url, redis_key) == [1, 3]


async def test_a_holder_that_never_registers_again_holds_every_grant_back_for_one_lease(
    own_redis_server: RedisServer, redis_key: str
) -> None:
    url = own_redis_server.url
    loop = asyncio.get_running_loop()
    async with (
        # a hears no message and renews every 10 s: after the loss its 8 places stay
        # unregistered for the whole test, as if its renewals had stopped.
        deaf(RedisAllowance(url, 10, key=redis_key, lease=30)) as a,
        RedisAllowance(url, 10, key=redis_key, lease=LEASE) as b,
        a.hold(8),
    ):
        async with b.hold(1):
            pass  # b knows the allowance's epoch now
        own_redis_server.flush()
        lost = loop.time()
        # b cannot tell who held what: nothing is granted until one lease (b's) has
        # passed, time for every live holder to register again; then b's 2 go in.
        async with asyncio.timeout(5 * LEASE), b.hold(2):
            waited = loop.time() - lost
            assert await places_held(url, redis_key) == [2]  # a's 8 never came back
    assert waited >= 0.8 * LEASE


async def test_a_newcomer_after_the_loss_waits_for_the_holds_it_never_knew_of(
    own_redis_server: RedisServer, redis_key: str
) -> None:
    url = own_redis_server.url
    async with RedisAllowance(url, 10, key=redis_key, lease=LEASE) as a, a.hold(8):
        own_redis_server.flush()
        # c never used the allowance: it cannot tell the loss from a first use, but a,
        # which knew the old epoch, answers its "lost": a's 8 are registered again and
        # nothing is granted for one lease. Granted at once, c's 2 would have made 10
        # in Redis's eyes and 18 in flight.
        async with (
            RedisAllowance(url, 10, key=redis_key, lease=LEASE) as c,
            asyncio.timeout(5 * LEASE),
            c.hold(2),
        ):
            assert await places_held(url, redis_key) == [2, 8]


async def test_the_first_use_waits_only_for_the_answers_of_those_listening(
    own_redis_server: RedisServer, redis_key: str
) -> None:
    url = own_redis_server.url
    async with (
        RedisAllowance(url, 10, key=redis_key, lease=30) as a,
        RedisAllowance(url, 10, key=redis_key, lease=30) as b,
        RedisAllowance(url, 10, key=redis_key, lease=30) as c,
    ):
        for allowance in (a, b, c):
            await allowance._ready()  # subscribed: each hears the first use and answers
        # Nobody knew an epoch: a first use. The wait ends with the third answer, not
        # after the 30 s lease.
        async with asyncio.timeout(5), a.hold(3):
            assert await places_held(url, redis_key) == [3]
        client = aioredis.Redis.from_url(url)
        try:
            assert await client.exists(f"{{{redis_key}}}:quiet") == 0
        finally:
            await client.aclose()


async def test_an_answer_from_a_process_that_knew_the_allowance_makes_the_wait_a_lease(
    own_redis_server: RedisServer, redis_key: str
) -> None:
    url = own_redis_server.url
    loop = asyncio.get_running_loop()
    async with (
        RedisAllowance(url, 10, key=redis_key, lease=LEASE) as a,
        # d hears nothing and renews every 10 s: its 4 stay unregistered in this test.
        deaf(RedisAllowance(url, 10, key=redis_key, lease=30)) as d,
        a.hold(4),
        d.hold(4),
    ):
        own_redis_server.flush()
        lost = loop.time()
        # c (new) and a hear c's "lost"; a knew the old epoch, so the loss is real and
        # others may hold places unheard (d): nothing is granted for one lease, not
        # just until the two answers are in.
        async with (
            RedisAllowance(url, 10, key=redis_key, lease=LEASE) as c,
            asyncio.timeout(5 * LEASE),
            c.hold(2),
        ):
            waited = loop.time() - lost
            assert await places_held(url, redis_key) == [2, 4]  # a's; d's never came back
    assert waited >= 0.8 * LEASE
