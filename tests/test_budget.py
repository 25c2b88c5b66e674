"""The spend budget: LocalBudget, RedisBudget on a real redis-server, and one run's spending."""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
from decimal import Decimal
from typing import cast

import pytest
import redis.asyncio as aioredis

from ideogram_async import (
    APIConnectionError,
    BadRequestError,
    Budget,
    BudgetExceededError,
    ClientClosedError,
    IdeogramError,
    LocalBudget,
    SharedAllowanceError,
    ValidationError,
)
from ideogram_async.limits import RedisBudget
from ideogram_async.limits.budget import BudgetRun, as_budget, usd_text
from ideogram_async.testing import RedisServer, free_port


async def totals(url: str, key: str) -> tuple[int, int]:
    """(spent, reserved) in micro-dollars as stored in Redis for ``key``."""
    client = aioredis.Redis.from_url(url)
    try:
        spent, reserved = await client.hmget(f"{{{key}}}:budget", ["spent", "reserved"])
    finally:
        await client.aclose()
    return int(spent or 0), int(reserved or 0)


# -- LocalBudget ----------------------------------------------------------------------


async def test_a_reservation_fits_or_is_refused_with_the_numbers() -> None:
    budget = LocalBudget("0.10")
    first = await budget.reserve(Decimal("0.06"))
    assert (budget.spent, budget.reserved) == (Decimal(0), Decimal("0.06"))
    with pytest.raises(BudgetExceededError) as caught:
        await budget.reserve(Decimal("0.05"))
    error = caught.value
    assert isinstance(error, IdeogramError)
    assert (error.max_usd, error.spent, error.reserved, error.needed) == (
        Decimal("0.1"),
        Decimal(0),
        Decimal("0.06"),
        Decimal("0.05"),
    )
    assert not error.skipped
    assert "the budget of $0.10 (max_usd) would be passed" in str(error)
    assert "needs up to $0.05 and $0.04 is left" in str(error)
    assert budget.reserved == Decimal("0.06")  # a refusal holds nothing
    await budget.reserve(Decimal("0.04"))  # exactly up to the budget fits
    await first.give_back()
    assert (budget.spent, budget.reserved) == (Decimal(0), Decimal("0.04"))


async def test_commit_counts_the_reservation_or_the_bill_once() -> None:
    budget = LocalBudget(1)
    estimate = await budget.reserve(Decimal("0.015"))
    await estimate.commit()
    exact = await budget.reserve(Decimal("0.015"))
    await exact.commit(Decimal("0.010"))  # the bill, below the upper bound reserved
    assert (budget.spent, budget.reserved) == (Decimal("0.025"), Decimal(0))
    await exact.commit()
    await exact.give_back()  # settling again changes nothing
    assert exact.settled
    assert budget.spent == Decimal("0.025")
    assert repr(exact) == "Reservation(usd=$0.015, settled)"


async def test_amounts_are_exact_micro_dollars() -> None:
    budget = LocalBudget(0.3)  # a float is read as it prints
    for _ in range(3):
        await budget.reserve(0.1)  # 0.1 + 0.1 + 0.1 > 0.3 in binary floating point
    assert budget.reserved == Decimal("0.3")
    with pytest.raises(BudgetExceededError):
        await budget.reserve(Decimal("0.000001"))
    rounded = await LocalBudget(1).reserve(Decimal("0.0000001"))  # a price rounds up
    assert rounded.usd == Decimal("0.000001")
    assert LocalBudget("0.0000019").max_usd == Decimal("0.000001")  # a budget rounds down
    assert LocalBudget(1_000_000_000).max_usd == Decimal(1_000_000_000)  # the largest taken


async def test_a_refusal_counts_what_was_spent_and_what_is_held() -> None:
    budget = LocalBudget("0.10")
    spent = await budget.reserve(Decimal("0.03"))
    await spent.commit()
    held = await budget.reserve(Decimal("0.05"))
    assert repr(held) == "Reservation(usd=$0.05, held)"
    assert held.settled is False
    assert repr(budget) == "LocalBudget(max_usd=$0.10, spent=$0.03, reserved=$0.05)"
    with pytest.raises(BudgetExceededError) as caught:
        await budget.reserve(Decimal("0.03"))
    assert "needs up to $0.03 and $0.02 is left ($0.03 spent, $0.05 held" in str(caught.value)


