"""One frozen settings object: read-only properties, ``with_options``, per-call overrides."""

from __future__ import annotations

import asyncio

import pytest

from ideogram_async import (
    APITimeoutError,
    IdeogramClient,
    RetryPolicy,
    ServerError,
    Timeouts,
    ValidationError,
)
from ideogram_async.limits import RedisAllowance
from ideogram_async.testing import Emulator, Fault, FaultPlan
from ideogram_async.v2 import TopazBloom2

from ._support import KEY, make_image

PNG = make_image()
SETTINGS = [
    "flavor",
    "base_url",
    "allowance",
    "requests_per_second",
    "timeouts",
    "retry",
    "on_retry",
    "max_file_size",
    "max_download_size",
    "max_response_size",
    "v2",
]


@pytest.mark.parametrize("name", SETTINGS)
def test_a_setting_cannot_be_assigned(name: str) -> None:
    client = IdeogramClient(api_key=KEY, base_url="http://127.0.0.1:9")
    before = getattr(client, name)
    with pytest.raises(AttributeError):
        setattr(client, name, before)
    assert getattr(client, name) is before


async def test_a_derived_client_shares_the_session_and_the_allowance() -> None:
    fails = FaultPlan.always(Fault.status(503))
    async with (
        Emulator(api_key=KEY, upscale=False, faults=fails) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, allowance=3) as client,
    ):
        once = client.with_options(retry=RetryPolicy.no_retries())
        assert once.allowance is client.allowance
        assert once._shared.pool.session() is client._shared.pool.session()
        with pytest.raises(ServerError) as caught:
            await once.upscale(PNG)
        assert caught.value.attempts == 1 == emulator.stats.requests
        assert client.retry == RetryPolicy()  # the original keeps its own
        assert once.retry == RetryPolicy.no_retries()
        await once.aclose()
        assert client.closed  # one session: closing either closes it


async def test_a_changed_base_url_is_used_by_v1_and_v2_alike() -> None:
    async with (
        Emulator(api_key=KEY, upscale=False) as first,
        Emulator(api_key=KEY, upscale=False) as second,
        IdeogramClient(api_key=KEY, base_url=first.base_url, flavor="official") as client,
    ):
        moved = client.with_options(base_url=second.base_url)
        await moved.upscale(PNG)
        await moved.v2.upscale(PNG, TopazBloom2())
        await client.upscale(PNG)
    assert (moved.base_url, client.base_url) == (second.base_url, first.base_url)
    assert (len(second.stats.uploads), len(second.stats.v2_uploads)) == (1, 1)
    assert (len(first.stats.uploads), len(first.stats.v2_uploads)) == (1, 0)


def test_changed_settings_are_checked_like_the_constructors() -> None:
    client = IdeogramClient(api_key=KEY, base_url="http://127.0.0.1:9")
    with pytest.raises(ValidationError, match="max_file_size must be an int >= 1, got 0"):
        client.with_options(max_file_size=0)
    with pytest.raises(ValidationError, match="base_url must start with http"):
        client.with_options(base_url="ftp://x")
    with pytest.raises(ValidationError, match="timeouts must be a Timeouts, got int"):
        client.with_options(timeouts=5)  # type: ignore[arg-type]
    official = client.with_options(flavor="official", api_key="other-key")
    assert (official.flavor.value, official.base_url) == ("official", "http://127.0.0.1:9")
    assert "other-key" not in repr(official)


async def test_a_calls_own_timeouts_apply_to_that_call_only() -> None:
    async with (
        Emulator(api_key=KEY, upscale=False) as emulator,
        IdeogramClient(
            api_key=KEY, base_url=emulator.base_url, retry=RetryPolicy.no_retries()
        ) as client,
    ):
        with pytest.raises(ValidationError, match="timeouts must be a Timeouts, got float"):
            await client.upscale(PNG, timeouts=1.0)  # type: ignore[arg-type]
        emulator.pause()
        with pytest.raises(APITimeoutError) as caught:
            await client.upscale(PNG, timeouts=Timeouts(attempt=0.05))
        assert caught.value.kind == "attempt"
        assert "after 0.05s (Timeouts.attempt)" in str(caught.value)
        slow = asyncio.create_task(client.upscale(PNG))  # the client's 180 s still holds
        await emulator.wait_in_flight(1)
        assert not slow.done()
        emulator.resume()
        await slow
    assert client.timeouts == Timeouts()


def test_with_options_changes_what_it_is_given_and_keeps_the_rest() -> None:
    def hook(_: object) -> None:
        """A retry hook."""

    def other_hook(_: object) -> None:
        """Another retry hook."""

    client = IdeogramClient(
        api_key=KEY,
        base_url="http://127.0.0.1:9",
        allowance=3,
        requests_per_second=5,
        timeouts=Timeouts(attempt=3),
        retry=RetryPolicy(attempts=2),
        max_file_size=1000,
        max_download_size=2000,
        max_response_size=3000,
        on_retry=hook,
    )
    same = client.with_options()
    for name in SETTINGS[:-1]:
        assert getattr(same, name) == getattr(client, name), name
    assert repr(same) == repr(client)  # the same allowance, in the settings too
    changed = client.with_options(
        flavor="official",
        timeouts=Timeouts(attempt=4),
        retry=RetryPolicy(attempts=5),
        max_file_size=6,
        max_download_size=7,
        max_response_size=8,
        on_retry=other_hook,
    )
    assert (changed.flavor.value, changed.base_url) == ("official", client.base_url)
    assert (changed.timeouts, changed.retry) == (Timeouts(attempt=4), RetryPolicy(attempts=5))
    assert (changed.max_file_size, changed.max_download_size, changed.max_response_size) == (
        6,
        7,
        8,
    )
    assert changed.on_retry is other_hook
    assert (changed.allowance, changed.requests_per_second) == (client.allowance, 5)


async def test_with_options_sends_the_key_it_is_given() -> None:
    async with (
        Emulator(api_key=KEY, upscale=False) as emulator,
        IdeogramClient(api_key="sk-old", base_url=emulator.base_url) as client,
    ):
        answer = await client.with_options(api_key=KEY).upscale(PNG)
    assert answer.data
    assert emulator.stats.requests == 1


def test_with_options_refuses_another_organization_for_a_keyed_shared_allowance() -> None:
    allowance = RedisAllowance("redis://127.0.0.1:9/0", 10)
    client = IdeogramClient(api_key=KEY, base_url="http://127.0.0.1:9", allowance=allowance)
    with pytest.raises(ValidationError) as caught:
        client.with_options(api_key="sk-other")
    assert str(caught.value) == (
        "with_options(api_key=/base_url=) names another organization (another API key or "
        "API host), but the derived client would share this client's RedisAllowance, which "
        "serves this one's: create a new IdeogramClient with its own RedisAllowance for the "
        "other organization"
    )
