"""What a benchmark hands back: rows of figures, each beside its baseline and target."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Row:
    """One measured figure: p50/p95 in `unit`, the baseline it is judged against, and the verdict."""

    name: str
    n: int
    p50: float
    p95: float | None = None
    unit: str = "ms"
    baseline: str | None = None
    baseline_p50: float | None = None
    target: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        if self.baseline_p50 is None or self.baseline_p50 == 0:
            return None
        return self.p50 / self.baseline_p50

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Row:
        return cls(**raw)


@dataclass
class BenchmarkResult:
    """Everything one benchmark reports: its rows, notes a reader needs, and how long it took."""

    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "rows": [row.to_json() for row in self.rows],
            "notes": self.notes,
            "seconds": self.seconds,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> BenchmarkResult:
        return cls(
            name=raw["name"],
            title=raw["title"],
            rows=[Row.from_json(row) for row in raw["rows"]],
            notes=list(raw["notes"]),
            seconds=float(raw["seconds"]),
            error=raw.get("error"),
        )


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: always a value that was actually measured."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(math.ceil(q / 100 * len(ordered)), 1)
    return ordered[rank - 1]


class Samples:
    """Durations of one operation, in milliseconds."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.values: list[float] = []

    @contextmanager
    def time(self) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.values.append((time.perf_counter() - started) * 1000)

    def add_seconds(self, seconds: float) -> None:
        self.values.append(seconds * 1000)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def p50(self) -> float:
        # The median of an even count is the mean of the middle two; the p95 stays a measured value.
        return statistics.median(self.values) if self.values else math.nan

    @property
    def p95(self) -> float:
        return percentile(self.values, 95)

    def row(
        self,
        *,
        baseline: Samples | None = None,
        target: str = "",
        met: bool | None = None,
        name: str | None = None,
    ) -> Row:
        return Row(
            name=name or self.name,
            n=self.n,
            p50=self.p50,
            p95=self.p95,
            baseline=baseline.name if baseline is not None else None,
            baseline_p50=baseline.p50 if baseline is not None else None,
            target=target,
            met=met,
        )
