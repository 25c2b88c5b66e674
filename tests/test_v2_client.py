"""The v2 calls of ``IdeogramClient`` against the emulator, over a real socket."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from ideogram_async import (
    APITimeoutError,
    AutoUpscaler,
    BatchInput,
    GenerationFailedError,
    IdeogramClient,
    NanoBananaPro,
    NotFoundError,
    PaymentRequiredError,
    RetryEvent,
    RetryPolicy,
    Timeouts,
    TopazBloom2,
    TopazRedefine,
    TopazStandard2,
    TopazTextRefine,
    TopazWonder35,
    UpscaleJob,
    UpscaleRequest,
    V2Options,
    ValidationError,
)
from ideogram_async.testing import Emulator, Fault, FaultPlan, instant_retries, serve_main

from ._support import KEY, make_image, open_fds

EVERY_MODEL: list[V2Options] = [
    AutoUpscaler(upscale_factor="x4", seed=3, internal=True, private=False),
    TopazStandard2(
        upscale_factor="x2",
        denoise=0.5,
        sharpen=0.25,
        fix_compression=1,
        strength=0.01,
        subject_detection="foreground",
        face_enhancement=True,
        face_enhancement_strength=0.8,
        face_enhancement_creativity=0.1,
    ),
    TopazTextRefine(seed=9, subject_detection="all", target_collection_id="c-1"),
    TopazWonder35(upscale_factor="x8", enhancement_strength="medium"),
    TopazBloom2(prompt="crisp «frost»", creativity=9, color_preservation=False, seed=0),
    TopazRedefine(autoprompt=True, creativity=2, texture=5, detail=True, detail_strength=7.5),
    NanoBananaPro(prompt="sharp", resolution_tier="1K", seed=2_147_483_647),
]


class Clock:
    """A clock the test moves by hand (the emulator's generations and polling window)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest_asyncio.fixture
async def official(emulator: Emulator) -> AsyncIterator[IdeogramClient]:
    async with IdeogramClient(api_key=KEY, base_url=emulator.base_url, flavor="official") as c:
        yield c


# --- wire shape ----------------------------------------------------------------------------


@pytest.mark.parametrize("options", EVERY_MODEL, ids=lambda options: options.model)
async def test_wire_shape_per_model(
    emulator: Emulator, official: IdeogramClient, options: V2Options
) -> None:
    image = make_image("png", size=(16, 12))
    answer = await official.v2.upscale(image, options, filename="leaf.png")
    received = emulator.stats.v2_uploads[-1]
    assert received.model == options.model
    assert not received.dry_run
    assert received.fields == options.form_fields()
    assert received.part_names == [*options.form_fields(), "image"]
    assert (received.filename, received.content_type) == ("leaf.png", "image/png")
    assert received.sha256 == hashlib.sha256(image).hexdigest()
    assert received.headers["api-key"] == KEY
    assert "authorization" not in received.headers
    assert received.headers["accept"] == "application/json"
    assert answer.generation_id
    assert answer.data
    assert answer.data[0].url is not None
    if options.factor is not None:
        multiple = int(options.factor[1:])
        assert (answer.width, answer.height) == (16 * multiple, 12 * multiple)


async def test_the_result_downloads_without_the_key(
    emulator: Emulator, official: IdeogramClient, tmp_path: Path
) -> None:
    answer = await official.v2.upscale(make_image("jpeg", size=(8, 8)), TopazWonder35())
    path = await official.download(answer.data[0], tmp_path / "out")
    assert path.read_bytes().startswith(b"\x89PNG")
    assert all("api-key" not in headers for headers in emulator.stats.image_requests)


async def test_a_proxy_flavor_client_refuses_v2_before_sending(emulator: Emulator) -> None:
    async with IdeogramClient(api_key=KEY, base_url=emulator.base_url) as proxy:
        for call in (
            proxy.v2.upscale(make_image(), TopazBloom2()),
            proxy.v2.quote(make_image(), TopazBloom2()),
            proxy.v2.get_generation("gen-1"),
        ):
            with pytest.raises(ValidationError) as caught:
                await call
            assert str(caught.value) == (
                "the v2 upscalers are Ideogram's own API: create the client with "
                "flavor='official' (base_url then defaults to https://api.ideogram.ai); "
                "a proxy-flavor client speaks only the proxy's v1 endpoint"
            )
        with pytest.raises(ValidationError, match="flavor='official'"):
            await proxy.v2.quote_many([make_image()], TopazBloom2())
    assert emulator.stats.requests == 0
    assert emulator.stats.polls == 0


async def test_options_must_be_a_models_options(
    emulator: Emulator, official: IdeogramClient
) -> None:
    with pytest.raises(ValidationError, match="TopazBloom2"):
        await official.v2.upscale(make_image(), V2Options())
    with pytest.raises(ValidationError) as caught:
        await official.v2.quote(make_image(), UpscaleRequest())  # type: ignore[arg-type]
    assert str(caught.value) == (
        "options must be a model's options such as TopazBloom2(...), got UpscaleRequest"
    )
    assert emulator.stats.requests == 0


# --- the 8192 px rule ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
async def test_over_8192_px_is_refused_before_upload(
    emulator: Emulator, official: IdeogramClient, fmt: str
) -> None:
    image = make_image(fmt, size=(2100, 30))
    with pytest.raises(ValidationError) as info:
        await official.v2.upscale(image, TopazBloom2(upscale_factor="x4"), filename=f"big.{fmt}")
    message = str(info.value)
    assert message.startswith(f"big.{fmt}: topaz-bloom-2 refuses outputs over 8192 px")
    assert "2100x30 image at x4 would be 8400x120" in message
    assert "the largest factor that fits is x2" in message
    with pytest.raises(ValidationError, match="no factor fits"):
        await official.v2.quote(make_image(fmt, size=(4097, 8)), AutoUpscaler())
    assert emulator.stats.requests == 0
    assert emulator.stats.bytes_received == 0


async def test_nano_banana_pro_is_not_held_to_8192_px(
    emulator: Emulator, official: IdeogramClient
) -> None:
    # Over 4096 px a side x2 would break the rule; nano-banana-pro has a tier instead.
    quote = await official.v2.quote(make_image(size=(4100, 10)), NanoBananaPro())
    assert quote.usd > 0
    assert emulator.stats.quotes == 1


# --- safety, errors, retries -------------------------------------------------------------


async def test_a_withheld_image_is_flagged_billed_and_not_downloadable(
    emulator: Emulator, official: IdeogramClient, tmp_path: Path
) -> None:
    answer = await official.v2.upscale(make_image(), TopazBloom2(prompt="a cat [withhold]"))
    (image,) = answer.data
    assert image.withheld
    assert image.url is None
    assert image.is_image_safe is False
    assert emulator.stats.withheld == 1
    assert emulator.stats.billed_usd_micros > 0
    with pytest.raises(ValidationError, match="withheld by the service's safety check"):
        await official.download(image, tmp_path / "out.png")
    assert emulator.stats.image_requests == type(emulator.stats.image_requests)()


async def test_a_transient_failure_is_retried_with_the_same_bytes(png_bytes: bytes) -> None:
    plan = FaultPlan([Fault.status(503)])
    async with (
        Emulator(api_key=KEY, faults=plan) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, flavor="official") as client,
    ):
        with instant_retries():
            answer = await client.v2.upscale(png_bytes, TopazStandard2())
        first, second = emulator.stats.v2_uploads
    assert answer.data
    assert first.sha256 == second.sha256 == hashlib.sha256(png_bytes).hexdigest()
    assert emulator.stats.requests == 2


