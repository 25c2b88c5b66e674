"""``--metrics-port``: the client's metrics in Prometheus text format while a run lasts.

The well-kept way: OpenTelemetry's SDK with its Prometheus reader, served by
``prometheus_client``'s own HTTP server (a thread), both from the ``prometheus`` extra.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from ._inputs import UsageError

__all__ = ["serving_metrics"]


@contextlib.contextmanager
def serving_metrics(address: tuple[str, int] | None) -> Iterator[None]:
    """Serve ``http://HOST:PORT/metrics`` for the block (nothing when ``address`` is None).

    Says where on stderr (with the port chosen when ``PORT`` is 0). A port that cannot
    be bound, or the extra missing, is a usage error: nothing has been sent yet.
    """
    if address is None:
        yield
        return
    try:
        from opentelemetry import metrics
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from prometheus_client import start_http_server
    except ImportError:
        raise UsageError(
            "--metrics-port needs the prometheus extra: pip install 'ideogram-async[prometheus]'"
        ) from None
    host, port = address
    try:
        server, thread = start_http_server(port, addr=host)
    except OSError as exc:
        raise UsageError(
            f"--metrics-port: cannot listen on {host}:{port} ({exc.strerror or exc}); "
            "choose another port"
        ) from None
    provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
    metrics.set_meter_provider(provider)
    shown = f"[{host}]" if ":" in host else host
    print(f"Metrics at http://{shown}:{server.server_port}/metrics", file=sys.stderr, flush=True)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        provider.shutdown()
