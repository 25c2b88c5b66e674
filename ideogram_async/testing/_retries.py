"""The switch that makes the client's backoff sleeps instant, for fast retry tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["instant_retries"]


@contextlib.contextmanager
def instant_retries() -> Iterator[None]:
    """Make every retry backoff of ``ideogram_async`` instant inside the ``with`` block.

    Retries still happen (and are counted by retry hooks); only the waits between them
    are skipped, so a test of retry behaviour runs in milliseconds. The previous setting
    is restored on exit, so blocks nest.
    """
    from ideogram_async import retry as _retry

    previous = _retry._instant_enabled()
    _retry._set_instant(True)
    try:
        yield
    finally:
        _retry._set_instant(previous)
