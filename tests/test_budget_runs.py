"""A spend limit on v2 runs against the emulator over a real socket: never more billed.

Counted with the emulator's own stats: the upscales it ran (and billed) against what
the budget allows, for ``client.v2.upscale_many(max_usd=)``, one command line run with
``--max-usd``, and three command line processes sharing the budget through Redis.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from ideogram_async import (
    AutoUpscaler,
    BadRequestError,
    BudgetExceededError,
    IdeogramClient,
    LocalBudget,
    TopazBloom2,
    TopazStandard2,
    ValidationError,
)
from ideogram_async.cli import main
from ideogram_async.limits import organization_key
from ideogram_async.testing import (
    Emulator,
    EmulatorStats,
    Fault,
    FaultPlan,
    RedisServer,
    free_port,
)

from ._support import make_image
from .test_cli import (
    KEY,
    assert_clean,
    cli_env,
    finish,
    listing,
    read_manifest,
    run_main,
    save_image,
    start_cli,
)

# The emulator's prices for a small image (one started output megapixel):
STANDARD = Decimal("0.005")  # topaz-standard-2, exact
BLOOM = Decimal("0.012")  # topaz-bloom-2, exact
AUTO_BOUND = Decimal("0.015")  # auto: an estimate of $0.010, at most $0.015


def sent(stats: EmulatorStats) -> int:
    """The v2 upscales sent to the emulator (dry runs, free, are not counted)."""
    return sum(not upload.dry_run for upload in stats.v2_uploads)


def billed(stats: EmulatorStats, price: Decimal) -> Decimal:
    """The upscales the emulator billed, at ``price`` each."""
    return Decimal(stats.billed_usd_micros) / 1_000_000 / price


def official(emulator: Emulator, allowance: int | None = None) -> IdeogramClient:
    return IdeogramClient(
        api_key=KEY, base_url=emulator.base_url, flavor="official", allowance=allowance
    )


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "in"
    folder.mkdir()
    paths = [folder / f"{number}.png" for number in range(10)]
    for number, path in enumerate(paths):
        path.write_bytes(make_image("png", size=(12, 8), shade=number))
    return paths


async def test_a_run_stops_before_it_passes_its_budget(images: list[Path]) -> None:
    async with Emulator(KEY, latency=0.01) as emulator, official(emulator) as client:
        run = client.v2.upscale_many(images, TopazStandard2(), max_usd=4 * STANDARD)
        results = [result async for result in run]
    stats = emulator.stats
    assert billed(stats, STANDARD) == 4
    assert sent(stats) == 4
    assert sum(result.ok for result in results) == 4
    refused = [result.error for result in results if not result.ok]
    assert len(refused) == 6
    assert all(isinstance(error, BudgetExceededError) for error in refused)
    assert any(isinstance(error, BudgetExceededError) and not error.skipped for error in refused)
    assert stats.quotes <= 10  # skipped images are not even priced once the run stopped


async def test_an_estimate_reserves_its_upper_bound(images: list[Path]) -> None:
    budget = LocalBudget(Decimal("0.05"))
    async with Emulator(KEY) as emulator, official(emulator) as client:
        results = [
            result
            async for result in client.v2.upscale_many(images, AutoUpscaler(), max_usd=budget)
        ]
    assert sent(emulator.stats) == 3  # 3 x $0.015 reserved; at $0.010 five would have run
    assert billed(emulator.stats, AUTO_BOUND - Decimal("0.005")) == 3
    assert sum(result.ok for result in results) == 3
    assert budget.spent == 3 * AUTO_BOUND  # the bill is not known: the bound is committed
    assert budget.reserved == 0


async def test_a_failed_upscale_gives_its_reservation_back(images: list[Path]) -> None:
    # One item at a time: quote, upscale (refused with a 400), quote, upscale (400), ...
    plan = FaultPlan(script=[None, Fault.status(400), None, Fault.status(400)])
    budget = LocalBudget(2 * BLOOM)
    async with Emulator(KEY, faults=plan) as emulator, official(emulator, allowance=1) as client:
        run = client.v2.upscale_many(
            images[:4], TopazBloom2(), window=1, ordered=True, max_usd=budget
        )
        results = [result async for result in run]
    assert [type(result.error) for result in results] == [
        BadRequestError,
        BadRequestError,
        type(None),
        type(None),
    ]
    assert sent(emulator.stats) == 4
    assert billed(emulator.stats, BLOOM) == 2
    assert (budget.spent, budget.reserved) == (2 * BLOOM, Decimal(0))


async def test_a_budget_is_an_amount_or_a_budget_and_needs_an_image_it_can_read_twice(
    images: list[Path],
) -> None:
    async def stream() -> AsyncIterator[bytes]:
        yield images[0].read_bytes()

    async with Emulator(KEY) as emulator, official(emulator) as client:
        with pytest.raises(ValidationError, match="or a Budget"):
            client.v2.upscale_many(images, TopazBloom2(), max_usd=[1])  # type: ignore[arg-type]
        results = [r async for r in client.v2.upscale_many([stream()], TopazBloom2(), max_usd=1)]
    assert isinstance(results[0].error, ValidationError)
    assert "not a stream" in str(results[0].error)
    assert len(emulator.stats.v2_uploads) == 0


# -- the command line -------------------------------------------------------------------


def folder_of(tmp_path: Path, name: str, count: int) -> Path:
    folder = tmp_path / name
    for number in range(count):
        save_image(folder / f"{name}-{number}.png", (12, 8), shade=number * 20)
    return folder


async def test_max_usd_stops_the_command_line_run_and_says_so(tmp_path: Path) -> None:
    inputs, out, manifest = folder_of(tmp_path, "in", 5), tmp_path / "out", tmp_path / "m.jsonl"
    summary = tmp_path / "summary.json"
    async with Emulator(KEY) as emulator:
        run = await run_main(
            *["upscale", str(inputs), "--base-url", emulator.base_url, "--model", "topaz-bloom-2"],
            *["--max-usd", "0.03", "--out", str(out), "--manifest", str(manifest)],
            *["--json", str(summary)],
        )
    assert run.returncode == 1, run.stderr
    assert_clean(run)
    assert billed(emulator.stats, BLOOM) == 2  # 2 x $0.012 fit in $0.03; a third would pass it
    assert len(listing(out)) == 2
    lines = [line for line in run.stderr.splitlines() if "budget" in line]
    assert len(lines) == 1
    assert lines[0].startswith(
        "Stopped: the --max-usd budget of $0.03 would be passed by an image priced up to $0.012"
    )
    assert "2 of 5 image(s) upscaled, 3 not done" in lines[0]
    assert [record["status"] for record in read_manifest(manifest)] == ["ok", "ok"]
    # The summary says what the budget counted as spent, and the budget itself.
    assert "; $0.0240 spent of the $0.0300 budget." in run.stdout
    written = json.loads(summary.read_text())
    assert (written["usd"], written["succeeded"], written["skipped"]) == (0.024, 2, 3)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-usd", "5"], "--max-usd limits what v2 upscales spend: add --model"),
        (["--model", "auto", "--max-usd", "5", "--dry-run"], "--dry-run spends nothing"),
        (["--model", "auto", "--max-usd", "0"], "--max-usd: expected US dollars > 0"),
        (["--model", "auto", "--max-usd", "lots"], "--max-usd: expected US dollars > 0"),
        (["--model", "auto", "--max-usd", "1e12"], "--max-usd: max_usd must be at most"),
    ],
)
def test_max_usd_is_checked_before_anything_is_sent(
    extra: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IDEOGRAM_API_KEY", KEY)
    image = save_image(tmp_path / "a.png", (12, 8))
    args = ["upscale", str(image), "--out", str(tmp_path / "out")]
    assert main([*args, "--base-url", "http://127.0.0.1:9", *extra]) == 2
    assert message in capsys.readouterr().err


async def test_three_processes_share_one_budget_through_redis(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url
    state = aioredis.Redis.from_url(url)
    async with Emulator(KEY, latency=0.02) as emulator:
        workers = [
            await start_cli(
                *["upscale", str(folder_of(tmp_path, name, 5)), "--model", "topaz-standard-2"],
                *["--base-url", emulator.base_url, "--out", str(tmp_path / f"out-{name}")],
                *["--max-usd", "0.04", "--shared-allowance", url, "--allowance", "3"],
            )
            for name in ("a", "b", "c")
        ]
        runs = await asyncio.gather(*(finish(worker) for worker in workers))
    budget = "{" + organization_key(KEY, emulator.base_url) + "}:budget"
    try:
        totals = await state.hmget(budget, ["spent", "reserved"])
    finally:
        await state.aclose()
    for run in runs:
        assert_clean(run)
    assert billed(emulator.stats, STANDARD) == 8  # 15 images at $0.005, $0.04 for all three
    assert sent(emulator.stats) == 8
    outs = [tmp_path / f"out-{name}" for name in "abc"]
    # A worker the budget left without an image removes its empty --out folder.
    assert sum(len(listing(out)) for out in outs if out.exists()) == 8
    assert totals == [b"40000", b"0"]
    stopped = [run for run in runs if "Stopped: the --max-usd budget of $0.04" in run.stderr]
    assert stopped  # 7 images were held back, so at least one worker was stopped
    assert all(run.returncode == 1 for run in stopped)
    assert all(run.returncode in (0, 1) for run in runs)


async def test_a_shared_budget_is_kept_per_organization_unless_named(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    port = free_port()  # one API host for both keys: only the key tells them apart
    other = "second-organization-key"
    spent: dict[str, list[bytes | str | None]] = {}
    state = aioredis.Redis.from_url(redis_server.url)
    try:
        for name, key, named in (("a", KEY, []), ("b", other, []), ("c", KEY, [f"job-{port}"])):
            async with Emulator(key, port=port) as emulator:
                run = await run_main(
                    *["upscale", str(folder_of(tmp_path, name, 2)), "--model", "topaz-standard-2"],
                    *["--base-url", emulator.base_url, "--out", str(tmp_path / f"out-{name}")],
                    *["--max-usd", "0.01", "--shared-allowance", redis_server.url],
                    *[arg for value in named for arg in ("--allowance-key", value)],
                    env=cli_env(key=key),
                )
            assert (run.returncode, billed(emulator.stats, STANDARD)) == (0, Decimal(2)), run.stderr
            assert other not in run.stdout + run.stderr
            home = named[0] if named else organization_key(key, emulator.base_url)
            spent[name] = await state.hmget("{" + home + "}:budget", ["spent", "reserved"])
    finally:
        await state.aclose()
    # Each organization spent its own $0.01 (a shared one would have stopped run b at
    # once), and --allowance-key names a budget of its own too.
    assert spent == {name: [b"10000", b"0"] for name in "abc"}
