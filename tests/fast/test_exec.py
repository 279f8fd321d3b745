"""Exec routes (run, async runs, sessions and their socket): success and error shapes over real HTTP."""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest
import websockets

from tests.fast.conftest import FastServer
from tests.fast.coverage import covers, error_of
from tests.waiting import until

MISSING = "sb-00000000"


@covers("POST /api/sandboxes/{sandbox_id}/exec/run")
async def test_run(http: httpx.AsyncClient, sandbox: str) -> None:
    ran = await http.post(
        f"/sandboxes/{sandbox}/exec/run",
        json={
            "cmd": "sh",
            "args": ["-c", "echo $GREETING; echo err >&2; exit 3"],
            "envs": {"GREETING": "hi"},
        },
    )
    assert ran.status_code == 200, ran.text
    assert (ran.json()["exitCode"], ran.json()["stdout"], ran.json()["stderr"]) == (3, "hi\n", "err\n")
    refused = await http.post(
        f"/sandboxes/{sandbox}/exec/run", json={"cmd": "no-such-command", "args": ["x"], "timeout": 10}
    )
    assert refused.status_code == 500
    assert "executable file not found in $PATH" in error_of(refused.json())
    no_dir = await http.post(
        f"/sandboxes/{sandbox}/exec/run",
        json={"cmd": "true", "args": ["x"], "cwd": "/nowhere", "timeout": 10},
    )
    assert no_dir.status_code == 500 and "no such file or directory" in error_of(no_dir.json())
    missing = await http.post(f"/sandboxes/{MISSING}/exec/run", json={"cmd": "true"})
    assert missing.status_code == 404 and error_of(missing.json())


async def test_a_command_that_cannot_start_is_refused_with_gos_reason(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    written = await http.put(f"/sandboxes/{sandbox}/files", params={"path": "/tmp/plain"}, content=b"x")
    assert written.status_code == 204, written.text
    for body, reason in (
        ({"cmd": "/tmp/plain"}, 'exec: "/tmp/plain": permission denied'),
        ({"cmd": "/tmp"}, 'exec: "/tmp": is a directory'),
        ({"cmd": "/tmp/gone"}, 'exec: "/tmp/gone": stat /tmp/gone: no such file or directory'),
        ({"cmd": "true", "cwd": "/tmp/plain"}, "not a directory"),
    ):
        refused = await http.post(
            f"/sandboxes/{sandbox}/exec/run", json={**body, "args": ["x"], "timeout": 10}
        )
        assert refused.status_code == 500, refused.text
        assert error_of(refused.json()).endswith(reason), body


@covers(
    "POST /api/sandboxes/{sandbox_id}/exec/run-async", "GET /api/sandboxes/{sandbox_id}/exec/{exec_id}/result"
)
async def test_async_run_and_its_result(http: httpx.AsyncClient, sandbox: str) -> None:
    started = await http.post(
        f"/sandboxes/{sandbox}/exec/run-async", json={"cmd": "sh", "args": ["-c", "echo done"]}
    )
    assert started.status_code in (200, 202), started.text
    exec_id = started.json().get("execId")
    if exec_id is not None:

        async def finished() -> bool:
            return not (await http.get(f"/sandboxes/{sandbox}/exec/{exec_id}/result")).json()["running"]

        await until(finished, what="the async run to finish")
        result = (await http.get(f"/sandboxes/{sandbox}/exec/{exec_id}/result")).json()
        assert (result["exitCode"], result["stdout"]) == (0, "done\n")
    refused = await http.post(f"/sandboxes/{sandbox}/exec/run-async", json={"cmd": "no-such-command"})
    assert refused.status_code == 202
    why = (await http.get(f"/sandboxes/{sandbox}/exec/{refused.json()['execId']}/result")).json()
    assert why["running"] is False and "executable file not found" in why["error"]
    unknown = await http.get(f"/sandboxes/{sandbox}/exec/no-such-exec/result")
    assert unknown.status_code == 404 and error_of(unknown.json())


@covers(
    "POST /api/sandboxes/{sandbox_id}/exec",
    "GET /api/sandboxes/{sandbox_id}/exec",
    "POST /api/sandboxes/{sandbox_id}/exec/{session_id}/kill",
    "WS /api/sandboxes/{sandbox_id}/exec/{session_id}",
)
async def test_sessions_list_attach_and_kill(
    http: httpx.AsyncClient, sandbox: str, local_server: FastServer
) -> None:
    made = await http.post(
        f"/sandboxes/{sandbox}/exec", json={"cmd": "sh", "args": ["-c", "read x; echo got $x"]}
    )
    assert made.status_code == 201, made.text
    session = made.json()["sessionID"]
    listed = (await http.get(f"/sandboxes/{sandbox}/exec")).json()
    assert [item["sessionID"] for item in listed] == [session]
    base = local_server.url.replace("http://", "ws://")
    url = f"{base}/api/sandboxes/{sandbox}/exec/{session}?api_key={quote(local_server.api_key)}"
    async with websockets.connect(url) as ws:
        assert await ws.recv() == b"\x04"  # an empty scrollback, then its end marker
        await ws.send(b"\x00fast\n")
        seen = b""
        while b"got fast" not in seen:
            frame = await ws.recv()
            assert isinstance(frame, bytes)
            seen += frame
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(url.replace(session, "no-such-session")):
            pass
    assert refused.value.response.status_code == 404
    sleeper = (await http.post(f"/sandboxes/{sandbox}/exec", json={"cmd": "sleep", "args": ["60"]})).json()
    killed = await http.post(f"/sandboxes/{sandbox}/exec/{sleeper['sessionID']}/kill", json={"signal": 9})
    assert killed.status_code == 204

    async def ended() -> bool:
        items = (await http.get(f"/sandboxes/{sandbox}/exec")).json()
        return all(not item["running"] for item in items if item["sessionID"] == sleeper["sessionID"])

    await until(ended, what="the killed session to end")
    bad_signal = await http.post(f"/sandboxes/{sandbox}/exec/{session}/kill", json={"signal": 999})
    assert bad_signal.status_code == 400 and error_of(bad_signal.json()) == "invalid signal 999"
    unknown = await http.post(f"/sandboxes/{sandbox}/exec/no-such-session/kill", json={})
    assert unknown.status_code == 404 and error_of(unknown.json())
    no_cmd = await http.post(f"/sandboxes/{sandbox}/exec", json={})
    assert no_cmd.status_code == 400 and error_of(no_cmd.json())
    assert (await http.get(f"/sandboxes/{MISSING}/exec")).status_code == 404
