"""OpenTelemetry spans and metrics, collected with the SDK's in-memory exporters.

The SDK is installed once per test process as the global provider (as an application
would); each test drains what earlier tests left. Counters and histograms are read as
deltas, so a test sees only what it caused. The emulator runs over a real socket;
aiohttp's own instrumentation comes in through ``trace_configs=``.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import logging
import operator
import os
import re
import socket
import sys
import textwrap
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import aiohttp
import attrs
import prometheus_client
import pytest
from opentelemetry import metrics, trace
from opentelemetry.instrumentation._semconv import _StabilityMode
from opentelemetry.instrumentation.aiohttp_client import create_trace_config
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from ideogram_async import (
    AuthenticationError,
    IdeogramClient,
    ResponseFormatError,
    RetryPolicy,
    TopazStandard2,
    UpscaleRequest,
    ValidationError,
    __version__,
    telemetry,
)
from ideogram_async.cli import main
from ideogram_async.cli._inputs import UsageError
from ideogram_async.cli._metrics import serving_metrics
from ideogram_async.limits import Allowance, LocalAllowance, RedisAllowance
from ideogram_async.testing import Emulator, Fault, FaultPlan, RedisServer, instant_retries

from ._support import KEY

INFLIGHT_429 = Fault.status(
    429,
    body=json.dumps(
        {"error": "busy", "reject_reason": "inflight_limit", "max_inflight_requests": 10}
    ),
)
MODEL = TopazStandard2(upscale_factor="x2")


@attrs.frozen
class Sdk:
    """The SDK's in-memory span exporter and metric reader, installed globally."""

    spans: InMemorySpanExporter
    reader: InMemoryMetricReader

    def finished(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans.get_finished_spans() if span.name == name]

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        assert parent.context is not None
        return [
            span
            for span in self.spans.get_finished_spans()
            if span.parent is not None and span.parent.span_id == parent.context.span_id
        ]

    def points(self) -> dict[str, list[Any]]:
        """Every metric's data points since the last call (counters and histograms as deltas)."""
        data = self.reader.get_metrics_data()
        found: dict[str, list[Any]] = {}
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found.setdefault(metric.name, []).extend(metric.data.data_points)
        return found


@functools.cache
def _installed() -> Sdk:
    exporter = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(tracing)
    delta = AggregationTemporality.DELTA
    reader = InMemoryMetricReader(preferred_temporality={Counter: delta, Histogram: delta})
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return Sdk(exporter, reader)


@pytest.fixture
def sdk() -> Iterator[Sdk]:
    installed = _installed()
    installed.spans.clear()
    installed.points()
    yield installed
    installed.spans.clear()


def by_attribute(points: Sequence[Any], name: str) -> dict[str, Any]:
    return {point.attributes[name]: point.value for point in points}


def instrumented(emulator: Emulator, **options: Any) -> IdeogramClient:
    """A client whose attempts aiohttp's instrumentation traces (stable HTTP semconv)."""
    config = create_trace_config(sem_conv_opt_in_mode=_StabilityMode.HTTP)
    return IdeogramClient(
        api_key=KEY, base_url=emulator.base_url, trace_configs=[config], **options
    )


async def test_an_upscale_is_one_span_with_each_attempt_nested(
    sdk: Sdk, emulator: Emulator, png_path: Path
) -> None:
    async with instrumented(emulator) as client:
        await client.upscale(png_path, UpscaleRequest(num_images=2))
    (call,) = sdk.finished("ideogram.upscale")
    assert call.kind is SpanKind.INTERNAL
    assert call.attributes is not None
    assert call.attributes["ideogram.endpoint"] == "/ideogram/upscale"
    assert call.attributes["ideogram.num_images"] == 2
    assert call.attributes["ideogram.attempts"] == 1
    assert call.attributes["ideogram.outcome"] == "ok"
    assert 0 <= float(call.attributes["ideogram.allowance.wait"]) < 5  # type: ignore[arg-type]
    (attempt,) = sdk.children(call)
    assert attempt.kind is SpanKind.CLIENT
    assert attempt.context is not None
    assert call.context is not None
    assert attempt.context.trace_id == call.context.trace_id
    points = sdk.points()
    assert [point.count for point in points["http.client.request.duration"]] == [1]
    assert [point.count for point in points["ideogram.allowance.wait"]] == [1]


