"""The embedded server: starts on a free loopback port, serves, and leaves nothing behind on exit."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
from serving import processes_mentioning

from prefect_opencomputer.local import LocalServer, LocalServerConfig, LocalServerError


def accepts_connections(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_embedded_server_serves_and_leaves_no_process_port_or_temp_dir() -> None:
    with LocalServer() as server:
        data_dir, port = server.data_dir, server.config.port
        assert server.url == f"http://127.0.0.1:{port}"
        assert server.api_url == server.url + "/api"
        headers = {"X-API-Key": server.api_key}
        with httpx.Client(base_url=server.api_url, headers=headers, timeout=60) as client:
            sandbox = client.post("/sandboxes", json={"templateID": "base"}).json()["sandboxID"]
            ran = client.post(
                f"/sandboxes/{sandbox}/exec/run",
                json={"cmd": "sh", "args": ["-c", "nohup sleep 600 >/dev/null 2>&1 & echo started"]},
            )
            assert ran.json()["stdout"] == "started\n"
        assert processes_mentioning(str(data_dir)), "the sandbox should be running while served"

    assert processes_mentioning(str(data_dir)) == []
    assert not data_dir.exists()
    assert not accepts_connections(port)
    assert str(data_dir) not in Path("/proc/self/mountinfo").read_text()


def test_control_routes_are_off_by_default() -> None:
    with LocalServer() as server, httpx.Client(base_url=server.url) as client:
        for method, path in [("GET", "/_test/stats"), ("POST", "/_test/reset"), ("GET", "/_test/faults")]:
            response = client.request(method, path, headers={"X-API-Key": server.api_key})
            assert response.status_code == 404
            assert response.json() == {"message": "Not Found"}


def test_given_data_dir_and_key_are_used_and_kept(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    with LocalServer(LocalServerConfig(data_dir=data_dir, api_key="osb_given-key")) as server:
        assert server.data_dir == data_dir.resolve()
        assert server.api_key == "osb_given-key"
        with httpx.Client(base_url=server.api_url) as client:
            assert client.get("/sandboxes", headers={"X-API-Key": "osb_given-key"}).status_code == 200
    assert data_dir.is_dir()


def test_a_restarted_server_on_the_same_data_dir_still_has_the_sandbox_and_its_files(tmp_path: Path) -> None:
    def client(server: LocalServer) -> httpx.Client:
        return httpx.Client(base_url=server.api_url, headers={"X-API-Key": server.api_key}, timeout=60)

    config = LocalServerConfig(data_dir=tmp_path, api_key="osb_restart")
    with LocalServer(config) as first, client(first) as api:
        sandbox = api.post("/sandboxes", json={}).json()["sandboxID"]
        assert api.put(f"/sandboxes/{sandbox}/files", params={"path": "kept.txt"}, content=b"kept").is_success

    with LocalServer(config) as second, client(second) as api:
        assert api.get(f"/sandboxes/{sandbox}").json()["status"] == "hibernated"
        assert api.get(f"/sandboxes/{sandbox}/files", params={"path": "kept.txt"}).content == b"kept"
        api.delete(f"/sandboxes/{sandbox}")


def test_a_missing_key_becomes_a_random_one_that_never_shows_in_a_repr() -> None:
    with LocalServer() as first, LocalServer() as second:
        assert first.api_key.startswith("osb_")
        assert first.api_key != second.api_key
        assert first.api_key not in repr(first)
        assert first.api_key not in repr(first.config)


def test_a_port_in_use_is_a_readable_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(LocalServerError, match=f"port {port} on 127.0.0.1 is already in use"):
            LocalServer(LocalServerConfig(data_dir=tmp_path, port=port)).start()


def test_a_data_dir_that_cannot_be_written_is_a_readable_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(LocalServerError, match="is not writable"):
        LocalServer(LocalServerConfig(data_dir=not_a_dir / "state")).start()


async def test_async_with_starts_and_stops_without_blocking_the_callers_loop() -> None:
    async with LocalServer() as server:
        async with httpx.AsyncClient(base_url=server.api_url) as client:
            response = await client.get("/sandboxes", headers={"X-API-Key": server.api_key})
        assert response.status_code == 200
        port = server.config.port
    assert not accepts_connections(port)


def test_stop_is_idempotent() -> None:
    server = LocalServer().start()
    server.stop()
    server.stop()
