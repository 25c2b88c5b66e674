"""Where a shared allowance lives: Redis URLs read as redis-py reads them and shown
without their password, and one key per organization that does not reveal the API key
(two organizations on one real Redis never share a bound)."""

from __future__ import annotations

import asyncio
import hashlib
import traceback
from urllib.parse import quote

import pytest
import redis.asyncio as aioredis
import redis.asyncio.retry

import ideogram_async.limits
from ideogram_async import IdeogramClient, SharedAllowanceError, ValidationError
from ideogram_async.limits import (
    AllowanceWrapper,
    RedisAllowance,
    RedisLocation,
    location,
    organization_key,
    shared,
    shared_budget,
)
from ideogram_async.testing import Emulator, RedisServer

from ._support import KEY
from .test_redis_allowance import Entry, eventually

SECRET = "s3Kq/cr?tZ#w@rdQ"


@pytest.mark.parametrize(
    ("url", "shown", "host"),
    [
        ("redis://localhost", "redis://localhost:6379/0", "localhost:6379"),
        ("redis://:pw@10.0.0.5:6380/2", "redis://:***@10.0.0.5:6380/2", "10.0.0.5:6380"),
        (
            "rediss://worker:pw@cache.example:6390",
            "rediss://worker:***@cache.example:6390/0",
            "cache.example:6390",
        ),
        (f"redis://:{quote(SECRET, safe='')}@h:1/3", "redis://:***@h:1/3", "h:1"),
        ("redis://h/0?db=4", "redis://h:6379/4", "h:6379"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock", "/run/redis.sock"),
        ("REDIS://Cache:1/2", "redis://cache:1/2", "cache:1"),
        ("redis:///3", "redis://localhost:6379/3", "localhost:6379"),
        ("redis://worker@h", "redis://worker@h:6379/0", "h:6379"),
        ("unix://", "unix://", ""),
    ],
)
def test_a_url_is_shown_rebuilt_from_what_redis_py_reads(url: str, shown: str, host: str) -> None:
    allowance = RedisAllowance(url, key="k")
    assert (allowance.url, allowance.redis_host) == (shown, host)
    assert "pw" not in repr(allowance)
    assert SECRET not in repr(allowance)


@pytest.mark.parametrize(
    "password", ["kq9z/vx7w", "kq9z?vx7w", "kq9z#vx7w", "kq9z@vx7w/q1", "kq9z://vx7w", SECRET]
)
def test_a_password_with_reserved_characters_fails_clearly_without_showing_it(
    password: str,
) -> None:
    with pytest.raises(SharedAllowanceError, match="percent-encode") as caught:
        RedisAllowance(f"redis://user:{password}@cache.example:6379/0", key="k")
    shown = "".join(traceback.format_exception(caught.value))
    parts = {password, *password.replace("?", "/").replace("#", "/").split("/")} - {""}
    for part in parts:
        assert part not in shown
    assert caught.value.__cause__ is None
    assert caught.value.url == "redis://***"


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:6379", "redis://:hunter2@host:notaport/0", "redis:hunter2"],
)
def test_a_url_redis_py_cannot_read_is_a_shared_allowance_error(url: str) -> None:
    with pytest.raises(SharedAllowanceError, match="cannot be read") as caught:
        RedisAllowance(url, key="k")
    assert "hunter2" not in "".join(traceback.format_exception(caught.value))
    assert caught.value.__suppress_context__


@pytest.mark.parametrize(
    ("error", "told"),
    [
        ("Connect call failed ('10.0.0.5', 6380).", "Connect call failed ('10.0.0.5', 6380)"),
        ("Name or service not known: CACHE-BOX", "Name or service not known: CACHE-BOX"),
    ],
)
def test_a_redis_fault_is_told_with_the_url_shown_and_its_cause(error: str, told: str) -> None:
    where = RedisLocation.parse("redis://worker:pw@10.0.0.5:6380/1")
    shown = "redis://worker:***@10.0.0.5:6380/1"
    unreachable = where.unreachable("the shared budget", OSError(error))
    assert str(unreachable) == (
        f"cannot reach Redis at {shown} for the shared budget: {told}; "
        "check that the server runs and the URL is right"
    )
    lost = where.lost("the shared allowance", OSError(error))
    assert str(lost) == f"lost Redis at {shown} for the shared allowance: {error}"
    assert (unreachable.url, lost.url) == (shown, shown)


@pytest.mark.parametrize(
    ("url", "place"),
    [
        ("redis://h:7/2", "h:7/2"),
        ("rediss://h", "h:6379/0"),
        ("unix:///run/redis.sock?db=2", "/run/redis.sock"),
    ],
)
def test_where_the_keys_live_is_the_server_and_database(url: str, place: str) -> None:
    assert RedisLocation.parse(url).place == place


