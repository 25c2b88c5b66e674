"""The public surface of the package (``__init__.py``), in the spirit of httpx's test."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import subprocess
import sys
import types

import pytest

import ideogram_async


def test_all_is_sorted() -> None:
    assert ideogram_async.__all__ == sorted(ideogram_async.__all__)
    assert len(set(ideogram_async.__all__)) == len(ideogram_async.__all__)


def test_every_name_in_all_exists() -> None:
    missing = [n for n in ideogram_async.__all__ if not hasattr(ideogram_async, n)]
    assert missing == []


def test_all_is_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(ideogram_async).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(ideogram_async.__all__) == public | {"__version__"}


def test_star_import_gives_all() -> None:
    namespace: dict[str, object] = {}
    exec("from ideogram_async import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(ideogram_async.__all__)


def test_exported_objects_come_from_the_package() -> None:
    for name in ideogram_async.__all__:
        value = getattr(ideogram_async, name)
        module = getattr(value, "__module__", None)
        if module is not None and isinstance(value, type):
            assert module.startswith("ideogram_async."), (name, module)


def test_py_typed_ships() -> None:
    marker = importlib.resources.files("ideogram_async").joinpath("py.typed")
    assert marker.is_file()


def test_version_is_a_string_matching_the_distribution() -> None:
    assert isinstance(ideogram_async.__version__, str)
    assert ideogram_async.__version__
    assert ideogram_async.__version__ == importlib.metadata.version("ideogram-async")


_GIVE_UP = """
import asyncio, socket{configure}
from ideogram_async import APIConnectionError, IdeogramClient, RetryPolicy

with socket.socket() as closed:  # a port nothing listens on
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]


async def main() -> None:
    async with IdeogramClient(api_key="k", base_url=f"http://127.0.0.1:{{port}}") as client:
        try:
            await client.upscale(b"\\x89PNG\\r\\n\\x1a\\n-", retry=RetryPolicy.no_retries())
        except APIConnectionError:
            print("failed as expected")


asyncio.run(main())
"""


@pytest.mark.parametrize("configured", [False, True])
def test_the_library_prints_nothing_until_the_app_configures_logging(configured: bool) -> None:
    configure = "\nimport logging; logging.basicConfig()" if configured else ""
    run = subprocess.run(
        [sys.executable, "-c", _GIVE_UP.format(configure=configure)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert run.stdout == "failed as expected\n"
    if configured:  # the warning exists, and reaches the app's handlers
        assert "WARNING:ideogram_async:" in run.stderr
    else:
        assert run.stderr == ""
