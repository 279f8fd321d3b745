"""Class 3: other users of this machine are untrusted: the server's state and key stay private."""

from __future__ import annotations

import os
import select
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from prefect_opencomputer.local import LocalServer, protocols
from tests.security.conftest import run_ok

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


@dataclass
class Served:
    process: subprocess.Popen[str]
    data_dir: Path
    key: str


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """``prefect-opencomputer local serve`` on a fresh data dir, the key given through the environment."""
    key = "oc-test-" + os.urandom(12).hex()
    data_dir = tmp_path / "data"
    cli = Path(sys.executable).with_name("prefect-opencomputer")
    process = subprocess.Popen(
        [str(cli), "local", "serve", "--port", "0", "--data-dir", str(data_dir)],
        env={**os.environ, KEY_ENV: key},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for_line(process, "OpenComputer local server on", 240)
        yield Served(process, data_dir, key)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_local_serve_takes_the_key_from_the_environment_and_keeps_it_off_its_command_line(
    served: Served,
) -> None:
    cmdline = Path(f"/proc/{served.process.pid}/cmdline").read_bytes()
    assert served.key.encode() not in cmdline
    assert b"--api-key" not in cmdline


def test_local_serve_makes_a_new_data_dir_0700_and_its_database_0600(served: Served) -> None:
    assert stat.S_IMODE(served.data_dir.stat().st_mode) == 0o700
    database = served.data_dir / "state.db"
    # The address line comes as the server binds; the database opens as the app starts, just after.
    deadline = time.monotonic() + 60
    while not database.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert database.exists()
    assert stat.S_IMODE(database.stat().st_mode) == 0o600


async def test_a_local_user_holding_idle_connections_cannot_starve_the_api(local_server: LocalServer) -> None:
    """Past the server's cap, the longest-idle connections go first and the API keeps answering."""
    address = ("127.0.0.1", local_server.config.port)
    idle = []
    try:
        for _ in range(protocols.MAX_CONNECTIONS + 100):
            connection = socket.create_connection(address, timeout=10)
            idle.append(connection)
        async with httpx.AsyncClient(base_url=local_server.api_url, timeout=30) as client:
            answered = await client.get("/sandboxes", headers={"X-API-Key": local_server.api_key})
        assert answered.status_code == 200
        # The first ones opened, idle longest, were dropped: the server read their end of file.
        for connection in idle[:50]:
            connection.settimeout(10)
            assert connection.recv(1) == b""
    finally:
        for connection in idle:
            connection.close()


async def test_no_host_process_names_a_sandbox_or_the_data_dir_on_its_command_line(
    http: httpx.AsyncClient, sandbox: str, local_server: LocalServer
) -> None:
    """Every local user reads every command line (``ps``): a sandbox id there is a way to reach it."""
    # A sandbox with a file agent serving it and a command still running: each kind of process it has.
    written = await http.put(f"/sandboxes/{sandbox}/files", params={"path": "note.txt"}, content=b"hi")
    assert written.status_code == 204, written.text
    await run_ok(http, sandbox, "setsid sleep 30 > /dev/null 2>&1 < /dev/null &")
    naming = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes()
                theirs = sandbox in Path(entry.path, "cgroup").read_text()
            except OSError:
                continue
            # No process names the sandbox; none of the sandbox's own names the server's data dir.
            if sandbox.encode() in cmdline or (theirs and str(local_server.data_dir).encode() in cmdline):
                naming[entry.name] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    assert naming == {}
