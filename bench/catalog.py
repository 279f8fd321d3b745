"""Every benchmark, in the order the page lists them: name -> (title, module).

Each module has `run(result: BenchmarkResult) -> None`, which starts what it needs, measures, and adds its
rows to `result` as it goes, so a failure late in a benchmark still reports what was measured before it.
"""

from __future__ import annotations

from typing import Final

BENCHMARKS: Final[dict[str, tuple[str, str]]] = {
    "client": ("Client overhead", "bench.client_overhead"),
    "server": ("Local server latencies", "bench.server_latency"),
    "prefect": ("Prefect overhead", "bench.prefect_overhead"),
    "fanout": ("Fan-out from one checkpoint", "bench.fanout"),
    "scale": ("Scale: live sandboxes", "bench.scale"),
    "worker": ("Flow runs on an opencomputer work pool", "bench.worker_start"),
}