async def test_a_402_is_not_retried_and_says_why(png_bytes: bytes) -> None:
    body = '{"error": "Insufficient funds", "reject_reason": "insufficient_funds"}'
    plan = FaultPlan([Fault.status(402, body=body)])
    async with (
        Emulator(api_key=KEY, faults=plan) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, flavor="official") as client,
    ):
        with pytest.raises(PaymentRequiredError, match="Insufficient funds") as info:
            await client.v2.upscale(png_bytes, TopazBloom2())
    assert info.value.attempts == 1
    assert emulator.stats.requests == 1


# --- price quotes -------------------------------------------------------------------------


async def test_a_quote_runs_nothing_and_bills_nothing(
    emulator: Emulator, official: IdeogramClient
) -> None:
    quote = await official.v2.quote(make_image(size=(1000, 500)), TopazBloom2(upscale_factor="x2"))
    (received,) = emulator.stats.v2_uploads
    assert received.dry_run
    assert (quote.billing_identifier, quote.qualifier, quote.quantity) == (
        "upscale.topaz-bloom-2",
        "exact",
        2,
    )
    assert quote.usd == Decimal(quote.usd_micros) / 1_000_000
    assert emulator.stats.billed_usd_micros == 0
    assert emulator.stats.image_downloads == 0


async def test_quote_many_sums_exact_and_estimated_apart(
    emulator: Emulator, official: IdeogramClient
) -> None:
    small, big = make_image(size=(100, 100)), make_image(size=(5000, 10))
    summary = await official.v2.quote_many(
        [small, (small, AutoUpscaler(upscale_factor="x8")), big, (small, TopazRedefine())],
        TopazBloom2(),
    )
    assert [item.index for item in summary.items] == [0, 1, 2, 3]
    assert [item.ok for item in summary.items] == [True, True, False, True]
    assert isinstance(summary.failed[0].error, ValidationError)
    quotes = [item.quote for item in summary.items if item.quote is not None]
    exact = [q for q in quotes if q.exact]
    estimated = [q for q in quotes if not q.exact]
    assert len(exact) == 2
    assert len(estimated) == 1
    assert summary.exact_usd == sum(q.usd for q in exact)
    assert summary.estimated_usd == estimated[0].usd
    assert summary.total_usd == summary.exact_usd + summary.estimated_usd
    assert summary.upper_bound_usd == summary.exact_usd + estimated[0].upper_bound_usd
    assert summary.upper_bound_usd > summary.total_usd
    assert emulator.stats.quotes == 3  # the image over 8192 px was never sent
    assert emulator.stats.billed_usd_micros == 0


