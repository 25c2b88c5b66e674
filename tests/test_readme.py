"""Every ```python block of README.md runs as written, against the emulator.

Each block runs in its own ``python -W error`` subprocess, in a temporary folder that
holds sample images (``photo.png``, ``photo.jpg`` and ``photos/`` with a PNG, a JPEG
and a WebP), with ``IDEOGRAM_BASE_URL`` and ``IDEOGRAM_API_KEY`` pointing at a running
emulator, as the README tells readers to do. So a block must make its own imports and
read the URL and key from the environment (or name them itself). It may use top-level
``await`` (then it runs in ``asyncio.run``). Host names other than ``localhost`` do not
resolve, so a block can build a client for another host but never reach it.

A block that defines ``test_*`` functions is a test file: it runs under pytest
(which must collect something and pass) instead.

To leave a block out, put an HTML comment naming why on the line right before its
fence; use it sparingly, for blocks that cannot run here (a real service, a server
this suite does not start)::

    <!-- not-run: needs a Redis server -->
    ```python
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import sys
from pathlib import Path

import attrs
import pytest
from PIL import Image

from ideogram_async.testing import Emulator

from ._support import KEY

README = Path(__file__).parent.parent / "README.md"
SKIP = re.compile(r"<!--\s*not-run:\s*(?P<reason>.+?)\s*-->")
TIMEOUT = 120.0
_LOOP_SCOPE_UNSET = 'The configuration option "asyncio_default_fixture_loop_scope" is unset'

# Runs one block (argv[1], already padded so its line numbers are the README's).
_RUNNER = """
import ast, asyncio, inspect, socket, sys

_getaddrinfo = socket.getaddrinfo


def _local_only(host, *args, **kwargs):
    if host not in ("127.0.0.1", "localhost", "::1", b"127.0.0.1", b"localhost"):
        raise OSError(f"a README block tried to reach {host!r}: only the emulator is allowed")
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _local_only
with open(sys.argv[1], encoding="utf-8") as file:
    code = compile(file.read(), "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
result = eval(code, {"__name__": "__main__"})
if inspect.iscoroutine(result):
    asyncio.run(result)
"""


@attrs.frozen
class Block:
    line: int
    """The README line of the block's first line of code."""
    code: str
    skip: str | None
    """Why it is left out, or None."""

    @property
    def is_test_file(self) -> bool:
        tree = ast.parse(self.code)
        return any(
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.name.startswith("test_")
            for node in tree.body
        )


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks of a Markdown text, with any skip marker right before each."""
    lines = text.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        if lines[index].strip() == "```python":
            start = index + 1
            end = start
            while lines[end].strip() != "```":
                end += 1
            marker = SKIP.search(lines[index - 1]) if index else None
            blocks.append(
                Block(
                    line=start + 1,
                    code="\n".join(lines[start:end]) + "\n",
                    skip=marker["reason"] if marker else None,
                )
            )
            index = end
        index += 1
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def make_samples(folder: Path) -> None:
    Image.new("RGB", (64, 48), (20, 120, 200)).save(folder / "photo.png")
    Image.new("RGB", (48, 64), (200, 120, 20)).save(folder / "photo.jpg")
    (folder / "photos").mkdir()
    for shade, name in enumerate(["beach.png", "city.jpg", "forest.webp"]):
        Image.new("RGB", (32, 24), (shade * 80, 90, 160)).save(folder / "photos" / name)


async def run(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode or 0, output.decode(errors="replace")


def test_the_readme_has_python_blocks_and_markers_parse() -> None:
    assert len(BLOCKS) >= 5
    marked = python_blocks("text\n<!-- not-run: needs Redis -->\n```python\nx = 1\n```\n")
    assert marked == [Block(line=4, code="x = 1\n", skip="needs Redis")]
    tests = python_blocks("```python\nasync def test_it() -> None:\n    pass\n```\n")
    assert tests[0].is_test_file


@pytest.mark.parametrize("block", BLOCKS, ids=[f"README.md:{b.line}" for b in BLOCKS])
async def test_readme_block_runs_as_written(
    block: Block, emulator: Emulator, tmp_path: Path
) -> None:
    if block.skip is not None:
        pytest.skip(block.skip)
    make_samples(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDEOGRAM_")}
    env |= {"IDEOGRAM_BASE_URL": emulator.base_url, "IDEOGRAM_API_KEY": KEY}
    if block.is_test_file:
        (tmp_path / "test_readme_block.py").write_text(block.code, encoding="utf-8")
        args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"]
        # pytest-asyncio's nag about its unset loop-scope option (the README explains it).
        args += ["-W", f"ignore:{_LOOP_SCOPE_UNSET}:pytest.PytestDeprecationWarning"]
        status, output = await run([*args, "test_readme_block.py"], tmp_path, env)
        assert status == 0, f"README.md:{block.line} failed under pytest:\n{output}"
        assert re.search(r"\b[1-9]\d* passed\b", output), output
        return
    script = tmp_path / ".block.py"
    script.write_text("\n" * (block.line - 1) + block.code, encoding="utf-8")
    runner = [sys.executable, "-W", "error", "-c", _RUNNER, str(script)]
    status, output = await run(runner, tmp_path, env)
    assert status == 0, f"README.md:{block.line} failed:\n{output}"
