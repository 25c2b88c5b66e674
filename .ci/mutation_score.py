"""Print the mutation score of each mutated module, from what ``mutmut run`` recorded.

Run from the repository root after ``mutmut run``::

    python .ci/mutation_score.py            # a Markdown table, one row a module
    python .ci/mutation_score.py --min 90   # and exit 1 if a module's score is lower

A mutant counts as killed when a test failed on it, timed out on it, or the type
checker refused it; the score is the killed share of the mutants checked. Mutants
not checked yet are counted apart, never as killed. Not part of ``.ci/run``: the
mutation run it reads takes hours.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

MUTANTS = Path("mutants")
KILLED = {"killed", "timeout", "caught by type check"}


def tally(meta: Path) -> Counter[str]:
    """How many mutants of one module ended in each verdict."""
    codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
    return Counter(status_by_exit_code[code] for code in codes.values())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min", type=float, default=None, help="lowest score allowed, in %%")
    args = parser.parse_args(argv)
    metas = sorted(MUTANTS.rglob("*.py.meta"))
    if not metas:
        print("no mutmut results under mutants/: run `mutmut run` first", file=sys.stderr)
        return 2
    print("| module | mutants | killed | survived | no tests | not checked | score |")
    print("|---|---|---|---|---|---|---|")
    low = []
    total: Counter[str] = Counter()
    for meta in metas:
        counts = tally(meta)
        total += counts
        module = ".".join(meta.relative_to(MUTANTS).with_suffix("").with_suffix("").parts)
        score = _row(module, counts)
        if args.min is not None and score is not None and score < args.min:
            low.append(module)
    _row("**all**", total)
    if low:
        print(f"under {args.min}%: {', '.join(low)}", file=sys.stderr)
        return 1
    return 0


def _row(module: str, counts: Counter[str]) -> float | None:
    killed = sum(counts[status] for status in KILLED)
    unchecked = counts["not checked"]
    checked = sum(counts.values()) - unchecked
    score = 100 * killed / checked if checked else None
    shown = "-" if score is None else f"{score:.1f}%"
    print(
        f"| {module} | {sum(counts.values())} | {killed} | {counts['survived']} "
        f"| {counts['no tests']} | {unchecked} | {shown} |"
    )
    return score


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