# --- background generations ----------------------------------------------------------------


async def test_submit_then_wait_for_the_generation(png_bytes: bytes) -> None:
    clock = Clock()
    async with (
        Emulator(api_key=KEY, clock=clock, generation_delay=30) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, flavor="official") as client,
    ):
        generation_id = await client.v2.submit(
            png_bytes, TopazBloom2(), webhook_url="https://hooks.example/done"
        )
        (received,) = emulator.stats.v2_uploads
        assert received.fields["async"] == "true"
        assert received.fields["webhook_url"] == "https://hooks.example/done"
        pending = await client.v2.get_generation(generation_id)
        assert pending.status == "pending"
        assert not pending.data
        clock.now = 30
        done = await client.v2.wait_for_generation(generation_id, poll_interval=0.001)
    assert done.status == "completed"
    assert done.data[0].url
    assert done.usage_cost_usd_micros == emulator.stats.billed_usd_micros
    assert emulator.stats.polls == 2


async def test_a_failed_generation_raises_with_its_reason(png_bytes: bytes) -> None:
    async with (
        Emulator(api_key=KEY) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, flavor="official") as client,
    ):
        generation_id = await client.v2.submit(png_bytes, TopazBloom2(prompt="[fail]"))
        with pytest.raises(GenerationFailedError) as info:
            await client.v2.wait_for_generation(generation_id)
    assert info.value.failure_reason == "content_policy_violation"
    assert info.value.generation_id == generation_id
    assert "not billed" in str(info.value)
    assert emulator.stats.billed_usd_micros == 0


async def test_waiting_too_long_and_unknown_ids(png_bytes: bytes) -> None:
    async with (
        Emulator(api_key=KEY, generation_delay=3600) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, flavor="official") as client,
    ):
        generation_id = await client.v2.submit(png_bytes, TopazStandard2())
        with pytest.raises(APITimeoutError, match=r"still pending after 0\.05s") as info:
            await client.v2.wait_for_generation(generation_id, poll_interval=0.01, timeout=0.05)
        assert info.value.kind == "deadline"
        with pytest.raises(NotFoundError):
            await client.v2.get_generation("gen-unknown")
        with pytest.raises(ValidationError, match="https://"):
            await client.v2.submit(png_bytes, TopazStandard2(), webhook_url="http://x.example")