@pytest.mark.parametrize(
    ("url", "message", "shown"),
    [
        (6379, "the shared allowance needs a Redis URL as a string, not int", ""),
        (
            "HTTP://h:pw@host",
            "the Redis URL cannot be read: it must look like redis://[[user]:password@]"
            "host[:port][/db], rediss://... or unix:///path (the password percent-encoded)",
            "http://***",
        ),
        (
            "redis://u:a/b@h",
            "the Redis URL's password holds a character that ends the host part ('/', '?' or "
            "'#'); percent-encode it: urllib.parse.quote(password, safe='')",
            "redis://***",
        ),
    ],
)
def test_a_url_that_is_not_one_says_what_is_expected(url: object, message: str, shown: str) -> None:
    with pytest.raises(SharedAllowanceError) as caught:
        RedisLocation.parse(url)
    assert (str(caught.value), caught.value.url) == (message, shown)


@pytest.mark.parametrize("key", ["", "a{", "b}", "{a}", 5])
def test_a_key_must_be_a_name_without_braces(key: object) -> None:
    with pytest.raises(ValidationError) as caught:
        RedisAllowance("redis://localhost", key=key)  # type: ignore[arg-type]
    assert str(caught.value) == f"key must be a non-empty string without braces, not {key!r}"


async def test_a_password_percent_encoded_reaches_redis(own_redis_server: RedisServer) -> None:
    url = own_redis_server.url.replace("redis://", f"redis://:{quote(SECRET, safe='')}@")
    admin = aioredis.Redis.from_url(own_redis_server.url)
    await admin.config_set("requirepass", SECRET)
    await admin.aclose()
    async with RedisAllowance(url, 4, key="k") as allowance, allowance.hold(1):
        assert allowance.in_use == 1
    assert SECRET not in repr(allowance)


async def test_a_server_that_drops_every_connection_is_tried_four_times_then_unreachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A real socket that accepts and hangs up at once, like a Redis restarting.
    connections = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    waits: list[float] = []

    async def note_wait(seconds: float) -> None:  # the retries' backoff, noted, not waited
        waits.append(seconds)

    monkeypatch.setattr(redis.asyncio.retry, "sleep", note_wait)
    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        where = RedisLocation.parse(f"redis://:pw@127.0.0.1:{port}/0")
        with pytest.raises(SharedAllowanceError) as caught:
            await where.open("the shared budget")
    assert connections == 4
    assert waits == [0.1, 0.2, 0.4]
    assert str(caught.value) == (
        f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0 for the shared budget: "
        "Connection closed by server; check that the server runs and the URL is right"
    )
    assert isinstance(caught.value.__cause__, aioredis.ConnectionError)


async def test_a_connection_gives_up_on_a_silent_server_after_five_seconds(
    redis_server: RedisServer,
) -> None:
    # A server that accepts but stops answering fails the command instead of hanging it.
    client = await RedisLocation.parse(redis_server.url).open("the shared allowance")
    try:
        assert await client.ping()
        settings = client.connection_pool.connection_kwargs
        assert (settings["socket_connect_timeout"], settings["socket_timeout"]) == (5.0, 5.0)
    finally:
        await client.aclose()


def test_the_organization_key_is_a_digest_of_the_api_key_and_host() -> None:
    key = organization_key("sk-secret-1", "https://api.ideogram.ai")
    assert key.startswith("ideogram_async:")
    assert len(key) == len("ideogram_async:") + 24
    assert "sk-secret-1" not in key
    assert key == organization_key("sk-secret-1", "https://API.ideogram.ai/some/path")
    others = {
        organization_key("sk-secret-2", "https://api.ideogram.ai"),
        organization_key("sk-secret-1", "https://proxy.example"),
        organization_key("sk-secret-1", "https://api.ideogram.ai:8443"),
    }
    assert key not in others
    assert len(others) == 3


@pytest.mark.parametrize(
    ("base_url", "host"),
    [
        ("https://API.Ideogram.ai/v1", "api.ideogram.ai"),
        ("https://api.ideogram.ai:8443", "api.ideogram.ai:8443"),
        ("", ""),
    ],
)
def test_the_organization_key_stays_the_same_across_versions(base_url: str, host: str) -> None:
    # Processes running different releases must find each other's allowance: the key is
    # the digest of the lower-cased host (its port only when one is given) and the API key.
    digest = hashlib.sha256(f"ideogram_async allowance\0{host}\0sk-secret-1".encode())
    expected = "ideogram_async:" + digest.hexdigest()[:24]
    assert organization_key("sk-secret-1", base_url) == expected


def test_the_redis_parts_are_reached_through_the_package() -> None:
    limits = ideogram_async.limits
    assert limits.RedisAllowance is shared.RedisAllowance
    assert limits.RedisBudget is shared_budget.RedisBudget
    assert limits.organization_key is location.organization_key
    assert limits.RedisLocation is location.RedisLocation
    with pytest.raises(AttributeError, match=r"^module 'ideogram_async\.limits' has no attribute"):
        getattr(limits, "RedisThing")  # noqa: B009


