"""Tracing on, for the telemetry workload: the OpenTelemetry SDK with in-memory exporters.

A worker process of ``library-traced`` or ``library-instrumented`` installs the SDK as
the global provider before its run, as an application would: every span goes to an
``InMemorySpanExporter`` (through a ``SimpleSpanProcessor``, so its cost is in the run)
and every metric to an ``InMemoryMetricReader``.
"""

from __future__ import annotations

import functools

import aiohttp
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.aiohttp_client import create_trace_config
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

__all__ = ["Tracing", "tracing"]


class Tracing:
    """The SDK installed globally; ``trace_configs`` adds aiohttp's own instrumentation."""

    def __init__(self, *, aiohttp_spans: bool) -> None:
        self.spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.spans))
        trace.set_tracer_provider(provider)
        self.reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[self.reader]))
        self.trace_configs: list[aiohttp.TraceConfig] = (
            [create_trace_config()] if aiohttp_spans else []
        )

    def check(self, calls: int) -> None:
        """Fail unless the run made a span per call (and one per attempt with aiohttp's).

        Clears what it checked, so the next run in this process is checked on its own.
        """
        spans = self.spans.get_finished_spans()
        self.spans.clear()
        expected = calls * (2 if self.trace_configs else 1)
        if len(spans) < expected:
            raise RuntimeError(f"tracing was on, but {len(spans)} spans for {calls} calls")
        if self.reader.get_metrics_data() is None:
            raise RuntimeError("tracing was on, but no metrics were recorded")


@functools.cache
def tracing(*, aiohttp_spans: bool) -> Tracing:
    """The SDK, installed once per process (a global provider cannot be replaced)."""
    return Tracing(aiohttp_spans=aiohttp_spans)
