"""``ideogram-async upscale --model``: a v2 run and ``--dry-run``, against the emulator."""

from __future__ import annotations

import asyncio
import re
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from ideogram_async import (
    IdeogramClient,
    PriceQuote,
    QuoteItem,
    QuoteSummary,
    TopazBloom2,
    TopazStandard2,
    ValidationError,
)
from ideogram_async.cli import main
from ideogram_async.cli._demo_v2 import try_v2
from ideogram_async.cli._inputs import Source, find_images
from ideogram_async.cli._quotes import price, run_quotes
from ideogram_async.cli._quotes import render as render_quotes
from ideogram_async.testing import Emulator

from .test_cli import KEY, assert_clean, listing, read_manifest, run_main, save_image, size_of
from .test_cli_guards import watch_displays
from .test_cli_view import Flushed

PRICE = re.compile(r"\$(\d[\d,]*\.\d{4})")


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """Three small images and one whose x4 result would pass 8192 px."""
    folder = tmp_path / "in"
    for index, name in enumerate(["a.png", "b.jpg", "c.webp"]):
        save_image(folder / name, (10 + 2 * index, 6 + index), shade=index * 50)
    save_image(folder / "wide.png", (2100, 8))
    return folder


def v2_args(emulator: Emulator, inputs: Path, *extra: str) -> list[str]:
    return ["upscale", str(inputs), "--base-url", emulator.base_url, "--model", *extra]


async def test_a_v2_run_upscales_by_the_factor_and_refuses_what_would_pass_8192_px(
    inputs: Path, tmp_path: Path
) -> None:
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    async with Emulator(KEY) as emulator:
        run = await run_main(
            *v2_args(emulator, inputs, "topaz-bloom-2", "--factor", "x4"),
            *("--prompt", "autumn", "--option", "creativity=5", "--option", "seed=7"),
            *("--out", str(out), "--manifest", str(manifest)),
        )
        stats = emulator.stats
    assert run.returncode == 1, run.stderr  # the wide image failed; the run went on
    assert_clean(run)
    sent = sorted(str(upload.filename) for upload in stats.v2_uploads)
    assert sent == ["a.png", "b.jpg", "c.webp"]
    for upload in stats.v2_uploads:
        assert upload.model == "topaz-bloom-2"
        assert upload.headers["api-key"] == KEY
        assert upload.fields == {
            "upscale_factor": "x4",
            "prompt": "autumn",
            "seed": "7",
            "creativity": "5",
        }
        assert upload.part_names[-1] == "image"
    results = listing(out)
    assert [p.name for p in results] == ["a.upscaled.png", "b.upscaled.png", "c.upscaled.png"]
    assert [size_of(p) for p in results] == [(40, 24), (48, 28), (56, 32)]
    records = {Path(r["source"]).name: r for r in read_manifest(manifest)}
    assert records["wide.png"]["status"] == "failed"
    assert records["wide.png"]["attempts"] == 0
    assert "refuses outputs over 8192 px" in records["wide.png"]["error"]
    assert "largest factor that fits is x2" in records["wide.png"]["error"]
    assert "wide.png" in run.stdout


async def test_a_withheld_image_fails_its_item_and_says_it_is_billed(
    inputs: Path, tmp_path: Path
) -> None:
    async with Emulator(KEY) as emulator:
        run = await run_main(
            *v2_args(emulator, inputs / "a.png", "topaz-redefine"),
            *("--prompt", "[withhold]", "--out", str(tmp_path / "out")),
        )
    assert run.returncode == 1
    assert "withheld by the service's safety check (the upscale is billed)" in run.stdout
    assert emulator.stats.image_downloads == 0


