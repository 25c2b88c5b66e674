"""Optional OpenTelemetry spans and metrics, and the ``IDEOGRAM_LOG`` switch.

With the ``otel`` extra installed (``opentelemetry-api``), each public call of the
client is one span (names in :data:`SPAN_NAMES`), made current so that aiohttp's own
instrumentation nests its per-attempt spans beneath it, and the client records the
metrics in :data:`METRICS`. Whatever provider the application installs receives
them; with none, the API's no-op one drops them. Without the extra, no OpenTelemetry
module is imported and every hook here is a function that does nothing.

The client calls a handful of hooks at fixed points: :func:`traced` around each
public call, :func:`describe` once the request is known, :func:`attempt`,
:func:`waited`, :func:`rejected`, :func:`retrying` and :func:`answered` on the attempt
path, :func:`spent` when a price is known, :func:`watch` for each client's allowance.
Nothing they record carries the API key.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

from ._version import __version__
from .limits import Allowance, LocalAllowance

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.trace import Span

try:
    from opentelemetry import metrics, trace
except ImportError:  # the otel extra is not installed: every hook does nothing
    ENABLED = False
else:
    ENABLED = True

__all__ = [
    "ENABLED",
    "LOG_LEVELS",
    "METRICS",
    "SPAN_NAMES",
    "answered",
    "attempt",
    "describe",
    "log_from_env",
    "rejected",
    "retrying",
    "spent",
    "traced",
    "waited",
    "watch",
]

SPAN_NAMES: Mapping[str, str] = {
    "upscale": "ideogram.upscale",
    "download": "ideogram.download",
    "v2.upscale": "ideogram.v2.upscale",
    "v2.submit": "ideogram.v2.submit",
    "v2.quote": "ideogram.v2.quote",
    "v2.get_generation": "ideogram.v2.generation.get",
    "v2.wait_for_generation": "ideogram.v2.generation.wait",
}
"""The span of each public call, by the client method that makes it (``v2.``: of
``client.v2``).

``upscale_many`` makes one ``ideogram.upscale`` span per image, ``v2.upscale_many`` one
``ideogram.v2.upscale`` span per image, and ``v2.quote_many`` one ``ideogram.v2.quote``
span per image.
"""

METRICS: Mapping[str, str] = {
    "ideogram.allowance.limit": "The allowance's current bound, in places (images)",
    "ideogram.allowance.in_use": "Places (images) held in flight now",
    "ideogram.allowance.wait": "Seconds an attempt waited for its places",
    "ideogram.rejections": "Requests the service refused with a 429, by reject_reason",
    "ideogram.retries": "Attempts retried after a transient failure, by error_type",
    "ideogram.cost.usd": "US dollars billed, where the service reports it",
}
"""Every instrument the client records (gauges, a histogram, counters), with what it measures."""

_WAIT_BUCKETS = (0.0, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Histogram bounds of ``ideogram.allowance.wait`` (seconds): mostly none, sometimes a minute."""

LOG_LEVELS: Mapping[str, int] = {"info": logging.INFO, "debug": logging.DEBUG}
"""The values of ``IDEOGRAM_LOG`` and the level each turns on."""

_P = ParamSpec("_P")
_T = TypeVar("_T")
_Call = Callable[_P, Coroutine[Any, Any, _T]]

_logger = logging.getLogger("ideogram_async")


def log_from_env(environ: Mapping[str, str] = os.environ) -> logging.Handler | None:
    """Send the library's log to stderr when ``IDEOGRAM_LOG`` is ``info`` or ``debug``.

    Like ``OPENAI_LOG``: a switch for a run, no code needed. Returns the handler it
    added (``None`` when the variable is unset or empty). An unknown value adds nothing
    and says so on stderr. The library's log lines never contain the API key.
    """
    value = environ.get("IDEOGRAM_LOG", "").strip().lower()
    if not value:
        return None
    level = LOG_LEVELS.get(value)
    if level is None:
        print(
            f"ideogram_async: IDEOGRAM_LOG={value!r} is not one of "
            f"{', '.join(LOG_LEVELS)}; logging stays off",
            file=sys.stderr,
        )
        return None
    handler = logging.StreamHandler()  # to sys.stderr
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    _logger.addHandler(handler)
    _logger.setLevel(level)
    return handler


class _Record:
    """What one call's span has gathered so far."""

    __slots__ = ("attempts", "span", "waited")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.attempts = 0
        self.waited = 0.0


_current: ContextVar[_Record | None] = ContextVar("ideogram_async_call", default=None)
_allowances: weakref.WeakSet[Allowance] = weakref.WeakSet()
_allowances_lock = threading.Lock()  # a Prometheus scrape reads them from its own thread


def _noop(*_: object, **__: object) -> None:
    """A hook without the extra: does nothing."""


def _unchanged(method: str) -> Callable[[_Call[_P, _T]], _Call[_P, _T]]:
    """``traced`` without the extra: the function itself, so a call costs nothing more."""
    return lambda function: function


class _Instruments:
    """The tracer and the metric instruments, created once the API is known to be there."""

    def __init__(self) -> None:
        self.tracer = trace.get_tracer("ideogram_async", __version__)
        meter = metrics.get_meter("ideogram_async", __version__)
        for name, read in (
            ("ideogram.allowance.limit", _limit),
            ("ideogram.allowance.in_use", _in_use),
        ):
            meter.create_observable_gauge(
                name, [_observe(read)], unit="{place}", description=METRICS[name]
            )
        self.wait = meter.create_histogram(
            "ideogram.allowance.wait",
            unit="s",
            description=METRICS["ideogram.allowance.wait"],
            explicit_bucket_boundaries_advisory=_WAIT_BUCKETS,
        )
        self.rejections = meter.create_counter(
            "ideogram.rejections", unit="{request}", description=METRICS["ideogram.rejections"]
        )
        self.retries = meter.create_counter(
            "ideogram.retries", unit="{retry}", description=METRICS["ideogram.retries"]
        )
        self.cost = meter.create_counter(
            "ideogram.cost.usd", unit="{USD}", description=METRICS["ideogram.cost.usd"]
        )