async def test_a_retry_is_an_event_and_is_counted_by_error_type(sdk: Sdk, png_path: Path) -> None:
    busy = attrs.evolve(
        Fault.status(503, retry_after=0),
        headers=(("Retry-After", "0"), ("x-request-id", "req-503")),
    )
    async with Emulator(api_key=KEY, faults=FaultPlan([busy])) as emulator:
        client = instrumented(emulator)
        async with client:
            with instant_retries():
                await client.upscale(png_path)
    (call,) = sdk.finished("ideogram.upscale")
    assert call.attributes is not None
    assert call.attributes["ideogram.attempts"] == 2
    assert call.attributes["ideogram.outcome"] == "ok"
    assert call.attributes["ideogram.request_id"] == "req-503"
    (event,) = call.events
    assert event.name == "retry"
    assert event.attributes is not None
    assert event.attributes["ideogram.attempt"] == 1
    assert event.attributes["error.type"] == "ServerError"
    assert "injected fault" in str(event.attributes["ideogram.retry.reason"])
    assert event.attributes["ideogram.retry.wait"] == 0
    assert [span.kind for span in sdk.children(call)] == [SpanKind.CLIENT, SpanKind.CLIENT]
    assert by_attribute(sdk.points()["ideogram.retries"], "error_type") == {"ServerError": 1}


async def test_refusals_are_counted_by_reason_and_a_full_allowance_is_no_retry(
    sdk: Sdk, png_path: Path
) -> None:
    plan = FaultPlan([INFLIGHT_429, Fault.status(429, retry_after=0)])
    async with (
        Emulator(api_key=KEY, faults=plan) as emulator,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url) as client,
    ):
        with instant_retries():
            await client.upscale(png_path)
    (call,) = sdk.finished("ideogram.upscale")
    assert call.attributes is not None
    assert call.attributes["ideogram.attempts"] == 2  # waiting for a place is not an attempt
    assert [event.name for event in call.events] == ["retry"]
    points = sdk.points()
    rejections = by_attribute(points["ideogram.rejections"], "reject_reason")
    assert rejections == {"inflight_limit": 1, "unknown": 1}
    assert by_attribute(points["ideogram.retries"], "error_type") == {"RateLimitError": 1}
    assert [point.count for point in points["ideogram.allowance.wait"]] == [3]


async def test_a_failed_call_marks_its_span_and_shows_no_key(
    sdk: Sdk, emulator: Emulator, png_path: Path
) -> None:
    wrong = "sk-wrong-9f8e7d6c-key"
    async with IdeogramClient(api_key=wrong, base_url=emulator.base_url) as client:
        with pytest.raises(AuthenticationError):
            await client.upscale(png_path)
    (call,) = sdk.finished("ideogram.upscale")
    assert call.attributes is not None
    assert call.attributes["ideogram.outcome"] == "error"
    assert call.attributes["error.type"] == "AuthenticationError"
    assert call.attributes["ideogram.attempts"] == 1
    assert call.status.status_code is StatusCode.ERROR
    assert wrong not in call.to_json()


async def test_the_allowance_gauges_show_the_bound_and_the_places_held(
    sdk: Sdk, emulator: Emulator, png_path: Path
) -> None:
    gc.collect()  # only this test's client is alive, so the sums are its own
    async with IdeogramClient(api_key=KEY, base_url=emulator.base_url, allowance=7) as client:
        emulator.pause()
        call = asyncio.create_task(client.upscale(png_path))
        await emulator.wait_in_flight(1)
        held = sdk.points()
        emulator.resume()
        await call
        idle = sdk.points()
    assert by_attribute(held["ideogram.allowance.limit"], "ideogram.allowance.kind") == {"local": 7}
    assert by_attribute(held["ideogram.allowance.in_use"], "ideogram.allowance.kind") == {
        "local": 1
    }
    assert by_attribute(idle["ideogram.allowance.in_use"], "ideogram.allowance.kind") == {
        "local": 0
    }


