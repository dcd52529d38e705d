"""Per-module mutation score from mutmut 3's results (``make mutation`` runs it).

Reads the ``mutants/**/*.py.meta`` files ``mutmut run`` leaves behind (one per
mutated module, mapping each mutant to the exit code of its test run) and prints
one row per module and one per package::

    python loadtests/mutation_report.py              # the table
    python loadtests/mutation_report.py --survivors  # and the surviving mutants' names

Score = (killed + timeout) / mutants checked: a mutant no test ran against
("no tests") counts as surviving; "not checked" ones (a run narrowed with
``mutmut run PATTERN``) are left out. "other" is mutmut's suspicious, segfault
and skipped. ``mutmut show NAME`` prints a mutant's diff.
The exit-code meanings are mutmut's own (``mutmut.stats.status_by_exit_code``),
copied so the script runs without mutmut installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

_STATUS = {
    1: "killed",
    3: "killed",  # pytest internal error: counts as a kill for mutmut too
    0: "survived",
    5: "no tests",
    33: "no tests",
    34: "skipped",
    36: "timeout",
    24: "timeout",
    -24: "timeout",
    152: "timeout",
    255: "timeout",
    37: "type check",
    -11: "segfault",
    -9: "segfault",
    None: "not checked",
}
_COLUMNS = ("killed", "timeout", "survived", "no tests", "other", "not checked")


def _status(exit_code: int | None) -> str:
    return _STATUS.get(exit_code, "suspicious")


def _column(status: str) -> str:
    return status if status in _COLUMNS else "other"


def load(root: Path) -> dict[str, dict[str, str]]:
    """Mutant name -> status, by module path (``vault/crypto/_envelope.py``)."""
    modules: dict[str, dict[str, str]] = {}
    for meta in sorted(root.rglob("*.py.meta")):
        data = json.loads(meta.read_text(encoding="utf-8"))
        module = meta.relative_to(root).as_posix().removesuffix(".meta")
        modules[module] = {name: _status(code) for name, code in data["exit_code_by_key"].items()}
    return modules


def score(counts: Counter[str]) -> float | None:
    total = sum(counts.values()) - counts["not checked"]
    if total == 0:
        return None
    return 100.0 * (counts["killed"] + counts["timeout"]) / total


def _row(name: str, counts: Counter[str]) -> str:
    total = sum(counts.values())
    s = score(counts)
    cells = " | ".join(f"{counts[c]:>{max(8, len(c))}}" for c in _COLUMNS)
    shown = "-" if s is None else f"{s:5.1f}%"
    return f"| {name:<28} | {total:>7} | {cells} | {shown:>6} |"


def table(modules: dict[str, dict[str, str]]) -> str:
    cells = ["module".ljust(28), "mutants", *(f"{c:>8}" for c in _COLUMNS), " score"]
    header = "| " + " | ".join(cells) + " |"
    rule = "|" + "|".join("-" * (len(c) + 2) for c in cells) + "|"
    lines = [header, rule]
    packages: dict[str, Counter[str]] = {}
    everything: Counter[str] = Counter()
    for module, statuses in sorted(modules.items()):
        counts = Counter(_column(s) for s in statuses.values())
        lines.append(_row(module.removeprefix("vault/"), counts))
        package = module.removeprefix("vault/").split("/")[0] + "/"
        packages.setdefault(package, Counter()).update(counts)
        everything.update(counts)
    for package, counts in sorted(packages.items()):
        lines.append(_row(f"**{package}**", counts))
    lines.append(_row("**all**", everything))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=Path, default=Path("mutants"), help="mutmut's directory")
    parser.add_argument(
        "--survivors", action="store_true", help="also list every mutant not killed"
    )
    args = parser.parse_args(argv)
    modules = load(args.mutants)
    if not modules:
        print(f"no mutmut results in {args.mutants}/: run `make mutation` first", file=sys.stderr)
        return 1
    print(table(modules))
    if args.survivors:
        for statuses in modules.values():
            for name, status in sorted(statuses.items()):
                if status not in ("killed", "timeout", "not checked"):
                    print(f"{status:>10}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