async def test_a_bill_is_checked_and_rounded_up_like_a_price() -> None:
    budget = LocalBudget(1)
    with pytest.raises(ValidationError, match=r"^usd must be an amount in US dollars"):
        await budget.reserve("lots")
    reservation = await budget.reserve(Decimal("0.01"))
    with pytest.raises(ValidationError, match=r"^usd must be a finite amount"):
        await reservation.commit(Decimal(-1))
    assert not reservation.settled  # a bad bill settles nothing
    await reservation.commit(Decimal("0.0000001"))  # a fraction of a micro-dollar is billed
    assert (budget.spent, budget.reserved) == (Decimal("0.000001"), Decimal(0))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "must be an amount in US dollars"),
        ("five", "must be an amount in US dollars"),
        (float("nan"), "finite amount >= 0"),
        (-1, "finite amount >= 0"),
        (0, r"at least \$0\.000001"),
        ("1e10", r"at most \$1,000,000,000"),
    ],
)
def test_a_bad_budget_is_refused(value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        LocalBudget(value)  # type: ignore[arg-type]


def test_a_number_becomes_a_local_budget_and_a_budget_is_kept() -> None:
    budget = LocalBudget(5)
    assert as_budget(budget) is budget
    made = as_budget("2.5")
    assert isinstance(made, LocalBudget)
    assert isinstance(made, Budget)
    assert made.max_usd == Decimal("2.5")
    with pytest.raises(ValidationError, match=r"or a Budget .*, not list$"):
        as_budget([5])


def test_dollars_show_cents_and_the_digits_that_matter() -> None:
    assert [usd_text(Decimal(v)) for v in ("5", "0.048", "0.1", "12.000001")] == [
        "$5.00",
        "$0.048",
        "$0.10",
        "$12.000001",
    ]


# -- one run's spending ------------------------------------------------------------------


async def test_a_run_stops_at_its_first_refusal_and_skips_the_rest() -> None:
    budget = LocalBudget("0.02")
    run = BudgetRun(budget)
    sent: list[str] = []

    async def price() -> Decimal:
        return Decimal("0.015")

    async def call() -> str:
        sent.append("call")
        return "done"

    assert await run.spend(price, call) == "done"
    with pytest.raises(BudgetExceededError) as refused:
        await run.spend(price, call)
    priced: list[int] = []

    async def cheap() -> Decimal:
        priced.append(1)
        return Decimal("0.001")

    with pytest.raises(BudgetExceededError) as skipped:
        await run.spend(cheap, call)  # it would fit, but the run has stopped
    assert sent == ["call"]
    assert priced == []
    assert run.stopped is refused.value
    assert skipped.value.skipped
    first = refused.value
    assert (skipped.value.max_usd, skipped.value.needed) == (Decimal("0.02"), Decimal("0.015"))
    assert (skipped.value.spent, skipped.value.reserved) == (first.spent, first.reserved)
    assert (first.spent, first.reserved) == (Decimal("0.015"), Decimal(0))
    assert "not sent: the budget of $0.02 (max_usd) stopped the run" in str(skipped.value)
    assert (budget.spent, budget.reserved) == (Decimal("0.015"), Decimal(0))


@pytest.mark.parametrize(
    ("error", "kept"),
    [
        (BadRequestError("no", status=400), False),
        (APIConnectionError("refused"), False),
        (APIConnectionError("reset after the upload", body_sent=True), True),
        (asyncio.CancelledError(), True),
    ],
)
async def test_a_failed_call_gives_back_unless_it_may_have_been_billed(
    error: BaseException, kept: bool
) -> None:
    budget = LocalBudget(1)
    run = BudgetRun(budget)

    async def price() -> Decimal:
        return Decimal("0.25")

    async def call() -> None:
        raise error

    with pytest.raises(type(error)):
        await run.spend(price, call)
    assert budget.spent == (Decimal("0.25") if kept else Decimal(0))
    assert budget.reserved == Decimal(0)


# -- RedisBudget ------------------------------------------------------------------------


async def test_instances_with_one_key_share_the_budget(
    redis_server: RedisServer, redis_key: str
) -> None:
    async with (
        RedisBudget(redis_server.url, "0.10", key=redis_key) as a,
        RedisBudget(redis_server.url, "0.10", key=redis_key) as b,
        RedisBudget(redis_server.url, "0.10", key=redis_key + "-other") as other,
    ):
        assert isinstance(a, Budget)
        held = await a.reserve(Decimal("0.06"))
        with pytest.raises(BudgetExceededError) as caught:
            await b.reserve(Decimal("0.05"))
        assert (caught.value.spent, caught.value.reserved) == (Decimal(0), Decimal("0.06"))
        await other.reserve(Decimal("0.10"))  # another key, another budget
        await held.commit(Decimal("0.05"))
        assert (a.spent, a.reserved) == (Decimal("0.05"), Decimal(0))
        last = await b.reserve(Decimal("0.05"))
        await last.give_back()
        assert await totals(redis_server.url, redis_key) == (50_000, 0)


async def test_racing_reservations_never_pass_the_budget(
    redis_server: RedisServer, redis_key: str
) -> None:
    budgets = [RedisBudget(redis_server.url, "1.00", key=redis_key) for _ in range(4)]
    try:

        async def one(number: int) -> bool:
            try:
                reservation = await budgets[number % 4].reserve(Decimal("0.03"))
            except BudgetExceededError:
                return False
            await reservation.commit()
            return True

        granted = await asyncio.gather(*(one(number) for number in range(200)))
    finally:
        for budget in budgets:
            await budget.aclose()
    assert sum(granted) == 33  # 33 x $0.03 = $0.99; a 34th would pass $1.00
    assert await totals(redis_server.url, redis_key) == (990_000, 0)


async def test_a_lapsed_reservation_counts_as_spent_until_settled(
    redis_server: RedisServer, redis_key: str
) -> None:
    async with (
        RedisBudget(redis_server.url, 1, key=redis_key) as dying,
        RedisBudget(redis_server.url, 1, key=redis_key) as other,
    ):
        await dying.reserve(Decimal("0.40"))  # its process dies: it is never settled
        late = await dying.reserve(Decimal("0.30"))  # one settled after its lease
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            leases = f"{{{redis_key}}}:budget:leases"
            await client.zunionstore(leases, {leases: 0})  # every lease ended at time 0
        finally:
            await client.aclose()
        with pytest.raises(BudgetExceededError) as caught:
            await other.reserve(Decimal("0.31"))
        assert (caught.value.spent, caught.value.reserved) == (Decimal("0.70"), Decimal(0))
        await late.give_back()  # the late settlement corrects what its lease end counted
        assert await totals(redis_server.url, redis_key) == (400_000, 0)
        await other.reserve(Decimal("0.60"))


async def test_a_settlement_without_redis_leaves_the_reservation_to_its_lease(
    own_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = own_redis_server.url
    async with RedisBudget(url, 1, key="job") as budget:
        reservation = await budget.reserve(Decimal("0.25"))
        own_redis_server.stop()
        with caplog.at_level(logging.WARNING, logger="ideogram_async"):
            await reservation.commit()  # the upscale's result is not failed by its bookkeeping
        host = url.removeprefix("redis://").partition("/")[0]
        with pytest.raises(SharedAllowanceError, match=f"lost Redis at {url} .*to {host}"):
            await budget.reserve(Decimal("0.01"))  # nothing can be reserved without Redis
    assert reservation.settled
    assert (budget.spent, budget.reserved) == (Decimal(0), Decimal("0.25"))  # as last seen
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = record.getMessage()
    assert message.startswith(f"lost Redis at {url} for the shared budget: ")
    assert message.endswith("; the reservation counts as spent when its lease ends")
    assert f"connecting to {host}" in message  # what failed, from redis-py


async def test_a_closed_budget_says_so_and_reserves_nothing(
    redis_server: RedisServer, redis_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    budget = RedisBudget(redis_server.url, 1, key=redis_key)
    with caplog.at_level(logging.DEBUG):
        await (await budget.reserve(Decimal("0.50"))).commit()
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    await budget.reserve(Decimal("0.25"))
    await budget.aclose()
    with pytest.raises(ClientClosedError, match=r"^this RedisBudget was closed; create a new one$"):
        await budget.reserve(Decimal("0.25"))
    assert await totals(redis_server.url, redis_key) == (500_000, 250_000)


async def test_the_shared_state_lives_under_the_key_for_its_lease_and_ttl(
    redis_server: RedisServer, redis_key: str
) -> None:
    client = aioredis.Redis.from_url(redis_server.url)

    async def now_ms() -> int:
        seconds, micros = await client.time()
        return seconds * 1000 + micros // 1000

    try:
        for budget, lease_ms, ttl_ms in (
            (RedisBudget(redis_server.url, 1, key=redis_key), 3_600_000, 86_400_000),
            (RedisBudget(redis_server.url, 1, key=redis_key, lease=2, ttl=5), 2000, 5000),
        ):
            async with budget:
                before = await now_ms()
                held = await budget.reserve(Decimal("0.0000001"))  # rounded up, as a price
                after = await now_ms()
                assert budget.reserved == Decimal("0.000001")
                tag = f"{{{redis_key}}}:"
                found = cast("list[bytes]", await client.keys(tag + "*"))
                names = sorted(key.decode() for key in found)
                assert names == [tag + "budget", tag + "budget:held", tag + "budget:leases"]
                leases = await client.zrange(tag + "budget:leases", 0, -1, withscores=True)
                [(_, ends)] = cast("list[tuple[bytes, float]]", leases)
                assert before + lease_ms <= ends <= after + lease_ms
                for name in names:
                    assert ttl_ms - (after - before) - 1000 < await client.pttl(name) <= ttl_ms
                await held.give_back()
    finally:
        await client.aclose()


async def test_settings_are_checked_and_the_password_is_never_shown() -> None:
    with pytest.raises(ValidationError, match="must be a Redis URL"):
        RedisBudget("http://user:hunter2@localhost", 1)
    with pytest.raises(ValidationError, match="without braces"):
        RedisBudget("redis://localhost", 1, key="{x}")
    with pytest.raises(
        ValidationError, match=r"\(schemes: redis, rediss, unix\), not 'http://\*\*\*'"
    ):
        RedisBudget("http://localhost", 1)
    for name in ("lease", "ttl"):
        for seconds in (0.5, True, "5"):
            with pytest.raises(ValidationError, match=f"^{name} must be a number of seconds >= 1"):
                RedisBudget("redis://localhost", 1, **{name: seconds})  # type: ignore[arg-type]
    RedisBudget("redis://localhost", 1, lease=1, ttl=1)  # a second each is enough
    with pytest.raises(ValidationError, match=r"^usd must be an amount"):
        await RedisBudget("redis://localhost", 1).reserve("lots")
    budget = RedisBudget(f"redis://user:hunter2@127.0.0.1:{free_port()}/0", 5)
    assert "hunter2" not in repr(budget)
    assert budget.url == "redis://user:***@127.0.0.1:" + budget.url.rpartition(":")[2]
    assert budget.key == "ideogram_async"
    with pytest.raises(SharedAllowanceError) as caught:
        await budget.reserve(1)
    assert "cannot reach Redis" in str(caught.value)
    assert "shared budget" in str(caught.value)
    assert "hunter2" not in str(caught.value) + caught.value.url
    await budget.aclose()


def test_without_redis_the_module_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.delitem(sys.modules, "ideogram_async.limits.shared_budget")
    with pytest.raises(ImportError, match=r"RedisBudget needs .*ideogram-async\[redis\]"):
        importlib.import_module("ideogram_async.limits.shared_budget")