async def test_a_shared_allowance_is_reported_as_shared(
    sdk: Sdk, emulator: Emulator, redis_server: RedisServer, redis_key: str
) -> None:
    gc.collect()  # only this test's client is alive, so the sums are its own
    async with (
        RedisAllowance(redis_server.url, 6, key=redis_key) as shared,
        IdeogramClient(api_key=KEY, base_url=emulator.base_url, allowance=shared),
    ):
        points = sdk.points()
    assert by_attribute(points["ideogram.allowance.limit"], "ideogram.allowance.kind") == {
        "shared": 6
    }


async def test_v2_calls_have_their_spans_and_a_billed_generation_counts_its_cost(
    sdk: Sdk, emulator: Emulator, png_path: Path
) -> None:
    async with IdeogramClient(api_key=KEY, base_url=emulator.base_url, flavor="official") as client:
        quote = await client.v2.quote(png_path, MODEL)
        generation_id = await client.v2.submit(png_path, MODEL)
        with instant_retries():
            await client.v2.wait_for_generation(generation_id)
        results = [item async for item in client.v2.upscale_many([png_path, png_path], MODEL)]
    assert all(item.error is None for item in results)
    (quoted,) = sdk.finished("ideogram.v2.quote")
    assert quoted.attributes is not None
    assert quoted.attributes["ideogram.model"] == MODEL.model
    assert quoted.attributes["ideogram.endpoint"] == f"/v2/image/upscale/{MODEL.model}"
    assert quoted.attributes["ideogram.num_images"] == 1
    assert len(sdk.finished("ideogram.v2.submit")) == 1
    (waited,) = sdk.finished("ideogram.v2.generation.wait")
    assert {span.name for span in sdk.children(waited)} == {"ideogram.v2.generation.get"}
    assert len(sdk.finished("ideogram.v2.upscale")) == 2
    (cost,) = sdk.points()["ideogram.cost.usd"]
    assert cost.value == pytest.approx(float(quote.usd))


async def test_a_download_and_each_item_of_a_batch_have_their_span(
    sdk: Sdk, client: IdeogramClient, png_path: Path, tmp_path: Path
) -> None:
    results = [item async for item in client.upscale_many([png_path, png_path])]
    assert results[0].response is not None
    await client.download(results[0].response.data[0], tmp_path / "out")
    assert len(sdk.finished("ideogram.upscale")) == 2
    (download,) = sdk.finished("ideogram.download")
    assert download.attributes is not None
    assert download.attributes["ideogram.outcome"] == "ok"
    assert download.attributes["ideogram.attempts"] == 1


async def test_a_client_from_with_options_keeps_the_trace_configs(
    sdk: Sdk, emulator: Emulator, png_path: Path
) -> None:
    async with instrumented(emulator) as client:
        derived = client.with_options(retry=RetryPolicy(attempts=2))
        await derived.upscale(png_path)
    (call,) = sdk.finished("ideogram.upscale")
    assert [span.kind for span in sdk.children(call)] == [SpanKind.CLIENT]


def test_each_span_name_is_keyed_by_a_traced_method_of_the_client() -> None:
    client = IdeogramClient(api_key=KEY, base_url="http://127.0.0.1:9", flavor="official")
    for method in telemetry.SPAN_NAMES:
        assert hasattr(operator.attrgetter(method)(client), "__wrapped__"), method


async def test_trace_configs_reach_only_a_session_the_client_creates() -> None:
    with pytest.raises(ValidationError) as info:
        IdeogramClient(
            api_key=KEY,
            base_url="http://127.0.0.1:9",
            trace_configs=[object()],  # type: ignore[list-item]
        )
    assert str(info.value) == "trace_configs must be a list of aiohttp.TraceConfig, got list"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ValidationError) as info:
            IdeogramClient(
                api_key=KEY,
                base_url="http://127.0.0.1:9",
                session=session,
                trace_configs=[aiohttp.TraceConfig()],
            )
    assert str(info.value) == (
        "trace_configs apply to the session the client creates; with session=, give them "
        "to your own aiohttp.ClientSession(trace_configs=...)"
    )