async def test_a_poll_over_the_limit_waits_as_retry_after_says(png_bytes: bytes) -> None:
    clock = Clock()
    events: list[RetryEvent] = []

    def waited(event: RetryEvent) -> None:
        events.append(event)
        clock.now += event.wait  # the wait passes on the emulator's clock

    async with (
        Emulator(api_key=KEY, clock=clock, poll_limit=(1, 30)) as emulator,
        IdeogramClient(
            api_key=KEY, base_url=emulator.base_url, flavor="official", on_retry=waited
        ) as client,
    ):
        generation_id = await client.v2.submit(png_bytes, TopazWonder35())
        await client.v2.get_generation(generation_id)
        clock.now = 1.0
        with instant_retries():
            generation = await client.v2.get_generation(generation_id)
    assert generation.status == "completed"
    assert [event.wait for event in events] == [29]
    assert events[0].error.status == 429  # type: ignore[attr-defined]
    assert emulator.stats.polls_refused == 1
    assert emulator.stats.polls == 2


async def test_every_poll_of_a_client_shares_one_rate(png_bytes: bytes) -> None:
    # The emulator allows 8 polls in any 0.5 s; three waits poll as fast as they may.
    async with (
        Emulator(api_key=KEY, generation_delay=0.6, poll_limit=(8, 0.5)) as emulator,
        IdeogramClient(
            api_key=KEY, base_url=emulator.base_url, flavor="official", poll_limit=(8, 0.5)
        ) as client,
    ):
        ids = [await client.v2.submit(png_bytes, TopazStandard2()) for _ in range(3)]
        done = await asyncio.gather(
            *(
                client.v2.wait_for_generation(i, poll_interval=0.001, max_interval=0.001)
                for i in ids
            )
        )
    assert all(generation.status == "completed" for generation in done)
    assert emulator.stats.polls > 8  # the rate was reached, and held
    assert emulator.stats.polls_refused == 0


def test_poll_limit_is_checked() -> None:
    for bad, message in (
        ((1, 10.0), "poll_limit's polls must be an int >= 2, got 1"),
        ((1000, 0), "poll_limit's seconds must be a finite number of seconds > 0, got 0"),
        (1000, "poll_limit must be a (polls, seconds) pair, got 1000"),
        ((1000, 10.0, 1), "poll_limit must be a (polls, seconds) pair, got (1000, 10.0, 1)"),
    ):
        with pytest.raises(ValidationError) as caught:
            IdeogramClient(api_key=KEY, flavor="official", poll_limit=bad)  # type: ignore[arg-type]
        assert str(caught.value) == message
    IdeogramClient(api_key=KEY, flavor="official", poll_limit=(2, 0.5))  # the least it takes


async def test_polls_back_off_up_to_max_interval(
    png_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    monkeypatch.setattr("ideogram_async.v2._resource._sleep", sleep)
    async with (
        Emulator(api_key=KEY, clock=clock, generation_delay=1.0) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, flavor="official") as client,
    ):
        generation_id = await client.v2.submit(png_bytes, TopazStandard2())
        await client.v2.wait_for_generation(generation_id, poll_interval=0.2, max_interval=0.4)
    assert slept == pytest.approx([0.2, 0.3, 0.4, 0.4])
    assert emulator.stats.polls == 5


async def test_quote_many_refuses_a_single_image(official: IdeogramClient) -> None:
    with pytest.raises(ValidationError, match="iterable of images, not one image"):
        await official.v2.quote_many(make_image(), TopazBloom2())  # type: ignore[arg-type]


async def test_quote_many_keeps_at_most_window_images_open(
    emulator: Emulator, official: IdeogramClient
) -> None:
    pulled: list[int] = []

    def images() -> Iterator[bytes]:
        for number in range(10):
            pulled.append(number)
            yield make_image(size=(8, 8), shade=number)

    emulator.pause()
    task = asyncio.create_task(official.v2.quote_many(images(), TopazBloom2(), window=3))
    await emulator.wait_in_flight(3)
    assert len(pulled) == 3  # three on the wire; the fourth is pulled once one ends
    emulator.resume()
    summary = await task
    assert [item.index for item in summary.items] == list(range(10))
    assert emulator.stats.peak_in_flight == 3


