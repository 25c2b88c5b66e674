"""Recheck surviving mutmut mutants of code that runs at import, each in a fresh process.

mutmut 3 runs every mutant's tests in a process forked from one that has already
imported the package, so a mutant in a function called while a module loads (a
validator or converter built at import) is never the code the tests run, and it
"survives" whatever they check. This runs each surviving (or not yet checked)
mutant whose name matches a pattern in a new interpreter with ``MUTANT_UNDER_TEST``
set, so the package is imported with that mutant active, and writes the verdict
back where ``mutmut results`` reads it. Run it from the repository root after ``mutmut run``::

    python .ci/mutation_fresh.py 'ideogram_async.models.x__int_in*' -- tests/test_models.py

Not part of ``.ci/run``: like mutmut itself, it takes minutes.
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path

MUTANTS = Path("mutants")
SURVIVED, KILLED, TIMEOUT = 0, 1, 36  # mutmut's codes for these verdicts
NO_TESTS = 5  # pytest's exit code when the paths hold no tests
SECONDS = 300


def run_tests(mutant: str, tests: list[str]) -> int:
    """pytest's exit code for ``tests`` in a new interpreter with ``mutant`` active."""
    env = {**os.environ, "MUTANT_UNDER_TEST": mutant, "PYTHONPATH": str(MUTANTS.resolve())}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        done = subprocess.run(command, cwd=MUTANTS, env=env, capture_output=True, timeout=SECONDS)
    except subprocess.TimeoutExpired:
        return TIMEOUT
    return done.returncode


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") in (0, len(argv) - 1):
        print(__doc__, file=sys.stderr)
        return 2
    patterns, tests = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    if run_tests("", tests) != 0:
        print("the tests fail without any mutant; fix that first", file=sys.stderr)
        return 1
    for meta_path in sorted(MUTANTS.rglob("*.py.meta")):
        meta = json.loads(meta_path.read_text())
        verdicts: dict[str, int | None] = meta["exit_code_by_key"]
        for name, code in verdicts.items():
            if code not in (SURVIVED, None) or not any(fnmatch.fnmatch(name, p) for p in patterns):
                continue
            code = run_tests(name, tests)
            if code == NO_TESTS:
                print(f"no tests ran for {name}; check the test paths", file=sys.stderr)
                return 1
            # Any other failure (a test, or an import the mutant broke) kills it.
            verdicts[name] = code if code in (SURVIVED, TIMEOUT) else KILLED
            print({SURVIVED: "survived", TIMEOUT: "timeout"}.get(code, "killed"), name)
            meta_path.write_text(json.dumps(meta, indent=4))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
