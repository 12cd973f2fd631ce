"""``python -m scrapy_justproxies.report TRACE.jsonl [-o report.html]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import TraceError, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scrapy_justproxies.report",
        description="Render a JUSTPROXIES_TRACE file as a self-contained HTML report.",
    )
    parser.add_argument("trace", type=Path, help="the trace (JSON Lines)")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="where to write the report (default: the trace's name with .html)",
    )
    args = parser.parse_args(argv)
    output: Path = args.output or args.trace.with_suffix(".html")
    try:
        write_report(args.trace, output)
    except (OSError, TraceError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    sys.stdout.write(f"{output}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