async def test_cancelling_a_v2_upscale_frees_its_file_at_once(
    emulator: Emulator, official: IdeogramClient, png_path: Path
) -> None:
    emulator.pause()
    task = asyncio.create_task(official.v2.upscale(png_path, TopazStandard2()))
    await emulator.wait_in_flight(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert str(png_path) not in open_fds().values()
    emulator.resume()


async def test_upscale_many_runs_a_v2_batch_and_keeps_its_kind(
    emulator: Emulator, official: IdeogramClient
) -> None:
    small, wide = make_image(size=(8, 6)), make_image(size=(5000, 8))
    wonder = TopazWonder35(upscale_factor="x8")
    inputs: list[BatchInput] = [small, (small, wonder), wide, (small, UpscaleRequest())]
    async with official.v2.upscale_many(inputs, TopazBloom2(), ordered=True) as run:
        results = [result async for result in run]
    first, second, refused, mixed = results
    assert first.response is not None
    assert (first.response.width, first.response.height) == (16, 12)
    assert second.response is not None
    assert (second.response.width, second.response.height) == (64, 48)
    assert isinstance(refused.error, ValidationError)
    assert "8192 px" in str(refused.error)
    assert isinstance(mixed.error, ValidationError)
    assert "run v1 and v2 upscales in separate batches" in str(mixed.error)
    assert [u.model for u in emulator.stats.v2_uploads] == ["topaz-bloom-2", "topaz-wonder-3-5"]


async def test_a_proxy_flavor_client_refuses_a_v2_batch(emulator: Emulator) -> None:
    async with IdeogramClient(api_key=KEY, base_url=emulator.base_url) as proxy:
        with pytest.raises(ValidationError, match="flavor='official'"):
            proxy.v2.upscale_many([make_image()], TopazBloom2())
    assert emulator.stats.requests == 0


def test_the_emulators_v2_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="generation_delay"):
        Emulator(upscale=False, generation_delay=-1)
    with pytest.raises(ValueError, match="poll_limit"):
        Emulator(upscale=False, poll_limit=(0, 10.0))
    with pytest.raises(ValueError, match="poll_limit"):
        Emulator(upscale=False, poll_limit=(10, 0.0))


def test_serve_takes_a_generation_delay(capsys: pytest.CaptureFixture[str]) -> None:
    assert serve_main(["--generation-delay", "-1"]) == 2
    assert "expected seconds >= 0" in capsys.readouterr().err


# --- v2 batches: their arguments, checked up front and applied to every image ------------


async def test_v2_batches_check_their_arguments_before_anything_is_sent(
    emulator: Emulator, official: IdeogramClient
) -> None:
    image, bloom = make_image(), TopazBloom2()
    with pytest.raises(
        ValidationError,
        match=r"^options must be a model's options such as TopazBloom2\(\.\.\.\), "
        r"got UpscaleRequest$",
    ):
        official.v2.upscale_many([image], UpscaleRequest())  # type: ignore[arg-type]
    for call, name in (
        (official.v2.upscale_many, "upscale"),
        (official.v2.quote_many, "quote"),
    ):
        with pytest.raises(
            ValidationError,
            match=rf"^{name}_many takes an iterable of images, not one image; "
            rf"wrap it in a list or call {name}\(\) for a single image$",
        ):
            await _started(call(image, bloom))  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match=r"^window must be an int >= 1, got 0$"):
            await _started(call([image], bloom, window=0))
        with pytest.raises(ValidationError, match=r"^timeouts must be a Timeouts, got int$"):
            await _started(call([image], bloom, timeouts=5))  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match=r"^retry must be a RetryPolicy, got int$"):
            await _started(call([image], bloom, retry=3))  # type: ignore[arg-type]
    assert emulator.stats.requests == 0


async def _started(call: object) -> None:
    """Await ``call`` if it is a coroutine (``quote_many``); a batch run is left unstarted."""
    if asyncio.iscoroutine(call):
        await call


class HeldBack:
    """An image stream that sends nothing until the client has had an answer to another
    request, so it finishes after an image that comes later in the input."""

    def __init__(self, image: bytes) -> None:
        self.image = image
        self.answered = asyncio.Event()
        self.trace = aiohttp.TraceConfig()
        self.trace.on_request_end.append(self._answered)

    async def _answered(self, *_: object) -> None:
        self.answered.set()

    async def stream(self) -> AsyncIterator[bytes]:
        await self.answered.wait()
        yield self.image