async def test_a_client_keys_the_shared_allowance_by_its_organization() -> None:
    allowance = RedisAllowance("redis://127.0.0.1:9/0", 10)
    assert allowance.key is None
    with pytest.raises(ValidationError, match="no key yet"):
        async with allowance.hold(1):
            pytest.fail("entered")
    async with IdeogramClient(api_key=KEY, base_url="http://127.0.0.1:9", allowance=allowance):
        assert allowance.key == organization_key(KEY, "http://127.0.0.1:9")
        # The same organization again: fine; another one: refused, one allowance each.
        IdeogramClient(api_key=KEY, base_url="http://127.0.0.1:9", allowance=allowance)
        with pytest.raises(ValidationError) as caught:
            IdeogramClient(api_key="sk-other", base_url="http://127.0.0.1:9", allowance=allowance)
        assert str(caught.value) == (
            "this RedisAllowance already serves another organization (another API key or API "
            "host): give each organization its own RedisAllowance, or name the allowance with key="
        )
    assert KEY not in repr(allowance)


async def test_two_organizations_on_one_redis_never_share_a_bound(
    redis_server: RedisServer, png_bytes: bytes
) -> None:
    url = redis_server.url
    other = "sk-other-organization"
    async with (
        Emulator(api_key=KEY, upscale=False) as emulator,
        # Each allowance keyed by the client it is given to: the default, one per organization.
        RedisAllowance(url, 3) as ours,
        RedisAllowance(url, 3) as theirs,
        RedisAllowance(url, 3) as theirs_too,  # another process of the other organization
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, allowance=ours) as client,
        IdeogramClient(api_key=other, base_url=emulator.base_url, allowance=theirs),
        IdeogramClient(api_key=other, base_url=emulator.base_url, allowance=theirs_too),
    ):
        assert ours.key != theirs.key == theirs_too.key  # the same host: only the key differs
        async with theirs.hold(3):
            await theirs.rejected(2)  # their 429 named 2 places: their bound is 2
        async with theirs.hold(2):  # the other organization's allowance is full
            waiter = Entry(theirs_too, 1)
            await eventually(lambda: theirs_too.in_use == 2, "their waiter never tried")
            # Our three calls are granted at once, in flight together: none of their places
            # counts against our bound (a shared one would let one in at most, or none).
            emulator.pause()
            calls = asyncio.gather(*(client.upscale(png_bytes) for _ in range(3)))
            try:
                async with asyncio.timeout(10):
                    await emulator.wait_places(3)
            finally:
                emulator.resume()
                await calls
            assert not waiter.entered.is_set()  # they still wait for their own place
            # Each organization reports its own bound and what it holds.
            assert (ours.limit, ours.in_use) == (3, 0)
            assert (theirs.limit, theirs_too.limit, theirs_too.in_use) == (2, 2, 2)
        await waiter.entered.wait()
        await waiter.done()
    assert emulator.stats.responses_by_status == {200: 3}


def test_a_wrapper_passes_the_organization_on_to_the_shared_allowance() -> None:
    inner = RedisAllowance("redis://127.0.0.1:9/0", 10)
    AllowanceWrapper(inner).bind_organization(api_key=KEY, base_url="http://127.0.0.1:9")
    assert inner.key == organization_key(KEY, "http://127.0.0.1:9")


def test_a_named_key_is_kept_whoever_uses_it() -> None:
    allowance = RedisAllowance("redis://127.0.0.1:9/0", 10, key="team-a")
    IdeogramClient(api_key=KEY, base_url="http://127.0.0.1:9", allowance=allowance)
    IdeogramClient(api_key="sk-other", base_url="http://127.0.0.1:9", allowance=allowance)
    assert allowance.key == "team-a"


async def test_with_options_keeps_a_shared_allowance_to_its_organization() -> None:
    allowance = RedisAllowance("redis://127.0.0.1:9/0", 10)
    async with IdeogramClient(
        api_key=KEY, base_url="http://127.0.0.1:9", allowance=allowance
    ) as client:
        key = allowance.key
        # The same organization (the same key, another path on the same host): shared.
        derived = client.with_options(base_url="http://127.0.0.1:9/v1", api_key=KEY)
        assert derived.allowance is allowance
        # Another key or another host would share a bound that is not its organization's.
        changes = [("sk-other", None), (None, "http://localhost:9")]
        for api_key, base_url in changes:
            with pytest.raises(ValidationError, match=r"with_options.*another organization") as e:
                client.with_options(api_key=api_key, base_url=base_url)
            assert "sk-other" not in str(e.value)
            assert KEY not in str(e.value)
            assert e.value.__suppress_context__
        assert allowance.key == key


def test_with_options_shares_a_named_allowance_whatever_the_key() -> None:
    allowance = RedisAllowance("redis://127.0.0.1:9/0", 10, key="team-a")
    client = IdeogramClient(api_key=KEY, base_url="http://127.0.0.1:9", allowance=allowance)
    derived = client.with_options(api_key="sk-other")
    assert derived.allowance is allowance
    assert allowance.key == "team-a"
