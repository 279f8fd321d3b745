"""Benchmark results as a terminal table and as the Markdown page `docs/performance.md`.

The page keeps one marked section per benchmark, so running a subset (`python -m bench client`) replaces
only the sections it measured and leaves the others as they were.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

from bench.machine import Machine
from bench.results import BenchmarkResult, Row

HEADERS = ("Measure", "n", "p50", "p95", "Baseline", "Baseline p50", "Ratio", "Target", "Met")
_SECTION = re.compile(r"<!-- bench:(?P<name>[\w-]+) -->\n.*?<!-- /bench:(?P=name) -->\n", re.DOTALL)

INTRO = """\
# Performance

Written by `make bench` (`python -m bench`; a subset: `python -m bench client server`). Each benchmark starts
what it needs (the embedded local server, a Prefect API), measures its baseline in the same run, and reports
the median (p50) and 95th percentile (p95) of `n` runs. *Ratio* is p50 / baseline p50. *Met* compares the
p50 with the target from the benchmark issue. The machines are shared and noisy: compare figures from one
run, not across runs.
"""


def format_value(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "-"
    if unit == "":
        return f"{value:.0f}"
    if abs(value) < 10:
        text = f"{value:.2f}"
    elif abs(value) < 100:
        text = f"{value:.1f}"
    else:
        text = f"{value:.0f}"
    return f"{text} {unit}"


def _verdict(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: ""}[met]


def _cells(row: Row) -> list[str]:
    ratio = row.ratio
    return [
        row.name,
        str(row.n),
        format_value(row.p50, row.unit),
        format_value(row.p95, row.unit),
        row.baseline or "",
        format_value(row.baseline_p50, row.unit) if row.baseline_p50 is not None else "",
        f"{ratio:.2f}" if ratio is not None else "",
        row.target,
        _verdict(row.met),
    ]


def terminal_table(results: Sequence[BenchmarkResult]) -> str:
    """A plain fixed-width table for the console: a title line per benchmark, then its rows."""
    blocks: list[tuple[str, list[list[str]]]] = []
    for result in results:
        title = f"[{result.name}] {result.title} ({result.seconds:.0f} s)"
        if result.error:
            title += " FAILED: " + result.error.split("\n--- output")[0].strip().splitlines()[-1]
        rows = [
            ["  " + row.name, *_cells(row)[1:-1], _verdict(row.met).replace("*", "")] for row in result.rows
        ]
        blocks.append((title, rows))
    every_row = [row for _, rows in blocks for row in rows]
    widths = [max([len(HEADERS[i])] + [len(row[i]) for row in every_row]) for i in range(len(HEADERS))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for title, rows in blocks:
        lines.append(title)
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def markdown_section(result: BenchmarkResult, date: str) -> str:
    lines = [f"<!-- bench:{result.name} -->", f"## {result.title}", ""]
    lines.append(f"Measured {date}; took {result.seconds:.0f} s.")
    lines.append("")
    if result.error:
        lines += ["**The benchmark failed:**", "", "```", result.error.strip(), "```", ""]
    if result.rows:
        lines.append("| " + " | ".join(HEADERS) + " |")
        lines.append("|" + "|".join(["---", "--:", "--:", "--:", "---", "--:", "--:", "---", "---"]) + "|")
        for row in result.rows:
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in _cells(row)) + " |")
        lines.append("")
    for note in result.notes:
        lines.append(f"- {note}")
    if result.notes:
        lines.append("")
    lines.append(f"<!-- /bench:{result.name} -->")
    return "\n".join(lines) + "\n"


def write_page(
    path: Path, results: Sequence[BenchmarkResult], machine: Machine, order: Sequence[str]
) -> None:
    """Write the page: fresh sections for `results`, earlier sections kept for benchmarks not run."""
    sections: dict[str, str] = {}
    if path.exists():
        for match in _SECTION.finditer(path.read_text()):
            sections[match.group("name")] = match.group(0)
    for result in results:
        sections[result.name] = markdown_section(result, machine.date)
    parts = [INTRO, "## Machine", "", "| | |", "|---|---|"]
    parts += [f"| {key} | {value} |" for key, value in machine.lines()]
    parts.append("")
    names = [name for name in order if name in sections] + sorted(set(sections) - set(order))
    parts.append(_summary([sections[name] for name in names]))
    page = "\n".join(parts) + "\n" + "\n".join(sections[name] for name in names)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)


def _summary(sections: Sequence[str]) -> str:
    """Count verdicts from the page's own tables, so a subset run still summarises every section."""
    met: list[str] = []
    missed: list[str] = []
    for section in sections:
        for line in section.splitlines():
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if len(cells) != len(HEADERS) or cells[0] == HEADERS[0]:
                continue
            if cells[-1] == "yes":
                met.append(cells[0])
            elif cells[-1] == "**no**":
                missed.append(f"{cells[0]} ({cells[-2]})")
    text = f"Targets met: {len(met)} of {len(met) + len(missed)}."
    if missed:
        text += " Missed: " + "; ".join(missed) + "."
    return text + "\n"