async def test_a_v2_batch_yields_as_images_finish_and_quote_many_in_input_order(
    emulator: Emulator,
) -> None:
    image = make_image()
    held = HeldBack(image)
    async with IdeogramClient(
        api_key=KEY, base_url=emulator.base_url, flavor="official", trace_configs=[held.trace]
    ) as client:
        results = [r async for r in client.v2.upscale_many([held.stream(), image], TopazBloom2())]
        assert [r.index for r in results] == [1, 0]
        assert all(r.ok for r in results)
        held.answered.clear()
        summary = await client.v2.quote_many([held.stream(), image], TopazBloom2())
        assert [item.index for item in summary.items] == [0, 1]
        assert all(item.ok for item in summary.items)
        assert summary.items[1].source is image


async def test_quote_many_without_options_prices_only_the_pairs(
    emulator: Emulator, official: IdeogramClient
) -> None:
    image = make_image()
    summary = await official.v2.quote_many([image, (image, TopazBloom2())])
    unpriced, priced = summary.items
    assert str(unpriced.error) == "no options: pass options= or (image, options) pairs"
    assert isinstance(unpriced.error, ValidationError)
    assert (unpriced.source, unpriced.quote) == (image, None)
    assert priced.ok
    assert emulator.stats.quotes == 1


@pytest.mark.parametrize(
    ("max_usd", "answered", "sent"),
    [(None, 0, [False]), (5, 0, [True]), (5, 1, [True, False])],
    ids=["no-budget", "budget-price", "budget-upscale"],
)
async def test_a_v2_batchs_retry_timeouts_and_file_names_reach_every_image(
    png_bytes: bytes, max_usd: int | None, answered: int, sent: list[bool]
) -> None:
    # After the first `answered` requests, each is answered only after 5 s: a call's 50 ms
    # attempt limit ends it first, and its single attempt is not retried. With a budget the
    # image is priced first (a dry run), then upscaled.
    slow = FaultPlan([None] * answered, rate=1.0, choices=[Fault.slow(5)])
    once, quick = RetryPolicy.no_retries(), Timeouts(attempt=0.05)
    job = UpscaleJob(png_bytes, None, "named.png")
    async with (
        Emulator(api_key=KEY, faults=slow) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, flavor="official") as client,
    ):
        run = client.v2.upscale_many(
            [job], TopazBloom2(), retry=once, timeouts=quick, max_usd=max_usd
        )
        (result,) = [r async for r in run]
        summary = await client.v2.quote_many([job], TopazBloom2(), retry=once, timeouts=quick)
    assert isinstance(result.error, APITimeoutError)
    assert result.attempts == 1 + answered
    (item,) = summary.items
    assert isinstance(item.error, APITimeoutError)
    assert [u.filename for u in emulator.stats.v2_uploads] == ["named.png"] * (len(sent) + 1)
    assert [u.dry_run for u in emulator.stats.v2_uploads] == [*sent, True]


async def test_a_budgeted_v2_batch_refuses_a_stream_it_would_read_twice(
    emulator: Emulator, official: IdeogramClient
) -> None:
    async def stream() -> AsyncIterator[bytes]:
        yield make_image()

    run = official.v2.upscale_many([stream()], TopazBloom2(), max_usd=1)
    (result,) = [r async for r in run]
    assert isinstance(result.error, ValidationError)
    assert str(result.error) == (
        "with max_usd an image is priced before it is sent, so it is read twice: "
        "pass a path, bytes or a file, not a stream"
    )
    assert emulator.stats.requests == 0


async def test_a_v2_call_past_its_deadline_names_what_it_was_doing(png_bytes: bytes) -> None:
    # Every answer takes 5 s; the whole call may take 50 ms.
    slow = FaultPlan.always(Fault.slow(5))
    brief = RetryPolicy(deadline=0.05)
    async with (
        Emulator(api_key=KEY, faults=slow) as emulator,
        IdeogramClient(
            api_key=KEY, base_url=emulator.base_url, flavor="official", retry=brief
        ) as client,
    ):
        for call, what in (
            (client.v2.quote(png_bytes, TopazBloom2(), filename="a.png"), "quote"),
            (client.v2.upscale(png_bytes, TopazBloom2(), filename="a.png"), "topaz-bloom-2"),
        ):
            with pytest.raises(APITimeoutError) as caught:
                await call
            assert str(caught.value).startswith(f"{what} a.png: the deadline of 0.05s")
