"""A local emulator of the Ideogram upscale service, for tests, demos and benchmarks.

It speaks both flavors over a real socket, upscales with Pillow (the ``emulator`` extra)
or answers with a fixed tiny PNG (``upscale=False``), injects faults on demand and counts
what it saw::

    from ideogram_async.testing import Emulator, Fault, FaultPlan, instant_retries

    plan = FaultPlan([Fault.status(503, retry_after=1), None])
    async with Emulator(faults=plan) as emu:
        with instant_retries():
            ...  # point IdeogramClient at emu.base_url with api_key="test-key"
        assert emu.stats.requests == 2

``pytest_plugins = ["ideogram_async.testing.pytest_plugin"]`` provides an
``ideogram_emulator`` fixture; ``python -m ideogram_async.testing --port 8000`` serves
one from a shell. :class:`RedisServer` runs a real ``redis-server`` for a shared allowance,
and :class:`CountingAllowance` counts what a client reports to its allowance.
"""

from ._counting import CountingAllowance
from ._emulator import Emulator
from ._faults import Fault, FaultPlan
from ._places import AllowanceBody
from ._redis import RedisServer, free_port
from ._retries import instant_retries
from ._serve import run_server, serve_main
from ._stats import EmulatorStats, ReceivedUpload

__all__ = [
    "AllowanceBody",
    "CountingAllowance",
    "Emulator",
    "EmulatorStats",
    "Fault",
    "FaultPlan",
    "ReceivedUpload",
    "RedisServer",
    "free_port",
    "instant_retries",
    "run_server",
    "serve_main",
]