# --- the hooks themselves, on instruments built by the test ------------------------------
#
# The module builds its instruments once, at import. These tests build a second set on an
# SDK of their own, so what they check is the code that builds them and the gauges'
# callbacks as they run now (not as they ran at import).


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sdk]:
    """New instruments, on a tracer and meter provider of this test's own, as the hooks' target."""
    exporter = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(exporter))
    delta = AggregationTemporality.DELTA
    reader = InMemoryMetricReader(preferred_temporality={Counter: delta, Histogram: delta})
    metering = MeterProvider(metric_readers=[reader])
    monkeypatch.setattr(trace, "get_tracer", tracing.get_tracer)
    monkeypatch.setattr(metrics, "get_meter", metering.get_meter)
    monkeypatch.setattr(telemetry, "_instruments", telemetry._Instruments())
    yield Sdk(exporter, reader)
    metering.shutdown()
    tracing.shutdown()


WAIT_BUCKETS = (0.0, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


async def test_each_instrument_has_its_name_unit_description_and_scope(fresh: Sdk) -> None:
    gc.collect()  # only this test's allowance is watched
    allowance = LocalAllowance(5)
    telemetry.watch(allowance)
    telemetry.waited(0.3)
    telemetry.rejected("inflight_limit")
    telemetry.retrying(1, ValueError("boom"), 0.5)
    telemetry.spent(2_000_000)
    data = fresh.reader.get_metrics_data()
    assert data is not None
    (resource,) = data.resource_metrics
    (scope,) = resource.scope_metrics
    assert (scope.scope.name, scope.scope.version) == ("ideogram_async", __version__)
    units = {metric.name: (metric.unit, metric.description) for metric in scope.metrics}
    assert units == {
        "ideogram.allowance.limit": ("{place}", telemetry.METRICS["ideogram.allowance.limit"]),
        "ideogram.allowance.in_use": ("{place}", telemetry.METRICS["ideogram.allowance.in_use"]),
        "ideogram.allowance.wait": ("s", telemetry.METRICS["ideogram.allowance.wait"]),
        "ideogram.rejections": ("{request}", telemetry.METRICS["ideogram.rejections"]),
        "ideogram.retries": ("{retry}", telemetry.METRICS["ideogram.retries"]),
        "ideogram.cost.usd": ("{USD}", telemetry.METRICS["ideogram.cost.usd"]),
    }
    points: dict[str, Any] = {metric.name: metric.data.data_points for metric in scope.metrics}
    (wait,) = points["ideogram.allowance.wait"]
    assert (wait.count, wait.sum, tuple(wait.explicit_bounds)) == (1, 0.3, WAIT_BUCKETS)
    (limit,) = points["ideogram.allowance.limit"]
    assert (limit.value, dict(limit.attributes)) == (5, {"ideogram.allowance.kind": "local"})
    assert by_attribute(points["ideogram.rejections"], "reject_reason") == {"inflight_limit": 1}
    assert by_attribute(points["ideogram.retries"], "error_type") == {"ValueError": 1}
    (cost,) = points["ideogram.cost.usd"]
    assert (cost.value, dict(cost.attributes)) == (2.0, {})


async def test_the_gauges_sum_the_watched_allowances_by_kind(
    fresh: Sdk, redis_server: RedisServer, redis_key: str
) -> None:
    gc.collect()  # only this test's allowances are watched
    small, large = LocalAllowance(3), LocalAllowance(4)
    async with RedisAllowance(redis_server.url, 6, key=redis_key) as shared:
        for allowance in (small, large, shared):
            telemetry.watch(allowance)
        telemetry.watch(small)  # watched twice, counted once
        async with small.hold(2), large.hold(1):
            held = fresh.points()
        idle = fresh.points()
    kind = "ideogram.allowance.kind"
    assert by_attribute(held["ideogram.allowance.limit"], kind) == {"local": 7, "shared": 6}
    assert by_attribute(held["ideogram.allowance.in_use"], kind)["local"] == 3
    assert by_attribute(idle["ideogram.allowance.in_use"], kind)["local"] == 0


class _Slotted:
    """An allowance of the application's own whose class cannot be weakly referenced."""

    __slots__ = ()
    maximum = limit = 9
    in_use = 0


async def test_an_allowance_without_weak_references_is_not_reported(fresh: Sdk) -> None:
    gc.collect()
    telemetry.watch(cast(Allowance, _Slotted()))
    assert "ideogram.allowance.limit" not in fresh.points()


async def test_a_traced_call_counts_its_attempts_and_sums_its_waits(fresh: Sdk) -> None:
    @telemetry.traced("upscale")
    async def call() -> str:
        telemetry.attempt(1)
        telemetry.waited(0.25)
        telemetry.attempt(2)
        telemetry.waited(0.5)
        telemetry.answered("req-2")
        return "done"

    assert await call() == "done"
    (span,) = fresh.finished("ideogram.upscale")
    assert span.instrumentation_scope is not None
    assert (span.instrumentation_scope.name, span.instrumentation_scope.version) == (
        "ideogram_async",
        __version__,
    )
    assert span.attributes == {
        "ideogram.outcome": "ok",
        "ideogram.attempts": 2,
        "ideogram.allowance.wait": 0.75,
        "ideogram.request_id": "req-2",
    }
    (wait,) = fresh.points()["ideogram.allowance.wait"]
    assert (wait.count, wait.sum) == (2, 0.75)


async def test_a_wait_outside_a_call_is_only_measured(fresh: Sdk) -> None:
    telemetry.waited(0.125)
    (wait,) = fresh.points()["ideogram.allowance.wait"]
    assert (wait.count, wait.sum) == (1, 0.125)
    assert fresh.spans.get_finished_spans() == ()


async def test_a_call_failing_before_any_attempt_marks_its_span_with_the_error(
    fresh: Sdk,
) -> None:
    error = ResponseFormatError("the answer was not JSON", body="<html>", request_id="req-7")

    @telemetry.traced("v2.quote")
    async def call() -> None:
        raise error

    with pytest.raises(ResponseFormatError) as raised:
        await call()
    assert raised.value is error
    (span,) = fresh.finished("ideogram.v2.quote")
    assert span.attributes == {
        "ideogram.outcome": "error",
        "error.type": "ResponseFormatError",
        "ideogram.request_id": "req-7",
        "ideogram.attempts": 0,
        "ideogram.allowance.wait": 0.0,
    }
    assert (span.status.status_code, span.status.description) == (StatusCode.ERROR, str(error))
    (event,) = span.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "ideogram_async.errors.ResponseFormatError"
    assert event.attributes["exception.message"] == str(error)


async def test_a_failure_without_a_request_id_is_raised_as_it_is(fresh: Sdk) -> None:
    @telemetry.traced("download")
    async def call() -> None:
        raise ValueError("no such folder")

    with pytest.raises(ValueError, match="no such folder"):
        await call()
    (span,) = fresh.finished("ideogram.download")
    assert span.attributes is not None
    assert "ideogram.request_id" not in span.attributes
    assert span.attributes["error.type"] == "ValueError"


def test_without_the_extra_traced_returns_the_function_itself() -> None:
    async def call() -> None:
        return None

    assert telemetry._unchanged("upscale")(call) is call


# --- IDEOGRAM_LOG, in this process ---------------------------------------------------------


@pytest.fixture
def library_log() -> Iterator[logging.Logger]:
    """The library's logger, its handlers and level put back after the test."""
    logger = logging.getLogger("ideogram_async")
    handlers, level = list(logger.handlers), logger.level
    yield logger
    for handler in logger.handlers:
        if handler not in handlers:
            logger.removeHandler(handler)
    logger.setLevel(level)


_LINE = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "


def test_ideogram_log_debug_adds_a_stderr_handler_at_debug(
    library_log: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    handler = telemetry.log_from_env({"IDEOGRAM_LOG": " Debug "})
    assert handler is not None
    assert handler in library_log.handlers
    assert library_log.level == logging.DEBUG
    library_log.getChild("retry").debug("attempt %d failed", 1)
    out, err = capsys.readouterr()
    assert out == ""
    assert re.fullmatch(_LINE + r"DEBUG ideogram_async\.retry: attempt 1 failed\n", err), err


def test_ideogram_log_info_leaves_out_debug_lines(
    library_log: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    assert telemetry.log_from_env({"IDEOGRAM_LOG": "info"}) is not None
    assert library_log.level == logging.INFO
    library_log.debug("a detail")
    library_log.info("a step")
    assert re.fullmatch(_LINE + r"INFO ideogram_async: a step\n", capsys.readouterr().err)


@pytest.mark.parametrize("environ", [{}, {"IDEOGRAM_LOG": ""}, {"IDEOGRAM_LOG": "  "}])
def test_ideogram_log_unset_or_empty_adds_nothing_and_says_nothing(
    environ: dict[str, str], library_log: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    handlers, level = list(library_log.handlers), library_log.level
    assert telemetry.log_from_env(environ) is None
    assert (library_log.handlers, library_log.level) == (handlers, level)
    assert capsys.readouterr() == ("", "")


def test_an_unknown_ideogram_log_value_adds_nothing_and_says_so_on_stderr(
    library_log: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    handlers, level = list(library_log.handlers), library_log.level
    assert telemetry.log_from_env({"IDEOGRAM_LOG": "Verbose"}) is None
    assert (library_log.handlers, library_log.level) == (handlers, level)
    assert capsys.readouterr() == (
        "",
        "ideogram_async: IDEOGRAM_LOG='verbose' is not one of info, debug; logging stays off\n",
    )


# --- without the extra, and IDEOGRAM_LOG: in a fresh interpreter ---------------------------

_BLOCKED = """
import sys
from importlib.abc import MetaPathFinder

class Blocker(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ImportError(f"{name} is blocked")
        return None

sys.meta_path.insert(0, Blocker())
"""

_UPSCALE = """
import asyncio, sys
from ideogram_async import IdeogramClient, telemetry
from ideogram_async.cli import main
from ideogram_async.limits import RedisAllowance
from ideogram_async.testing import Emulator, Fault, FaultPlan, instant_retries

async def main():
    plan = FaultPlan([Fault.status(503, retry_after=0)])
    async with Emulator(api_key=KEY, faults=plan, upscale=False) as emulator:
        async with IdeogramClient(api_key=KEY, base_url=emulator.base_url) as client:
            with instant_retries():
                answer = await client.upscale(IMAGE)
    print(telemetry.ENABLED, len(answer.data), sorted(
        name for name in sys.modules if name.startswith("opentelemetry")))

asyncio.run(main())
"""


async def _python(code: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "error",
        "-c",
        code,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IDEOGRAM_", "OTEL_"))}
    return env | extra


def _program(png_path: Path) -> str:
    return f"KEY = {KEY!r}\nIMAGE = {str(png_path)!r}\n" + textwrap.dedent(_UPSCALE)


async def test_without_opentelemetry_nothing_is_imported_and_the_client_works(
    png_path: Path,
) -> None:
    code, out, err = await _python(_BLOCKED + _program(png_path), _env())
    assert code == 0, err
    assert out.split() == ["False", "1", "[]"]


async def test_with_opentelemetry_the_same_program_sees_it(png_path: Path) -> None:
    code, out, err = await _python(_program(png_path), _env())
    assert code == 0, err
    assert out.split()[:2] == ["True", "1"]


async def test_ideogram_log_debug_writes_the_library_log_to_stderr_without_the_key(
    png_path: Path,
) -> None:
    code, _, err = await _python(_program(png_path), _env(IDEOGRAM_LOG="debug"))
    assert code == 0, err
    assert "DEBUG ideogram_async: upscale photo.png: attempt 1 failed" in err
    assert "attempt 2 succeeded" in err
    assert KEY not in err


async def test_ideogram_log_info_leaves_out_debug_lines_and_unset_logs_nothing(
    png_path: Path,
) -> None:
    code, _, info = await _python(_program(png_path), _env(IDEOGRAM_LOG="INFO"))
    assert code == 0, info
    assert "attempt 1 failed" not in info
    code, _, unset = await _python(_program(png_path), _env())
    assert code == 0, unset
    assert unset == ""


async def test_an_unknown_ideogram_log_value_says_so_and_logs_nothing(png_path: Path) -> None:
    code, _, err = await _python(_program(png_path), _env(IDEOGRAM_LOG="verbose"))
    assert code == 0, err
    assert err.strip() == (
        "ideogram_async: IDEOGRAM_LOG='verbose' is not one of info, debug; logging stays off"
    )


# --- --metrics-port -------------------------------------------------------------------------


async def _scrape(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        return await response.text()


def _sample(text: str, name: str) -> float:
    """The value of the first sample of ``name`` (labels ignored) in Prometheus text."""
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in:\n{text}")


async def test_metrics_port_serves_prometheus_text_during_a_run(
    emulator: Emulator, png_path: Path, tmp_path: Path
) -> None:
    emulator.pause()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "default",
        "-m",
        "ideogram_async",
        "upscale",
        str(png_path),
        "--out",
        str(tmp_path / "out"),
        "--base-url",
        emulator.base_url,
        "--allowance",
        "3",
        "--metrics-port",
        "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(IDEOGRAM_API_KEY=KEY),
    )
    assert process.stderr is not None
    async with asyncio.timeout(60):
        line = (await process.stderr.readline()).decode()
        assert line.startswith("Metrics at http://127.0.0.1:"), line
        url = line.split()[-1]
        await emulator.wait_in_flight(1)
        during = await _scrape(url)
        emulator.resume()
        out, err = await process.communicate()
    assert process.returncode == 0, err
    assert _sample(during, "ideogram_allowance_limit") == 3
    assert _sample(during, "ideogram_allowance_in_use") == 1
    assert _sample(during, "ideogram_allowance_wait_seconds_count") == 1
    assert "# TYPE ideogram_allowance_wait_seconds histogram" in during
    assert KEY not in during + out.decode() + err.decode()
    assert "Traceback" not in err.decode()


def test_a_metrics_port_in_use_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["upscale", "x.png", "-o", "out", "--metrics-port", str(port)])
    assert code == 2
    assert f"--metrics-port: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> list[MeterProvider]:
    """The meter providers ``--metrics-port`` installs (the process's own stays as it is)."""
    providers: list[MeterProvider] = []
    monkeypatch.setattr(metrics, "set_meter_provider", providers.append)
    return providers


@pytest.mark.parametrize(("host", "shown"), [("127.0.0.1", "127.0.0.1"), ("::1", "[::1]")])
async def test_serving_metrics_serves_what_its_provider_measures_for_the_block_only(
    installed: list[MeterProvider], capsys: pytest.CaptureFixture[str], host: str, shown: str
) -> None:
    before = set(threading.enumerate())
    with serving_metrics((host, 0)):
        (provider,) = installed
        provider.get_meter("test").create_counter("served_things").add(3)
        line = capsys.readouterr().err
        assert re.fullmatch(rf"Metrics at http://{re.escape(shown)}:\d+/metrics\n", line), line
        url = line.split()[-1]
        assert _sample(await _scrape(url), "served_things_total") == 3
    assert set(threading.enumerate()) <= before  # the server's thread has ended
    with pytest.raises(aiohttp.ClientConnectionError):
        await _scrape(url)
    assert "served_things" not in prometheus_client.generate_latest().decode()


def test_serving_metrics_without_an_address_serves_nothing(
    installed: list[MeterProvider], capsys: pytest.CaptureFixture[str]
) -> None:
    with serving_metrics(None):
        pass
    assert installed == []
    assert capsys.readouterr() == ("", "")


def test_serving_metrics_without_the_extra_says_which_to_install(
    installed: list[MeterProvider], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with (
        pytest.raises(UsageError) as raised,
        serving_metrics(("127.0.0.1", 0)),
    ):
        pass
    assert str(raised.value) == (
        "--metrics-port needs the prometheus extra: pip install 'ideogram-async[prometheus]'"
    )
    assert raised.value.__cause__ is None
    assert installed == []


def test_serving_metrics_on_a_port_in_use_says_why_and_what_to_do(
    installed: list[MeterProvider],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UsageError) as raised, serving_metrics(("127.0.0.1", port)):
            pass
    assert str(raised.value) == (
        f"--metrics-port: cannot listen on 127.0.0.1:{port} (Address already in use); "
        "choose another port"
    )
    assert raised.value.__cause__ is None
    assert installed == []
