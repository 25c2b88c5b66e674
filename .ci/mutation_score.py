"""Print the mutation score of each mutated module, from what ``mutmut run`` recorded.

Run from the repository root after ``mutmut run``::

    python .ci/mutation_score.py            # a Markdown table, one row a module
    python .ci/mutation_score.py --min 90   # and exit 1 if a module's score is lower

A mutant counts as killed when a test failed on it, timed out on it, or the type
checker refused it; the score is the killed share of the mutants checked. Mutants
not checked yet are counted apart, never as killed. Mutants listed in
``.ci/equivalent_mutants.txt`` (reviewed, each with its reason) are counted as
equivalent: neither killed nor survived, and left out of the score; they are printed
after the table. Not part of ``.ci/run``: the mutation run it reads takes hours.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

MUTANTS = Path("mutants")
EQUIVALENTS = Path(__file__).with_name("equivalent_mutants.txt")
KILLED = {"killed", "timeout", "caught by type check"}
EQUIVALENT = "equivalent"


def equivalents(text: str) -> dict[str, str]:
    """The listed mutants and the reason given for each (``name  # reason`` lines)."""
    listed: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, reason = line.partition("#")
        name, reason = name.strip(), reason.strip()
        if not reason or " " in name:
            raise SystemExit(
                f"{EQUIVALENTS.name}:{number}: expected 'mutant_name  # one-line reason', "
                f"got {line!r}"
            )
        listed[name] = reason
    return listed


def tally(meta: Path, equivalent: dict[str, str]) -> Counter[str]:
    """How many mutants of one module ended in each verdict (``equivalent`` apart)."""
    codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
    return Counter(
        EQUIVALENT if name in equivalent else status_by_exit_code[code]
        for name, code in codes.items()
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min", type=float, default=None, help="lowest score allowed, in %%")
    args = parser.parse_args(argv)
    metas = sorted(MUTANTS.rglob("*.py.meta"))
    if not metas:
        print("no mutmut results under mutants/: run `mutmut run` first", file=sys.stderr)
        return 2
    equivalent = equivalents(EQUIVALENTS.read_text(encoding="utf-8"))
    print("| module | mutants | killed | survived | no tests | not checked | equivalent | score |")
    print("|---|---|---|---|---|---|---|---|")
    low = []
    total: Counter[str] = Counter()
    seen: set[str] = set()
    for meta in metas:
        seen |= set(json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"])
        counts = tally(meta, equivalent)
        total += counts
        module = ".".join(meta.relative_to(MUTANTS).with_suffix("").with_suffix("").parts)
        score = _row(module, counts)
        if args.min is not None and score is not None and score < args.min:
            low.append(module)
    _row("**all**", total)
    if equivalent:
        print("\nEquivalent (from .ci/equivalent_mutants.txt):\n")
        for name, reason in equivalent.items():
            stale = "" if name in seen else " (not among the mutants: remove it)"
            print(f"- `{name}`: {reason}{stale}")
    if low:
        print(f"under {args.min}%: {', '.join(low)}", file=sys.stderr)
        return 1
    return 0


def _row(module: str, counts: Counter[str]) -> float | None:
    killed = sum(counts[status] for status in KILLED)
    unchecked = counts["not checked"]
    equivalent = counts[EQUIVALENT]
    checked = sum(counts.values()) - unchecked - equivalent
    score = 100 * killed / checked if checked else None
    shown = "-" if score is None else f"{score:.1f}%"
    print(
        f"| {module} | {sum(counts.values())} | {killed} | {counts['survived']} "
        f"| {counts['no tests']} | {unchecked} | {equivalent} | {shown} |"
    )
    return score


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
