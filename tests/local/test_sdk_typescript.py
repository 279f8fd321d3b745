"""The official TypeScript SDK (`@opencomputer/sdk`, pinned in tests/sdk_ts), unchanged, on the local server.

Its `exec.run` goes through `exec/run-async` and `exec/{id}/result`, which the Python SDK never calls, and
its PTY runs an interactive shell over the PTY WebSocket.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from prefect_opencomputer.local import LocalServer

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).parent.parent / "sdk_ts"


@pytest.fixture(scope="session")
def node_project() -> Path:
    """The npm project with its locked dependencies installed (`npm ci` once, when missing)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed: the TypeScript SDK cannot run here")
    if not (PROJECT / "node_modules" / "@opencomputer" / "sdk").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=PROJECT,
            check=True,
            capture_output=True,
            timeout=300,
        )
    return PROJECT


def test_typescript_sdk_runs_the_whole_lifecycle(node_project: Path, local_server: LocalServer) -> None:
    env = {
        **os.environ,
        "OPENCOMPUTER_API_URL": local_server.url,
        "OPENCOMPUTER_API_KEY": local_server.api_key,
    }
    run = subprocess.run(
        ["node", "proof.mjs"], cwd=node_project, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-4000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])

    assert seen["isRunning"] is True
    assert seen["quick"] == {"exitCode": 3, "stdout": "hello from ts\n", "stderr": "oops\n"}
    assert seen["slow"] == {"exitCode": 0, "stdout": "slow done\n", "stderr": ""}
    assert (seen["read"], seen["exists"], seen["listed"]) == ("v1", True, ["state.txt"])
    assert (seen["checkpointStatus"], seen["patchSequence"]) == ("ready", 1)
    assert (seen["forkState"], seen["forkPatched"]) == ("v1", "patched\n")
    assert seen["previewHostname"].startswith(f"{seen['sandboxId']}-p8080.")
    assert seen["previewPorts"] == [8080]
    assert seen["runningAfterKill"] is False


def test_typescript_sdk_runs_an_interactive_shell_on_a_pty(
    node_project: Path, local_server: LocalServer
) -> None:
    env = {
        **os.environ,
        "OPENCOMPUTER_API_URL": local_server.url,
        "OPENCOMPUTER_API_KEY": local_server.api_key,
    }
    run = subprocess.run(
        ["node", "--experimental-websocket", "pty.mjs"],
        cwd=node_project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    screen = json.loads(run.stdout.strip().splitlines()[-1])["screen"]
    assert "typed-42" in screen  # typed in, run by the shell, echoed back
    assert "40 120" in screen  # the size it asked for
    assert "/dev/pts/0" in screen  # a terminal of the sandbox's own
