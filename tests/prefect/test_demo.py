"""`make demo` from a clean environment: embedded local server, temporary Prefect server, exit code 0."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest


@pytest.mark.slow
def test_demo_runs_the_lifecycle_on_the_embedded_server_and_leaves_nothing() -> None:
    home = tempfile.mkdtemp(prefix="prefect-demo-")
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "OPENCOMPUTER_"))
    }
    env.update(PREFECT_HOME=home, PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    try:
        demo = subprocess.run(
            [sys.executable, "-m", "prefect_opencomputer.demo"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert demo.returncode == 0, demo.stdout + demo.stderr[-3000:]
    out = demo.stdout
    assert "embedded local server" in out and "temporary local server" in out
    assert "sandbox_lifecycle completed" in out
    # The flow's own time, apart from the temporary Prefect server's start.
    assert "s (flow run)" in out and "in all with Prefect's start-up" in out
    assert "prepared before the checkpoint" in out and "applied by the checkpoint patch" in out
    assert "sandboxes left running: 0" in out
