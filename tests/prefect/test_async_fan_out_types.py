"""In `async def` code the twins type what a user gets back: awaited calls, `.submit` and `.map` futures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]

USER_FLOW = """
import asyncio

from prefect import flow

from prefect_opencomputer.tasks import acreate_sandbox, arun_command


@flow
async def fan_out() -> list[str]:
    sandboxes = await asyncio.gather(*(acreate_sandbox() for _ in range(3)))
    gathered = await asyncio.gather(*(arun_command(sandbox, "hostname") for sandbox in sandboxes))
    submitted = arun_command.submit(sandboxes[0], "hostname").result()
    mapped = arun_command.map(sandboxes, "hostname").result()
    return [gathered[0].stdout, submitted.stdout, *(result.stdout for result in mapped)]
"""


@pytest.mark.slow
def test_a_type_checker_reads_the_twins_results_and_futures_as_results(tmp_path: Path) -> None:
    program = tmp_path / "user_flow.py"
    program.write_text(USER_FLOW)

    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", str(program)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr
