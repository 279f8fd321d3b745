"""Runs each benchmark in a process of its own.

A fresh process per benchmark means a fresh server, a fresh Prefect home and no memory or threads left
over from the one before; a benchmark that hangs or crashes is stopped without taking the others with it.
`python -m bench.runner NAME OUTPUT` is the child side: it writes the result as JSON to OUTPUT.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType

from bench.catalog import BENCHMARKS
from bench.results import BenchmarkResult

BUDGET_SECONDS = 120.0  # what the issue allows a benchmark on this machine
HARD_LIMIT_SECONDS = 240.0  # past this the child is stopped
_STOP_GRACE_SECONDS = 20.0
_LOG_TAIL_LINES = 30
_REPOSITORY = Path(__file__).resolve().parent.parent  # where `bench` is importable from


class _Stopped(Exception):
    """The parent asked this benchmark to stop (it ran past its hard limit)."""


def run_isolated(name: str, *, profile_dir: Path | None = None) -> BenchmarkResult:
    """Run one benchmark in a child process; with `profile_dir`, under py-spy (a speedscope file per run)."""
    title, _ = BENCHMARKS[name]
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as scratch:
        output = Path(scratch, "result.json")
        log_path = Path(scratch, "output.log")
        env = {
            **os.environ,
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_HOME": str(Path(scratch, "prefect-home")),
        }
        argv = [sys.executable, "-m", "bench.runner", name, str(output)]
        if profile_dir is not None:
            argv = [*_py_spy(profile_dir / f"{name}.speedscope.json"), *argv]
        started = time.monotonic()
        with log_path.open("wb") as log:
            child = subprocess.Popen(
                argv,
                cwd=_REPOSITORY,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            try:
                child.wait(timeout=HARD_LIMIT_SECONDS)
            except subprocess.TimeoutExpired:
                # SIGTERM lets the child tear its server down (sandboxes, mounts, Prefect's subprocess).
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(timeout=_STOP_GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
        elapsed = time.monotonic() - started
        if output.exists():
            result = BenchmarkResult.from_json(json.loads(output.read_text()))
        else:
            result = BenchmarkResult(
                name=name, title=title, error=f"exited {child.returncode} with no result"
            )
        if result.error:
            tail = log_path.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
            result.error += "\n--- output (tail) ---\n" + "\n".join(tail)
        if elapsed > BUDGET_SECONDS:
            result.notes.append(f"Took {elapsed:.0f} s: over the {BUDGET_SECONDS:.0f} s budget.")
        return result


def _py_spy(target: Path) -> list[str]:
    """`py-spy record` of only the threads holding the GIL: where Python time actually goes."""
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    target.parent.mkdir(parents=True, exist_ok=True)
    return [
        found,
        "record",
        "--gil",
        "--rate",
        "250",
        "--format",
        "speedscope",
        "--output",
        str(target),
        "--",
    ]


def _run_here(name: str, output: Path) -> int:
    title, module_name = BENCHMARKS[name]
    result = BenchmarkResult(name=name, title=title)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise _Stopped(f"stopped after {HARD_LIMIT_SECONDS:.0f} s")

    signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    try:
        module = importlib.import_module(module_name)
        module.run(result)
    except BaseException as exc:  # a stop or a crash alike becomes part of the report
        result.error = "".join(traceback.format_exception(exc)).strip()
    finally:
        result.seconds = time.monotonic() - started
        output.write_text(json.dumps(result.to_json(), indent=2))
    return 1 if result.error else 0


if __name__ == "__main__":
    sys.exit(_run_here(sys.argv[1], Path(sys.argv[2])))
