"""The command line of a module that publishes a table (`python -m lathe_worker.error_codes --json`,
`python -m lathe_worker.losses --json`): one JSON object for the TypeScript cross-check tests, or one
line per entry for people."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from typing import Any


def print_table(argv: list[str] | None, prog: str, what: str, table: Mapping[str, Any],
                line: Callable[[str, Any], str]) -> int:
    """Parses `--json` from `argv` and prints `table` as JSON, or `line(key, value)` per entry; returns 0.

    >>> print_table([], "python -m lathe_worker.colours", "the colours", {"red": 1}, lambda k, v: f"{k} {v}")
    red 1
    0
    """
    parser = argparse.ArgumentParser(prog=prog, description=f"Print {what}.")
    parser.add_argument("--json", action="store_true", help="as one JSON object (what the cross-check tests read)")
    args = parser.parse_args(argv)
    if args.json:
        json.dump(table, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for key, value in table.items():
            print(line(key, value))
    return 0
