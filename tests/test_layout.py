"""The package's layout: modules sized by their concept, imports that flow one way, no cycles.

Read from the source with ``ast`` (nothing is imported), so type-only imports count too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import ideogram_async

ROOT = Path(ideogram_async.__file__).parent
PACKAGE = "ideogram_async"
MAX_LINES = 800
"""A module over this is likely to hold more than one concept: worth a look, not a rule."""


def module_name(path: Path) -> str:
    parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str) -> Iterator[str]:
    """The package's modules that ``name`` imports, anywhere in its source."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                base = [*base, node.module] if node.module else base
                source = ".".join(base)
            else:
                source = node.module or ""
            # Each name is a submodule (``from . import telemetry``) or a name of ``source``.
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source
                for alias in node.names
            ]
        else:
            continue
        yield from (target for target in targets if target in MODULES and target != name)


GRAPH = {name: set(imports_of(name)) for name in MODULES}
CLI = "ideogram_async.cli"
TESTING = "ideogram_async.testing"


def within(name: str, *packages: str) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


def find_cycle() -> list[str] | None:
    """A cycle of imports as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for target in sorted(GRAPH[name]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[name] = 2
        return None

    for name in sorted(GRAPH):
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


def test_the_walk_sees_imports() -> None:
    # Guards the test itself: relative, absolute and type-only imports are all found.
    assert "ideogram_async._transport" in GRAPH["ideogram_async.client"]
    assert "ideogram_async.cli._manifest" in GRAPH["ideogram_async.cli._progress"]
    assert "ideogram_async.images" in GRAPH["ideogram_async.testing._multipart"]


def test_no_import_cycles() -> None:
    assert find_cycle() is None


def test_no_module_is_over_about_800_lines() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {name: size for name, size in sizes.items() if size > MAX_LINES} == {}


def test_the_library_does_not_import_its_command_line_or_test_tools() -> None:
    # ``python -m ideogram_async`` is the command line's entry point, imported by nothing.
    core = [n for n in GRAPH if not within(n, CLI, TESTING) and n != "ideogram_async.__main__"]
    assert {t for name in core for t in GRAPH[name] if within(t, CLI, TESTING)} == set()


def test_the_command_line_uses_only_the_public_library() -> None:
    # ideogram_async.limits (RedisAllowance, RedisBudget): imported only when
    # --shared-allowance is given; ideogram_async.celery: only by enqueue and status.
    public = {"ideogram_async", "ideogram_async.images", "ideogram_async.v2", TESTING}
    public |= {"ideogram_async.limits", "ideogram_async.limits.budget", "ideogram_async.celery"}
    for name, targets in GRAPH.items():
        if within(name, CLI):
            assert {t for t in targets if not within(t, CLI)} <= public, name


def test_testing_uses_only_public_library_modules() -> None:
    for name, targets in GRAPH.items():
        if within(name, TESTING):
            outside = {t for t in targets if not within(t, TESTING)}
            assert all(not t.rpartition(".")[2].startswith("_") for t in outside), (name, outside)
