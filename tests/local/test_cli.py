"""``prefect-opencomputer local serve`` as a person runs it: starts, answers, stops cleanly on SIGTERM."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serving import COMMAND, Served, environment, processes_mentioning, wait_until_serving

pytestmark = pytest.mark.slow


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    env = environment(OPENCOMPUTER_LOCAL_API_KEY="osb_cli-test-key-0123456789")
    server = Served(["--port", "0", "--data-dir", str(tmp_path / "data")], env, tmp_path / "out.log")
    try:
        wait_until_serving(server.url)
        yield server
    finally:
        server.stop()


def test_serve_answers_with_the_key_from_the_environment_and_stops_on_sigterm(
    served: Served, tmp_path: Path
) -> None:
    url = served.url
    key = "osb_cli-test-key-0123456789"
    assert httpx.get(url + "/api/sandboxes", headers={"X-API-Key": key}).status_code == 200
    assert httpx.get(url + "/api/sandboxes", params={"api_key": key}).status_code == 200
    created = httpx.post(url + "/api/sandboxes", headers={"X-API-Key": key}, json={}, timeout=60)
    assert created.status_code == 201
    sandbox_id = created.json()["sandboxID"]
    assert processes_mentioning(sandbox_id), "the sandbox should be running while served"

    output = served.signal(signal.SIGTERM)

    assert served.process.returncode == 0, output
    assert key not in output
    assert "api_key=***" in output
    assert "Traceback" not in output
    assert "Application shutdown complete" in output
    assert processes_mentioning(sandbox_id) == []
    assert processes_mentioning(str(tmp_path)) == []


def test_serve_without_a_key_prints_a_generated_one_once(tmp_path: Path) -> None:
    server = Served(
        ["--port", "0", "--data-dir", str(tmp_path / "data")], environment(), tmp_path / "out.log"
    )
    try:
        wait_until_serving(server.url)
        output = server.signal(signal.SIGINT)
    finally:
        server.stop()
    keys = re.findall(r"OPENCOMPUTER_API_KEY=(osb_[0-9a-f]{64})", output)
    assert len(keys) == 1, output
    assert output.count(keys[0]) == 1
    assert server.process.returncode == 0


def test_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*COMMAND, "--port", str(port), "--data-dir", str(tmp_path)],
            env=environment(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: port {port} on 127.0.0.1 is already in use"


def test_unwritable_data_dir_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    result = subprocess.run(
        [*COMMAND, "--port", "0", "--data-dir", str(tmp_path / "file" / "data")],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "is not writable" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_host_tools_are_a_one_line_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [*COMMAND, "--port", "0", "--data-dir", str(tmp_path)],
        env=environment(PATH=str(tmp_path / "empty-path")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: missing commands: cp, rm, setpriv, mmdebstrap")
    assert "Traceback" not in result.stderr


def test_serve_with_allow_host_port_lets_sandboxes_reach_that_host_port_by_name(tmp_path: Path) -> None:
    key = "osb_cli-test-key-0123456789"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        server = Served(
            ["--port", "0", "--data-dir", str(tmp_path / "data"), "--allow-host-port", str(port)],
            environment(OPENCOMPUTER_LOCAL_API_KEY=key),
            tmp_path / "out.log",
        )
        try:
            wait_until_serving(server.url)
            headers = {"X-API-Key": key}
            created = httpx.post(server.url + "/api/sandboxes", headers=headers, json={}, timeout=60)
            assert created.status_code == 201, created.text
            sandbox_id = created.json()["sandboxID"]
            command = f"exec 3<>/dev/tcp/host.opencomputer.internal/{port} && echo connected"
            ran = httpx.post(
                f"{server.url}/api/sandboxes/{sandbox_id}/exec/run",
                headers=headers,
                json={"cmd": "bash", "args": ["-c", command], "timeout": 20},
                timeout=60,
            )
            assert ran.json()["stdout"].strip() == "connected", ran.json()
            listener.settimeout(10)
            accepted, _ = listener.accept()
            accepted.close()
            output = server.signal(signal.SIGTERM)
        finally:
            server.stop()
    assert f"sandboxes reach this host's 127.0.0.1:{port} at host.opencomputer.internal:{port}" in output
