"""Commands that cannot start or say too much: explicit errors, and the keep-alive connection stays usable."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from prefect_opencomputer.local import LocalServer
from prefect_opencomputer.local.backend.sandboxes import Sandboxes

# One environment string past the kernel's MAX_ARG_STRLEN (128 KiB): execve fails with E2BIG.
TOO_BIG_ENV = {"BIG": "x" * 200_000}
MIB = 1024 * 1024


@pytest.fixture
async def one_connection(local_server: LocalServer) -> AsyncIterator[httpx.AsyncClient]:
    """A client that can hold a single keep-alive connection, so every request reuses it."""
    async with httpx.AsyncClient(
        base_url=local_server.api_url,
        headers={"X-API-Key": local_server.api_key},
        timeout=120,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
    ) as client:
        yield client


def _local_port(response: httpx.Response) -> int:
    port: int = response.extensions["network_stream"].get_extra_info("socket").getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("route", "body", "status"),
    [
        ("exec/run", {"cmd": "echo hi", "envs": TOO_BIG_ENV, "timeout": 10}, 500),
        # Past 30 s of timeout the 200 headers went out first: the service's 200 error body.
        ("exec/run", {"cmd": "echo hi", "envs": TOO_BIG_ENV, "timeout": 60}, 200),
        ("exec", {"cmd": "echo", "args": ["hi"], "envs": TOO_BIG_ENV}, 500),
        ("exec/run-async", {"cmd": "echo", "args": ["hi"], "envs": TOO_BIG_ENV}, 500),
    ],
)
async def test_a_command_the_os_refuses_is_500_exec_in_and_the_connection_still_works(
    one_connection: httpx.AsyncClient, sandbox: str, route: str, body: dict[str, object], status: int
) -> None:
    refused = await one_connection.post(f"/sandboxes/{sandbox}/{route}", json=body)
    assert refused.status_code == status
    error = refused.json()["error"]
    assert error.startswith(f"exec in {sandbox}: ") and "Argument list too long" in error
    after = await one_connection.post(f"/sandboxes/{sandbox}/exec/run", json={"cmd": "echo still here"})
    assert after.json()["stdout"] == "still here\n"
    assert _local_port(after) == _local_port(refused)  # the same connection


async def test_an_unexpected_server_error_is_500_and_the_connection_still_works(
    one_connection: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Sandboxes) -> list[object]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Sandboxes, "tag_keys", broken)
    failed = await one_connection.get("/tags")
    assert (failed.status_code, failed.json()) == (500, {"error": "internal error"})
    monkeypatch.undo()
    after = await one_connection.get("/tags")
    assert after.status_code == 200
    assert _local_port(after) == _local_port(failed)


async def test_output_past_the_old_16_mib_cut_comes_back_whole(http: httpx.AsyncClient, sandbox: str) -> None:
    size = 17 * MIB
    script = f"head -c {size} /dev/zero | tr '\\0' a; head -c {size} /dev/zero | tr '\\0' b >&2"
    response = await http.post(f"/sandboxes/{sandbox}/exec/run", json={"cmd": script})
    assert response.status_code == 200
    result = response.json()
    assert (len(result["stdout"]), len(result["stderr"])) == (size, size)
    assert result["stdout"].strip("a") == "" and result["stderr"].strip("b") == ""


@pytest.mark.parametrize("timeout", [30, 60])  # answered at the end, and after keepalive spaces
async def test_output_past_64_mib_is_an_explicit_error_never_a_silent_cut(
    http: httpx.AsyncClient, sandbox: str, timeout: int
) -> None:
    script = f"head -c {64 * MIB + 1} /dev/zero"
    response = await http.post(f"/sandboxes/{sandbox}/exec/run", json={"cmd": script, "timeout": timeout})
    body = response.json()
    assert "stdout" not in body
    assert body["code"] == "output_too_large"
    assert body["error"].startswith(f"exec in {sandbox}: output exceeded 64 MiB")
    # Before the 200 headers (timeout <= 30) it is a 500; after them, the service's 200 error body.
    assert response.status_code == (500 if timeout <= 30 else 200)
