"""Every ```python block of docs/allowance.md runs as ``python example.py``, as written.

Each runs in a temporary folder holding ``photo.png``, with ``IDEOGRAM_BASE_URL`` and
``IDEOGRAM_API_KEY`` pointing at a running emulator and ``REDIS_URL`` at a real
``redis-server``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from ideogram_async.testing import Emulator, RedisServer

from ._support import KEY, make_image
from .test_readme import Block, python_blocks

DOC = Path(__file__).parent.parent / "docs" / "allowance.md"
BLOCKS = python_blocks(DOC.read_text(encoding="utf-8"))


def test_the_page_has_python_blocks() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("block", BLOCKS, ids=[f"allowance.md:{b.line}" for b in BLOCKS])
async def test_each_block_runs_as_a_program(
    block: Block, emulator: Emulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    code = block.code
    (tmp_path / "photo.png").write_bytes(make_image("png"))
    (tmp_path / "example.py").write_text(code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDEOGRAM_")}
    env |= {"IDEOGRAM_BASE_URL": emulator.base_url, "IDEOGRAM_API_KEY": KEY}
    env["REDIS_URL"] = redis_server.url
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-W", "error", "example.py"],
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()
    assert output.strip(), "the example printed nothing"
