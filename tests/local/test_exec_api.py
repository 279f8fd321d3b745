"""Exec routes on the wire: synchronous runs, exec sessions and the binary attach protocol."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from prefect_opencomputer.local import LocalServer
from tests.waiting import until

STDOUT, STDERR, EXIT, REPLAY_END = 0x01, 0x02, 0x03, 0x04


async def _run(http: httpx.AsyncClient, sandbox: str, **body: object) -> httpx.Response:
    return await http.post(f"/sandboxes/{sandbox}/exec/run", json=body)


def _attach_url(server: LocalServer, sandbox: str, session: str) -> str:
    base = server.url.replace("http://", "ws://")
    return f"{base}/api/sandboxes/{sandbox}/exec/{session}?api_key={quote(server.api_key)}"


async def _start(http: httpx.AsyncClient, sandbox: str, **body: object) -> str:
    response = await http.post(f"/sandboxes/{sandbox}/exec", json=body)
    assert response.status_code == 201, response.text
    session: str = response.json()["sessionID"]
    return session


async def _collect(ws: ClientConnection) -> tuple[list[tuple[int, bytes]], int | None]:
    """Every frame until the server closes, and the exit code if one came."""
    frames: list[tuple[int, bytes]] = []
    code = None
    async for message in ws:
        assert isinstance(message, bytes)
        if not message:
            continue  # keepalive
        frames.append((message[0], message[1:]))
        if message[0] == EXIT:
            code = int.from_bytes(message[1:5], "big", signed=True)
    return frames, code


async def _session_ended(http: httpx.AsyncClient, sandbox: str, session: str) -> bool:
    listed = (await http.get(f"/sandboxes/{sandbox}/exec")).json()
    return next(item for item in listed if item["sessionID"] == session)["running"] is False


def _stream(frames: list[tuple[int, bytes]], stream: int) -> bytes:
    return b"".join(payload for kind, payload in frames if kind == stream)


# -- exec/run -------------------------------------------------------------------------------


async def test_run_without_args_is_a_shell_string(http: httpx.AsyncClient, sandbox: str) -> None:
    response = await _run(http, sandbox, cmd="echo out; echo err >&2; exit 3")
    assert response.status_code == 200
    assert response.json() == {"exitCode": 3, "stdout": "out\n", "stderr": "err\n"}


async def test_run_with_args_is_argv_without_a_shell(http: httpx.AsyncClient, sandbox: str) -> None:
    response = await _run(http, sandbox, cmd="echo", args=["$HOME", "a;b"])
    assert response.json() == {"exitCode": 0, "stdout": "$HOME a;b\n", "stderr": ""}


async def test_run_is_the_sandbox_user_in_its_home(http: httpx.AsyncClient, sandbox: str) -> None:
    response = await _run(http, sandbox, cmd="id -un; pwd; echo $HOME")
    assert response.json()["stdout"] == "sandbox\n/home/sandbox\n/home/sandbox\n"
    response = await _run(http, sandbox, cmd="pwd", cwd="/tmp")
    assert response.json()["stdout"] == "/tmp\n"


async def test_command_envs_override_sandbox_envs(http: httpx.AsyncClient) -> None:
    created = await http.post("/sandboxes", json={"envs": {"A": "sandbox", "B": "sandbox"}})
    sandbox = created.json()["sandboxID"]
    try:
        response = await _run(http, sandbox, cmd="echo $A $B $C", envs={"B": "command", "C": "command"})
        assert response.json()["stdout"] == "sandbox command command\n"
    finally:
        await http.delete(f"/sandboxes/{sandbox}")


async def test_missing_cmd_is_400(http: httpx.AsyncClient, sandbox: str) -> None:
    response = await _run(http, sandbox, args=["x"])
    assert (response.status_code, response.json()) == (400, {"error": "cmd is required"})
    response = await http.post(f"/sandboxes/{sandbox}/exec", json={})
    assert (response.status_code, response.json()) == (400, {"error": "cmd is required"})


async def test_timeout_is_exit_minus_one_with_process_timed_out(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    response = await _run(http, sandbox, cmd="echo started; sleep 30", timeout=1)
    assert response.status_code == 200
    body = response.json()
    assert body["exitCode"] == -1
    assert body["stdout"] == "started\n"
    assert body["stderr"].endswith("\nProcess timed out")


async def test_invalid_utf8_output_is_replaced_not_an_error(http: httpx.AsyncClient, sandbox: str) -> None:
    response = await _run(http, sandbox, cmd="printf 'a\\377b'")
    assert response.json()["stdout"] == "a\ufffdb"


async def test_background_process_survives_the_command_that_started_it(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    started = await _run(http, sandbox, cmd="nohup sh -c 'sleep 0.3; echo later > bg.txt' >/dev/null 2>&1 &")
    assert started.json()["exitCode"] == 0

    async def written() -> bool:
        return (await _run(http, sandbox, cmd="cat bg.txt")).json()["stdout"] == "later\n"

    await until(written, what="the background process to write bg.txt")


async def test_long_timeout_answers_json_after_optional_whitespace(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    response = await _run(http, sandbox, cmd="echo long", timeout=120)
    assert response.status_code == 200
    assert json.loads(response.text) == {"exitCode": 0, "stdout": "long\n", "stderr": ""}


@pytest.mark.slow
async def test_long_command_gets_keepalive_spaces_before_its_result(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    response = await _run(http, sandbox, cmd="sleep 16; echo finally", timeout=60)
    assert response.status_code == 200
    assert response.text.startswith(" ")
    assert json.loads(response.text) == {"exitCode": 0, "stdout": "finally\n", "stderr": ""}


async def test_long_timeout_on_a_killed_sandbox_is_still_a_real_410(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    await http.delete(f"/sandboxes/{sandbox}")
    response = await _run(http, sandbox, cmd="true", timeout=120)
    assert response.status_code == 410


# -- exec sessions --------------------------------------------------------------------------


async def test_session_create_answers_201_with_its_description(http: httpx.AsyncClient, sandbox: str) -> None:
    response = await http.post(f"/sandboxes/{sandbox}/exec", json={"cmd": "sleep", "args": ["5"]})
    assert response.status_code == 201
    body = response.json()
    assert len(body["sessionID"]) == 8
    assert body["sandboxID"] == sandbox
    assert body["command"] == "sleep"
    assert body["args"] == ["5"]
    assert body["running"] is True
    assert body["attachedClients"] == 0
    assert "exitCode" not in body
    await http.post(f"/sandboxes/{sandbox}/exec/{body['sessionID']}/kill", json={})


async def test_attach_replays_then_streams_then_sends_the_exit_code(
    http: httpx.AsyncClient, sandbox: str, local_server: LocalServer
) -> None:
    script = "echo early; echo oops >&2; read line; echo got $line; exit 7"
    session = await _start(http, sandbox, cmd="sh", args=["-c", script])
    async with websockets.connect(_attach_url(local_server, sandbox, session)) as ws:
        seen = b""
        while b"early" not in seen:  # so that "early" is in the scrollback before the next attach
            frame = await ws.recv()
            assert isinstance(frame, bytes)
            seen += frame
    async with websockets.connect(_attach_url(local_server, sandbox, session)) as ws:
        first = await ws.recv()
        assert first == bytes([STDOUT]) + b"early\n"
        await ws.send(b"\x00hello\n")
        frames, code = await _collect(ws)
        assert ws.close_code == 1000
    kinds = [kind for kind, _ in frames]
    assert REPLAY_END in kinds
    assert _stream([(STDOUT, b"early\n"), *frames], STDOUT) == b"early\ngot hello\n"
    assert _stream(frames, STDERR) == b"oops\n"
    assert code == 7
    assert kinds[-1] == EXIT


async def test_reattach_after_exit_replays_everything_and_the_exit_code(
    http: httpx.AsyncClient, sandbox: str, local_server: LocalServer
) -> None:
    session = await _start(http, sandbox, cmd="sh", args=["-c", "echo one; echo two"])
    await until(lambda: _session_ended(http, sandbox, session), what="the session to exit")
    for _ in range(2):
        async with websockets.connect(_attach_url(local_server, sandbox, session)) as ws:
            frames, code = await _collect(ws)
        assert [kind for kind, _ in frames][-2:] == [REPLAY_END, EXIT]
        assert _stream(frames, STDOUT) == b"one\ntwo\n"
        assert code == 0
    listed = (await http.get(f"/sandboxes/{sandbox}/exec")).json()
    entry = next(item for item in listed if item["sessionID"] == session)
    assert entry["running"] is False
    assert entry["exitCode"] == 0


async def test_two_clients_attached_at_once_both_see_live_output(
    http: httpx.AsyncClient, sandbox: str, local_server: LocalServer
) -> None:
    session = await _start(http, sandbox, cmd="sh", args=["-c", "read x; echo shared $x"])
    url = _attach_url(local_server, sandbox, session)
    async with websockets.connect(url) as first, websockets.connect(url) as second:
        assert await first.recv() == bytes([REPLAY_END])
        assert await second.recv() == bytes([REPLAY_END])
        await first.send(b"\x00go\n")
        (frames_a, code_a), (frames_b, code_b) = await asyncio.gather(_collect(first), _collect(second))
    assert _stream(frames_a, STDOUT) == _stream(frames_b, STDOUT) == b"shared go\n"
    assert code_a == code_b == 0


async def test_kill_ends_the_session_with_exit_minus_one(
    http: httpx.AsyncClient, sandbox: str, local_server: LocalServer
) -> None:
    session = await _start(http, sandbox, cmd="sleep", args=["60"])
    async with websockets.connect(_attach_url(local_server, sandbox, session)) as ws:
        assert await ws.recv() == bytes([REPLAY_END])
        kill = await http.post(f"/sandboxes/{sandbox}/exec/{session}/kill", json={"signal": 9})
        assert kill.status_code == 204
        _, code = await _collect(ws)
    assert code == -1


async def test_kill_with_sigterm_reaches_the_command(http: httpx.AsyncClient, sandbox: str) -> None:
    script = "trap 'echo terminated > trap.txt; exit 0' TERM; touch trapped; while true; do sleep 0.1; done"
    session = await _start(http, sandbox, cmd="sh", args=["-c", script])

    async def trapped() -> bool:
        return (await _run(http, sandbox, cmd="test -e trapped")).json()["exitCode"] == 0

    await until(trapped, what="the trap to be set")
    await http.post(f"/sandboxes/{sandbox}/exec/{session}/kill", json={"signal": 15})
    await until(lambda: _session_ended(http, sandbox, session), what="the session to exit")
    assert (await _run(http, sandbox, cmd="cat trap.txt")).json()["stdout"] == "terminated\n"


async def test_unknown_session_is_404_json_for_kill_and_attach(
    http: httpx.AsyncClient, sandbox: str, local_server: LocalServer
) -> None:
    response = await http.post(f"/sandboxes/{sandbox}/exec/deadbeef/kill", json={})
    assert response.status_code == 404
    assert response.json() == {"error": "exec session deadbeef not found"}
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(_attach_url(local_server, sandbox, "deadbeef"))
    assert refused.value.response.status_code == 404
    assert json.loads(refused.value.response.body or b"{}") == {"error": "exec session deadbeef not found"}


async def test_session_timeout_kills_it_with_exit_minus_one(
    http: httpx.AsyncClient, sandbox: str, local_server: LocalServer
) -> None:
    session = await _start(http, sandbox, cmd="sleep", args=["60"], timeout=1)
    async with websockets.connect(_attach_url(local_server, sandbox, session)) as ws:
        _, code = await asyncio.wait_for(_collect(ws), 10)
    assert code == -1


async def test_max_run_after_disconnect_kills_a_detached_session(
    http: httpx.AsyncClient, sandbox: str, local_server: LocalServer
) -> None:
    session = await _start(http, sandbox, cmd="sleep", args=["60"], maxRunAfterDisconnect=1)
    async with websockets.connect(_attach_url(local_server, sandbox, session)) as ws:
        assert await ws.recv() == bytes([REPLAY_END])
    await until(lambda: _session_ended(http, sandbox, session), what="the detached session to be killed")
    listed = (await http.get(f"/sandboxes/{sandbox}/exec")).json()
    assert next(item for item in listed if item["sessionID"] == session)["exitCode"] == -1


async def test_sessions_list_is_empty_for_a_fresh_sandbox_kept_on_hibernate_and_forgotten_on_reboot(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    assert (await http.get(f"/sandboxes/{sandbox}/exec")).json() == []
    await _start(http, sandbox, cmd="sleep", args=["60"])
    assert len((await http.get(f"/sandboxes/{sandbox}/exec")).json()) == 1
    await http.post(f"/sandboxes/{sandbox}/hibernate")
    assert [item["running"] for item in (await http.get(f"/sandboxes/{sandbox}/exec")).json()] == [True]
    await http.post(f"/sandboxes/{sandbox}/reboot")
    assert (await http.get(f"/sandboxes/{sandbox}/exec")).json() == []


async def test_a_run_whose_sandbox_hibernates_mid_command_still_answers_at_its_timeout(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    running = asyncio.ensure_future(
        http.post(f"/sandboxes/{sandbox}/exec/run", json={"cmd": "sleep 60", "timeout": 3}, timeout=30)
    )
    await asyncio.sleep(0.5)
    assert (await http.post(f"/sandboxes/{sandbox}/hibernate")).status_code == 200
    answered = await running  # frozen, the command cannot die before a wake: the answer does not wait
    assert answered.status_code == 200, answered.text
    assert answered.json()["exitCode"] == -1
    assert "Process timed out" in answered.json()["stderr"]
    assert (await http.post(f"/sandboxes/{sandbox}/wake")).status_code == 200
    ran = await http.post(f"/sandboxes/{sandbox}/exec/run", json={"cmd": "echo awake"})
    assert ran.json()["stdout"] == "awake\n"