async def test_dry_run_prices_every_image_and_prints_the_total(
    inputs: Path, tmp_path: Path
) -> None:
    async with Emulator(KEY) as emulator:
        run = await run_main(
            *v2_args(emulator, inputs, "auto", "--factor", "x4", "--dry-run"),
            "--recursive",
        )
        stats = emulator.stats
    assert run.returncode == 1, run.stdout + run.stderr  # one image could not be priced
    assert_clean(run)
    assert stats.quotes == 3  # the wide image was refused before upload
    assert all(upload.dry_run for upload in stats.v2_uploads)
    assert stats.billed_usd_micros == 0
    assert stats.image_downloads == 0
    lines = run.stdout.splitlines()
    rows = {line.split()[0]: line for line in lines if line.startswith(str(inputs))}
    assert len(rows) == 4
    assert "not priced" in rows[str(inputs / "wide.png")]
    assert "8192 px" in rows[str(inputs / "wide.png")]
    priced = [rows[str(inputs / n)] for n in ("a.png", "b.jpg", "c.webp")]
    for row in priced:
        # Dollars with their qualifier; the billing quantity never reads like a factor.
        assert re.search(r"  (\$\d\.\d{4} exact|<= \$\d\.\d{4} estimate)  ", row), row
        assert re.search(r"upscale\.[\w-]+, quantity \d+$", row), row
        assert not re.search(r" x\d", row)
    most = sum(Decimal(PRICE.findall(row)[0]) for row in priced)
    total = next(line for line in lines if line.startswith("Total: "))
    assert Decimal(PRICE.findall(total)[-1]) == most  # "at most": each row's bound, summed
    assert "for 3 of 4 image(s)" in total
    assert "estimated" in total
    assert "1 image(s) could not be priced" in run.stdout
    assert "Nothing was run, downloaded or billed." in run.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--factor", "x4"], "are v2 settings: add --model MODEL"),
        (["--dry-run"], "are v2 settings: add --model MODEL"),
        (["--model", "topaz-bloom-2", "--option", "texture=2"], "has no option 'texture'"),
        (["--model", "topaz-standard-2", "--seed", "3"], "has no option 'seed'"),
        (["--model", "topaz-bloom-2", "--option", "creativity=12"], "creativity must be from 1"),
        (["--model", "topaz-bloom-2", "--option", "creativity"], "--option takes NAME=VALUE"),
        (["--model", "auto", "--resemblance", "50"], "--resemblance apply to the v1 upscaler"),
        (["--model", "nano-banana-pro", "--factor", "x2"], "has no option 'upscale_factor'"),
        (["--model", "topaz-wonder-4"], "--model: invalid choice"),
    ],
)
def test_bad_v2_options_exit_2_before_sending(
    extra: list[str],
    message: str,
    inputs: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IDEOGRAM_API_KEY", KEY)
    args = ["upscale", str(inputs), "-o", str(tmp_path / "out"), "--base-url", "http://127.0.0.1:9"]
    assert main([*args, *extra]) == 2
    assert message in capsys.readouterr().err


def test_out_is_required_unless_pricing(
    inputs: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDEOGRAM_API_KEY", KEY)
    args = ["upscale", str(inputs), "--base-url", "http://127.0.0.1:9", "--model", "auto"]
    assert main(args) == 2
    assert "--out DIR is required" in capsys.readouterr().err


def a_quote(micros: int, qualifier: str = "exact", bound: int | None = None) -> PriceQuote:
    return PriceQuote(
        billing_identifier="upscale.bloom",
        quantity=2,
        usd_micros=micros,
        credit_millis=1000,
        qualifier=qualifier,
        upper_bound_usd_micros=bound,
    )


def test_a_price_says_exact_or_the_most_an_estimate_can_cost() -> None:
    assert price(a_quote(48_000)) == "$0.0480 exact"
    assert price(a_quote(40_000, "estimate", 90_000)) == "<= $0.0900 estimate"
    assert price(a_quote(1_234_500_000, "estimate")) == "<= $1,234.5000 estimate"


def test_the_price_table_for_given_quotes() -> None:
    sources = [Source(path=Path(f"/{n}").absolute(), shown=n) for n in ("a.png", "long-name.png")]
    sources.append(Source(path=Path("/w.png").absolute(), shown="w.png"))
    summary = QuoteSummary(
        items=[
            QuoteItem(index=0, source="a", quote=a_quote(48_000), error=None),
            QuoteItem(index=1, source="b", quote=a_quote(40_000, "estimate", 90_000), error=None),
            QuoteItem(index=2, source="w", quote=None, error=ValidationError("over 8192 px")),
        ]
    )
    assert render_quotes(sources, summary) == [
        "IMAGE          PRICE                BILLED AS",
        "a.png          $0.0480 exact        upscale.bloom, quantity 2",
        "long-name.png  <= $0.0900 estimate  upscale.bloom, quantity 2",
        "w.png          not priced           over 8192 px",
        "Total: $0.0880 for 2 of 3 image(s) (exact $0.0480, estimated $0.0400; at most $0.1380).",
        "1 image(s) could not be priced (see above): the total leaves them out.",
        "Nothing was run, downloaded or billed.",
    ]


def test_an_empty_price_table_keeps_its_header_aligned() -> None:
    assert render_quotes([], QuoteSummary(items=[])) == [
        "IMAGE  PRICE  BILLED AS",
        "Total: $0.0000 for 0 of 0 image(s) (exact $0.0000, estimated $0.0000; at most $0.0000).",
        "Nothing was run, downloaded or billed.",
    ]


async def test_pricing_in_process_prints_the_table_and_exits_by_what_was_priced(
    inputs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = find_images([str(inputs)], recursive=False, exclude=None)
    wide = [s for s in sources if s.shown.endswith("wide.png")]

    def pushed() -> list[str]:
        """The lines flushed to stdout so far (each at once, for a script reading a pipe)."""
        lines = stdout.pushed.splitlines()
        stdout.seek(0)
        stdout.truncate()
        stdout.pushed = ""
        return lines

    stdout = Flushed()
    monkeypatch.setattr(sys, "stdout", stdout)
    async with Emulator(KEY) as emulator:

        def connect() -> IdeogramClient:
            return IdeogramClient(api_key=KEY, base_url=emulator.base_url, flavor="official")

        options = TopazBloom2(upscale_factor="x4")
        assert await run_quotes(connect, sources[:1], options, asyncio.Event()) == 0
        priced = pushed()
        assert await run_quotes(connect, wide, options, asyncio.Event()) == 1
        failed = pushed()
        stop = asyncio.Event()
        stop.set()
        assert await run_quotes(connect, sources, options, stop) == 130
        assert pushed() == ["Interrupted: nothing was run or billed."]
        assert emulator.stats.billed_usd_micros == 0
    assert re.fullmatch(r".*a\.png  \$\d\.\d{4} exact  upscale\.[\w.-]+, quantity \d+", priced[1])
    assert priced[2].startswith("Total: $")
    assert "for 1 of 1 image(s)" in priced[2]
    assert priced[-1] == "Nothing was run, downloaded or billed."
    assert "not priced" in failed[1]
    assert "1 image(s) could not be priced" in failed[-2]


async def test_the_demos_v2_part_prices_every_image_and_upscales_the_first(
    inputs: Path, tmp_path: Path
) -> None:
    images = [inputs / "a.png", inputs / "b.jpg", inputs / "wide.png"]  # wide: no x4 price
    out = tmp_path / "v2"
    async with Emulator(KEY) as emulator:
        lines = await try_v2(emulator.base_url, KEY, images, out)
        sent = list(emulator.stats.v2_uploads)
        async with IdeogramClient(
            api_key=KEY, base_url=emulator.base_url, flavor="official"
        ) as client:
            quoted = await client.v2.quote_many(images, TopazStandard2(upscale_factor="x4"))

    assert lines == [
        f"v2 dry run: topaz-standard-2 at x4 would cost ${quoted.total_usd:.4f} for 2 image(s) "
        "(the emulator's made-up prices; nothing was billed)",
        f"v2 run: topaz-bloom-2 upscaled a.png to 20x12 -> {out / 'a.png'}",
    ]
    assert size_of(out / "a.png") == (20, 12)
    assert [(call.model, call.dry_run, call.fields) for call in sent] == [
        ("topaz-standard-2", True, {"upscale_factor": "x4"}),
        ("topaz-standard-2", True, {"upscale_factor": "x4"}),
        (
            "topaz-bloom-2",
            False,
            {"upscale_factor": "x2", "prompt": "crisp shapes", "creativity": "4"},
        ),
    ]
    assert all(call.headers["api-key"] == KEY for call in sent)  # Ideogram's own API


async def test_the_demos_v2_part_says_why_it_failed(inputs: Path, tmp_path: Path) -> None:
    async with Emulator(KEY) as emulator:
        lines = await try_v2(emulator.base_url, "not-the-key", [inputs / "a.png"], tmp_path)

    assert lines == [
        "v2 part failed: HTTP 401: Invalid or missing API key — check the API key "
        "(api_key= or IDEOGRAM_API_KEY)"
    ]
    assert listing(tmp_path) == [inputs.parent / "in"]


async def test_withheld_images_each_fail_and_leave_nothing_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    watched = watch_displays(monkeypatch)
    for index, name in enumerate(["a.png", "b.png", "c.png"]):
        save_image(tmp_path / "in" / name, (10, 6), shade=index * 50)
    async with Emulator(KEY) as emulator:
        run = await run_main(
            *v2_args(emulator, tmp_path / "in", "topaz-redefine"),
            *("--prompt", "[withhold]", "--out", str(tmp_path / "out"), "--concurrency", "1"),
        )
    assert run.returncode == 1
    assert "Done: 0 of 3 image(s) upscaled, 3 failed" in run.stdout
    (seen,) = (watching.seen for watching in watched)
    assert max(calls for calls, _, _ in seen) == 1  # taken up one at a time, as allowed
    assert all(downloading >= 0 for _, downloading, _ in seen)
    assert seen[-1] == (0, 0, 0)  # nothing was there to download
