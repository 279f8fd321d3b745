"""PTY sessions: an interactive shell through the official Python SDK, resize, exit, reattach and kill."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import websockets
from opencomputer import Sandbox

from prefect_opencomputer.local import LocalServer

pytestmark = pytest.mark.slow


@pytest.fixture
async def sdk_sandbox(local_server: LocalServer) -> AsyncIterator[Sandbox]:
    # The SDK builds the PTY socket's URL from api_url without adding /api (on the hosted service
    # too), so it is given with /api.
    sandbox = await Sandbox.create(
        api_url=f"{local_server.url}/api", api_key=local_server.api_key, timeout=300
    )
    try:
        yield sandbox
    finally:
        await sandbox.kill()
        await sandbox.close()


async def _until(screen: bytearray, text: str) -> None:
    for _ in range(300):
        if text.encode() in screen:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{text!r} never showed; the screen: {screen.decode(errors='replace')}")


async def test_an_interactive_shell_as_sandbox_on_a_terminal_of_its_own(
    sdk_sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    screen = bytearray()
    pty = await sdk_sandbox.pty.create(cols=100, rows=30, on_output=screen.extend)
    await _until(screen, "$ ")
    await pty.send("echo typed-$((6*7)); tty; stty size; echo $TERM; whoami; pwd\n")
    await _until(screen, "/home/sandbox\r\n")
    shown = screen.decode(errors="replace")
    for line in ("typed-42", "/dev/pts/0", "30 100", "xterm-256color", "sandbox"):
        assert f"{line}\r\n" in shown, line

    resized = await http.post(
        f"/sandboxes/{sdk_sandbox.sandbox_id}/pty/{pty.session_id}/resize", json={"cols": 132, "rows": 50}
    )
    assert (resized.status_code, resized.content) == (200, b"")
    await pty.send("stty size\n")
    await _until(screen, "50 132\r\n")

    # Exiting the shell ends the socket normally.
    await pty.send("exit\n")
    assert pty._read_task is not None
    await asyncio.wait_for(pty._read_task, 10)
    assert pty._ws is not None and pty._ws.close_code == 1000
    await pty.close()


async def test_a_shell_outlives_its_socket_until_killed(
    sdk_sandbox: Sandbox, http: httpx.AsyncClient, local_server: LocalServer
) -> None:
    first = bytearray()
    pty = await sdk_sandbox.pty.create(on_output=first.extend)
    await _until(first, "$ ")
    await pty.send("export KEPT=still-here\n")
    await asyncio.sleep(0.2)
    await pty.close()  # the socket only: the shell stays

    api = local_server.url.replace("http", "ws", 1) + "/api"
    url = f"{api}/sandboxes/{sdk_sandbox.sandbox_id}/pty/{pty.session_id}"
    async with websockets.connect(f"{url}?api_key={local_server.api_key}") as again:
        await again.send(b"echo $KEPT\n")
        seen = b""
        while b"still-here\r\n" not in seen:
            seen += await asyncio.wait_for(again.recv(), 10)  # type: ignore[operator]

    base = f"/sandboxes/{sdk_sandbox.sandbox_id}/pty/{pty.session_id}"
    assert (await http.delete(base)).status_code == 204
    missing = await http.delete(base)
    assert (missing.status_code, missing.json()) == (
        404,
        {"error": f"PTY session {pty.session_id} not found"},
    )
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(f"{url}?api_key={local_server.api_key}"):
            pass
    assert refused.value.response.status_code == 404
    with pytest.raises(websockets.InvalidStatus) as unauthorized:
        async with websockets.connect(f"{url}?api_key=wrong"):
            pass
    assert unauthorized.value.response.status_code == 401
