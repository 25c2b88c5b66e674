"""Every ```python block of docs/client.md runs as written, against the emulator."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ideogram_async.testing import Emulator

from ._support import KEY
from .test_readme import _RUNNER, Block, make_samples, python_blocks, run

DOC = Path(__file__).parent.parent / "docs" / "client.md"
BLOCKS = python_blocks(DOC.read_text(encoding="utf-8"))


def test_the_doc_has_its_examples() -> None:
    assert len(BLOCKS) == 3
    assert all(block.skip is None and "asyncio.run(main())" in block.code for block in BLOCKS)


@pytest.mark.parametrize("block", BLOCKS, ids=[f"client.md:{b.line}" for b in BLOCKS])
async def test_doc_block_runs_as_written(block: Block, emulator: Emulator, tmp_path: Path) -> None:
    make_samples(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDEOGRAM_")}
    env |= {"IDEOGRAM_BASE_URL": emulator.base_url, "IDEOGRAM_API_KEY": KEY}
    script = tmp_path / "example.py"
    script.write_text("\n" * (block.line - 1) + block.code, encoding="utf-8")
    runner = [sys.executable, "-W", "error", "-c", _RUNNER, str(script)]
    status, output = await run(runner, tmp_path, env)
    assert status == 0, f"docs/client.md:{block.line} failed:\n{output}"
    assert output.strip(), "an example prints what it did"
