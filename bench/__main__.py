"""`python -m bench [NAME ...]`: run the benchmarks, print the table, write docs/performance.md."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import machine, report
from bench.catalog import BENCHMARKS
from bench.runner import run_isolated

DEFAULT_PAGE = Path(__file__).resolve().parent.parent / "docs" / "performance.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help="any of: " + ", ".join(BENCHMARKS))
    parser.add_argument("--output", type=Path, default=DEFAULT_PAGE, help="the Markdown page to write")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="run each benchmark under py-spy and write DIR/NAME.speedscope.json (open in speedscope.app)",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)

    host = machine.describe()
    results = []
    for name in names:
        print(f"running {name}: {BENCHMARKS[name][0]} ...", file=sys.stderr, flush=True)
        result = run_isolated(name, profile_dir=args.profile)
        status = "failed" if result.error else "done"
        print(f"  {status} in {result.seconds:.0f} s", file=sys.stderr, flush=True)
        results.append(result)

    print(report.terminal_table(results))
    for result in results:
        for note in result.notes:
            print(f"[{result.name}] {note}")
        if result.error:
            print(f"\n[{result.name}] FAILED:\n{result.error}", file=sys.stderr)
    if args.profile is not None:
        print(f"profiles in {args.profile}", file=sys.stderr)
    # A profiled run is slowed by the sampler: its figures never go on the page.
    if not args.no_write and args.profile is None:
        report.write_page(args.output, results, host, list(BENCHMARKS))
        print(f"wrote {args.output}", file=sys.stderr)
    return 1 if any(result.error for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