def _limit(allowance: Allowance) -> int:
    return allowance.limit


def _in_use(allowance: Allowance) -> int:
    return allowance.in_use


def _observe(
    read: Callable[[Allowance], int],
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    """A gauge callback: ``read`` of every watched allowance, summed per kind."""

    def callback(_: CallbackOptions) -> Iterable[Observation]:
        totals: dict[str, int] = {}
        with _allowances_lock:
            watched = list(_allowances)
        for allowance in watched:
            kind = "local" if isinstance(allowance, LocalAllowance) else "shared"
            totals[kind] = totals.get(kind, 0) + read(allowance)
        return [
            metrics.Observation(total, {"ideogram.allowance.kind": kind})
            for kind, total in totals.items()
        ]

    return callback


def _traced(method: str) -> Callable[[_Call[_P, _T]], _Call[_P, _T]]:
    """Decorate the client's ``method``: each call is one current span.

    The span ends with ``ideogram.outcome`` (``ok``, ``error`` or ``cancelled``),
    ``ideogram.attempts`` and ``ideogram.allowance.wait``; a failure also sets
    ``error.type``, the request id it carries and the span's error status.
    """
    name = SPAN_NAMES[method]

    def decorate(function: _Call[_P, _T]) -> _Call[_P, _T]:
        @functools.wraps(function)
        async def call(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            with _instruments.tracer.start_as_current_span(
                name, record_exception=False, set_status_on_exception=False
            ) as span:
                record = _Record(span)
                token = _current.set(record)
                try:
                    result = await function(*args, **kwargs)
                except asyncio.CancelledError:
                    span.set_attribute("ideogram.outcome", "cancelled")
                    raise
                except Exception as error:
                    _failed(span, error)
                    raise
                else:
                    span.set_attribute("ideogram.outcome", "ok")
                    return result
                finally:
                    _current.reset(token)
                    span.set_attribute("ideogram.attempts", record.attempts)
                    span.set_attribute("ideogram.allowance.wait", record.waited)

        return call

    return decorate


def _failed(span: Span, error: Exception) -> None:
    """Mark ``span`` as failed by ``error`` (whose message never carries the key)."""
    span.set_attribute("ideogram.outcome", "error")
    span.set_attribute("error.type", type(error).__name__)
    request_id = getattr(error, "request_id", None)
    if isinstance(request_id, str):
        span.set_attribute("ideogram.request_id", request_id)
    span.record_exception(error)
    span.set_status(trace.StatusCode.ERROR, str(error))


def _describe(
    *, url: str | None = None, model: str | None = None, num_images: int | None = None
) -> None:
    """Name what the current call asks for: its endpoint (the URL's path), model, images."""
    record = _current.get()
    if record is None:
        return
    if url is not None:
        record.span.set_attribute("ideogram.endpoint", urlsplit(url).path)
    if model is not None:
        record.span.set_attribute("ideogram.model", model)
    if num_images is not None:
        record.span.set_attribute("ideogram.num_images", num_images)


def _attempt(number: int) -> None:
    """Attempt ``number`` (1-based) of the current call starts."""
    record = _current.get()
    if record is not None:
        record.attempts = number


def _waited(seconds: float) -> None:
    """An attempt got its places after waiting ``seconds``."""
    _instruments.wait.record(seconds)
    record = _current.get()
    if record is not None:
        record.waited += seconds


def _rejected(reason: str | None) -> None:
    """The service refused a request with a 429 (``reason``: its ``reject_reason``)."""
    _instruments.rejections.add(1, {"reject_reason": reason or "unknown"})


def _retrying(number: int, error: Exception, wait: float) -> None:
    """Attempt ``number`` failed with ``error``; the call retries after ``wait`` seconds."""
    kind = type(error).__name__
    _instruments.retries.add(1, {"error_type": kind})
    record = _current.get()
    if record is not None:
        record.span.add_event(
            "retry",
            {
                "ideogram.attempt": number,
                "error.type": kind,
                "ideogram.retry.reason": str(error),
                "ideogram.retry.wait": wait,
            },
        )


def _answered(request_id: str | None) -> None:
    """The service answered; its ``request_id`` (free of the key) goes on the span."""
    record = _current.get()
    if record is not None and request_id is not None:
        record.span.set_attribute("ideogram.request_id", request_id)


def _spent(usd_micros: int) -> None:
    """The service billed ``usd_micros`` (millionths of a dollar)."""
    _instruments.cost.add(usd_micros / 1_000_000)


def _watch(allowance: Allowance) -> None:
    """Report ``allowance`` in the gauges while it lives (once, however often watched).

    An allowance that cannot be weakly referenced (a class with ``__slots__`` and no
    ``__weakref__``) is not reported, rather than kept alive.
    """
    with _allowances_lock, contextlib.suppress(TypeError):
        _allowances.add(allowance)


_instruments: _Instruments
if ENABLED:
    _instruments = _Instruments()
    traced = _traced
    describe = _describe
    attempt = _attempt
    waited = _waited
    rejected = _rejected
    retrying = _retrying
    answered = _answered
    spent = _spent
    watch = _watch
else:
    traced = _unchanged
    describe = attempt = waited = rejected = retrying = answered = spent = watch = _noop
