"""Render README tables from committed JSON results, so no figure in the README is typed by hand.

A table in README.md sits between two markers naming its JSON file:

    <!-- table: docs/results/task-sr2.json -->
    ...generated markdown...
    <!-- /table -->

The JSON is what ``msflow task-table ... --json FILE`` writes. ``python scripts/render_tables.py``
rewrites every such block; ``--check`` only reports blocks that differ (tests/test_readme_tables.py
runs it).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- table: (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def render(path: Path) -> str:
    """The markdown table of one ``task-table`` JSON file."""
    from msflow.analysis.task_eval import Row, format_rows

    data = json.loads(path.read_text())
    rows = [Row(**{k: math.nan if v is None else v for k, v in r.items()}) for r in data["rows"]]
    what = f"x{data['scale']} super-resolution" if data["task"] == "superres" else data["task"]
    title = f"{what}, {len(data['photos'])} held-out photos ({', '.join(data['photos'])}), whole, means per photo:"
    return format_rows(rows, title) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a README table differs from its JSON")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args()
    text = args.readme.read_text()
    stale = [m["path"] for m in BLOCK.finditer(text) if m["body"] != render(ROOT / m["path"])]
    if args.check:
        for path in stale:
            print(f"{args.readme.name}: the table of {path} differs from its JSON: run python scripts/render_tables.py")
        return 1 if stale else 0
    args.readme.write_text(BLOCK.sub(lambda m: m[1] + render(ROOT / m["path"]) + m[4], text))
    print(f"rendered {len(stale)} changed table(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
