"""Every ```python block of the README, CONTRIBUTING and docs/ runs as written.

Each block runs in its own ``python -W error`` subprocess, in a temporary folder that
holds sample images (``photo.png``, ``photo.jpg`` and ``photos/`` with a PNG, a JPEG
and a WebP), with ``IDEOGRAM_BASE_URL`` and ``IDEOGRAM_API_KEY`` pointing at a running
emulator, as the docs tell readers to do: saved as ``example.py`` and run with ``python
example.py``. So a block must make its own imports and read the URL and key from the
environment (or name them itself), and cannot use top-level ``await``. Host names other
than ``localhost`` do not resolve, so a block can build a client for another host but
never reach it.

A block that defines ``test_*`` functions is a test file: it runs under pytest
(which must collect something and pass) instead.

A block that needs a Redis server says so on the line right before its fence; it then
runs with ``REDIS_URL`` naming a real ``redis-server`` on a loopback port (the suite's
``redis_server``; skipped, with the reason, where ``redis-server`` is not installed)::

    <!-- needs: redis -->
    ```python

To leave a block out, put an HTML comment naming why on the line right before its
fence; use it sparingly, for blocks that cannot run here (a real service, worker
processes)::

    <!-- not-run: needs the real service -->
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

from ideogram_async.testing import Emulator, RedisServer

from ._support import KEY

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = re.compile(r"<!--\s*not-run:\s*(?P<reason>.+?)\s*-->")
NEEDS = re.compile(r"<!--\s*needs:\s*(?P<what>.+?)\s*-->")
SERVICES = {"redis"}
"""What a block may need: each is started for it by the test."""
TIMEOUT = 120.0
_LOOP_SCOPE_UNSET = 'The configuration option "asyncio_default_fixture_loop_scope" is unset'

# Runs example.py as `python example.py` would, with only loopback names resolving.
_RUNNER = """
import runpy, socket

_getaddrinfo = socket.getaddrinfo


def _local_only(host, *args, **kwargs):
    if host not in ("127.0.0.1", "localhost", "::1", b"127.0.0.1", b"localhost"):
        raise OSError(f"a docs example tried to reach {host!r}: only the emulator is allowed")
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _local_only
runpy.run_path("example.py", run_name="__main__")
"""


@attrs.frozen
class Block:
    doc: str
    """The file it is in, relative to the repository (``docs/v2.md``)."""
    line: int
    """The line of the block's first line of code in its file."""
    code: str
    skip: str | None
    """Why it is left out, or None."""
    needs: frozenset[str] = frozenset()
    """The services it runs against besides the emulator (``redis``)."""

    @property
    def is_test_file(self) -> bool:
        tree = ast.parse(self.code)
        return any(
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.name.startswith("test_")
            for node in tree.body
        )


def python_blocks(text: str, doc: str = "README.md") -> list[Block]:
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
            before = lines[index - 1] if index else ""
            marker = SKIP.search(before)
            needs = NEEDS.search(before)
            blocks.append(
                Block(
                    doc=doc,
                    line=start + 1,
                    code="\n".join(lines[start:end]) + "\n",
                    skip=marker["reason"] if marker else None,
                    needs=frozenset(
                        part.strip() for part in (needs["what"] if needs else "").split(",")
                    )
                    - {""},
                )
            )
            index = end
        index += 1
    return blocks


BLOCKS = [
    block
    for path in DOCS
    for block in python_blocks(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix())
]


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


def test_the_docs_have_python_blocks_and_markers_parse() -> None:
    assert len(BLOCKS) >= 10
    assert {block.doc for block in BLOCKS} >= {"README.md", "docs/library.md", "docs/v2.md"}
    marked = python_blocks("text\n<!-- not-run: needs Redis -->\n```python\nx = 1\n```\n", "a.md")
    assert marked == [Block(doc="a.md", line=4, code="x = 1\n", skip="needs Redis")]
    tests = python_blocks("```python\nasync def test_it() -> None:\n    pass\n```\n")
    assert tests[0].is_test_file
    needing = python_blocks("<!-- needs: redis -->\n```python\nx = 1\n```\n", "a.md")
    assert needing == [
        Block(doc="a.md", line=3, code="x = 1\n", skip=None, needs=frozenset({"redis"}))
    ]
    assert any("redis" in block.needs for block in BLOCKS)  # docs/allowance.md's


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b.doc}:{b.line}" for b in BLOCKS])
def test_every_block_needs_only_what_the_suite_starts(block: Block) -> None:
    assert block.needs <= SERVICES, f"{block.doc}:{block.line} needs {set(block.needs)}"


async def test_every_block_passes_mypy_strict(tmp_path: Path) -> None:
    """Readers copy these programs into typed code bases: each type-checks as it stands.

    The blocks that import a module of the reader's own (a Celery app) are left out.
    """
    for block in BLOCKS:
        if "my_pipeline" in block.code:
            continue
        name = f"{block.doc.replace('/', '_').removesuffix('.md')}_{block.line}.py"
        (tmp_path / name).write_text(block.code, encoding="utf-8")
    args = [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir"]
    status, output = await run([*args, str(tmp_path / ".cache"), "."], tmp_path, dict(os.environ))
    assert status == 0, output


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b.doc}:{b.line}" for b in BLOCKS])
def test_every_block_is_a_whole_program(block: Block) -> None:
    """``python example.py`` cannot run top-level ``await``: a block wraps it in asyncio.run."""
    compile(block.code, f"{block.doc}:{block.line}", "exec")


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b.doc}:{b.line}" for b in BLOCKS])
async def test_docs_block_runs_as_written(
    block: Block, emulator: Emulator, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if block.skip is not None:
        pytest.skip(block.skip)
    make_samples(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IDEOGRAM_", "REDIS_"))}
    env |= {"IDEOGRAM_BASE_URL": emulator.base_url, "IDEOGRAM_API_KEY": KEY}
    if "redis" in block.needs:
        redis: RedisServer = request.getfixturevalue("redis_server")
        env["REDIS_URL"] = redis.url
    where = f"{block.doc}:{block.line}"
    if block.is_test_file:
        (tmp_path / "test_example.py").write_text(block.code, encoding="utf-8")
        args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"]
        # pytest-asyncio's nag about its unset loop-scope option (the docs explain it).
        args += ["-W", f"ignore:{_LOOP_SCOPE_UNSET}:pytest.PytestDeprecationWarning"]
        status, output = await run([*args, "test_example.py"], tmp_path, env)
        assert status == 0, f"{where} failed under pytest:\n{output}"
        assert re.search(r"\b[1-9]\d* passed\b", output), output
        return
    (tmp_path / "example.py").write_text(block.code, encoding="utf-8")
    status, output = await run([sys.executable, "-W", "error", "-c", _RUNNER], tmp_path, env)
    assert status == 0, f"{where} failed:\n{output}"
