"""Class 3: other users of this machine are untrusted: the server's state and key stay private."""

from __future__ import annotations

import os
import select
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prefect_opencomputer.local import LocalServer

pytestmark = pytest.mark.security

KEY_ENV = "OPENCOMPUTER_LOCAL_API_KEY"


def test_the_data_dir_is_0700(local_server: LocalServer) -> None:
    assert stat.S_IMODE(local_server.data_dir.stat().st_mode) == 0o700


def test_the_state_database_is_0600(local_server: LocalServer) -> None:
    assert stat.S_IMODE((local_server.data_dir / "state.db").stat().st_mode) == 0o600


def _wait_for_line(process: subprocess.Popen[str], needle: str, seconds: float) -> str:
    assert process.stdout is not None
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if ready:
            line = process.stdout.readline()
            if not line:
                break
            seen.append(line)
            if needle in line:
                return line
    raise AssertionError(f"no {needle!r} line; saw: {''.join(seen)}")


def test_local_serve_takes_the_key_from_the_environment_and_keeps_it_off_its_command_line(
    tmp_path: Path,
) -> None:
    key = "oc-test-" + os.urandom(12).hex()
    cli = Path(sys.executable).with_name("prefect-opencomputer")
    process = subprocess.Popen(
        [str(cli), "local", "serve", "--port", "0", "--data-dir", str(tmp_path / "data")],
        env={**os.environ, KEY_ENV: key},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for_line(process, "OpenComputer local server on", 240)
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        assert key.encode() not in cmdline
        assert b"--api-key" not in cmdline
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
