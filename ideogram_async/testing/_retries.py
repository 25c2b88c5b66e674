"""The switch that makes the client's waits between attempts instant, for fast retry tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ideogram_async.retry import set_testing

__all__ = ["instant_retries"]


@contextlib.contextmanager
def instant_retries() -> Iterator[None]:
    """Make every wait between attempts of ``ideogram_async`` instant inside the ``with`` block.

    Retries still happen (and are counted by retry hooks); only the waits between them
    are skipped, so a test of retry behaviour runs in milliseconds. The previous setting
    is restored on exit, so blocks nest. It is ``ideogram_async.retry.set_testing(True)``
    for the duration of the block.
    """
    with set_testing(True):
        yield
