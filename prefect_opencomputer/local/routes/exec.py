"""Exec routes: synchronous runs, exec sessions and the binary WebSocket attach protocol."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from prefect_opencomputer.local.backend.exec import (
    REPLAY_END,
    STDIN,
    ExecSession,
    Listener,
)
from prefect_opencomputer.local.backend.records import rfc3339, utc_now
from prefect_opencomputer.local.backend.service import LocalBackend
from prefect_opencomputer.local.errors import BackendError, CannotStart, Invalid
from prefect_opencomputer.local.routes.deps import BackendDep
from prefect_opencomputer.local.routes.sandboxes import Int64
from prefect_opencomputer.local.routes.sockets import client_frames
from prefect_opencomputer.local.sandbox.runtime import CommandResult

router = APIRouter()

DEFAULT_RUN_TIMEOUT = 60
# Above this, the service answers 200 at once and keeps the connection alive with spaces.
STREAMED_RUN_THRESHOLD = 30
KEEPALIVE_SECONDS = 15.0
# An async run that finishes within this answers inline (200), like the service's inline hold.
INLINE_HOLD_SECONDS = 0.4
# How long a result poll waits for a running command to exit before it answers `running: true`.
RESULT_LONG_POLL_SECONDS = 0.5
# Empty binary frames keep idle attach connections open through proxies, as the service does.
WS_KEEPALIVE_SECONDS = 30.0


class RunBody(BaseModel):
    """``types.ProcessConfig``."""

    model_config = ConfigDict(extra="ignore")

    cmd: str | None = None
    args: list[str] | None = None
    envs: dict[str, str] | None = None
    cwd: str | None = None
    timeout: Int64 | None = None


class SessionBody(BaseModel):
    """``types.ExecSessionCreateRequest``."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    cmd: str | None = None
    args: list[str] | None = None
    envs: dict[str, str] | None = None
    cwd: str | None = None
    timeout: Int64 | None = None
    max_run_after_disconnect: Int64 | None = Field(None, alias="maxRunAfterDisconnect")


class KillBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    signal: Int64 | None = None


def _command(body: RunBody | SessionBody) -> str:
    """The body's command: required, and with no NUL (which cannot reach ``execve``), else a 400."""
    if not body.cmd:
        raise Invalid("cmd is required")
    texts = [body.cmd or "", body.cwd or "", *(body.args or [])]
    texts += [text for pair in (body.envs or {}).items() for text in pair]
    if any("\0" in text for text in texts):
        raise Invalid("cmd, args, envs and cwd must not contain a NUL byte")
    return body.cmd


async def _start_session(
    backend: LocalBackend,
    sandbox_id: str,
    body: RunBody | SessionBody,
    timeout: int,
    max_run_after_disconnect: int,
) -> ExecSession:
    """The body's argv command started as an exec session (async runs are sessions too)."""
    return await backend.exec.start_session(
        sandbox_id,
        _command(body),
        body.args or [],
        envs=body.envs or {},
        cwd=body.cwd,
        timeout=timeout,
        max_run_after_disconnect=max_run_after_disconnect,
    )


def _run_timeout(body: RunBody) -> int:
    """A run's timeout in seconds: the hosted default when it is missing, 0 or negative."""
    return body.timeout if body.timeout and body.timeout > 0 else DEFAULT_RUN_TIMEOUT


def result_json(result: CommandResult) -> dict[str, object]:
    return {
        "exitCode": result.exit_code,
        "stdout": result.stdout.decode(errors="replace"),
        "stderr": result.stderr.decode(errors="replace"),
    }


def session_json(session: ExecSession) -> dict[str, object]:
    body: dict[str, object] = {
        "sessionID": session.id,
        "sandboxID": session.sandbox_id,
        "command": session.command,
        "args": list(session.args),
        "running": session.running,
    }
    if session.exit_code is not None:
        body["exitCode"] = session.exit_code
    body["startedAt"] = rfc3339(session.started_at)
    body["attachedClients"] = session.attached_clients
    return body


@router.post("/sandboxes/{sandbox_id}/exec/run", response_model=None)
async def run_command(
    sandbox_id: str, backend: BackendDep, body: RunBody | None = None
) -> JSONResponse | StreamingResponse:
    """Run to completion. ``args`` empty means ``cmd`` is a shell string for ``/bin/sh -c``."""
    body = body or RunBody()
    command = _command(body)
    argv = [command, *body.args] if body.args else ["/bin/sh", "-c", command]
    timeout = _run_timeout(body)
    envs = body.envs or {}
    if timeout <= STREAMED_RUN_THRESHOLD:
        result = await backend.exec.run(sandbox_id, argv, envs=envs, cwd=body.cwd, timeout=timeout)
        return JSONResponse(result_json(result))
    # Answer 404/410 with their real status before the 200 goes out.
    backend.sandboxes.require_live(sandbox_id)
    run = asyncio.ensure_future(backend.exec.run(sandbox_id, argv, envs=envs, cwd=body.cwd, timeout=timeout))
    return StreamingResponse(_keepalive_then_result(run), media_type="application/json")


async def _keepalive_then_result(run: asyncio.Future[CommandResult]) -> AsyncIterator[bytes]:
    """A space every 15 s while the command runs, then its JSON (failures too arrive as 200)."""
    try:
        while True:
            done, _ = await asyncio.wait({run}, timeout=KEEPALIVE_SECONDS)
            if done:
                break
            yield b" "
        try:
            body: dict[str, object] = result_json(run.result())
        except BackendError as error:
            body = error.body()
        except Exception as error:
            body = {"error": f"exec failed: {error}"}
        yield json.dumps(body).encode()
    finally:
        if not run.done():
            # The client went away: the command goes with it.
            run.cancel()


@router.post("/sandboxes/{sandbox_id}/exec/run-async", response_model=None)
async def run_async(sandbox_id: str, backend: BackendDep, body: RunBody | None = None) -> JSONResponse:
    """Start an argv command (no shell, as an exec session); 200 with its result if it ends at once.

    Otherwise 202 ``{"execId", "running", "startedAt"}``: poll ``exec/{execId}/result``.
    """
    body = body or RunBody()
    try:
        session = await _start_session(backend, sandbox_id, body, _run_timeout(body), 0)
    except CannotStart as refusal:
        # As the service: accepted, and the result says why it never ran.
        exec_id = backend.exec.refused_run(sandbox_id, refusal)
        return JSONResponse(
            {"execId": exec_id, "running": True, "startedAt": rfc3339(utc_now())}, status_code=202
        )
    if await session.wait_exit(INLINE_HOLD_SECONDS) and not session.truncated:
        stdout, stderr = session.output()
        return JSONResponse(result_json(CommandResult(session.exit_code or 0, stdout, stderr)))
    started = {"execId": session.id, "running": True, "startedAt": rfc3339(session.started_at)}
    return JSONResponse(started, status_code=202)


@router.get("/sandboxes/{sandbox_id}/exec/{exec_id}/result")
async def async_result(sandbox_id: str, exec_id: str, backend: BackendDep) -> dict[str, object]:
    """The run's state, long-polled briefly while it runs; output is the session's scrollback."""
    session = backend.exec.result(sandbox_id, exec_id)
    if isinstance(session, str):
        return {"running": False, "exitCode": -1, "stdout": "", "stderr": "", "error": session}
    running = not await session.wait_exit(RESULT_LONG_POLL_SECONDS)
    stdout, stderr = session.output()
    body: dict[str, object] = {"running": running}
    if session.exit_code is not None:
        body["exitCode"] = session.exit_code
    body["stdout"] = stdout.decode(errors="replace")
    body["stderr"] = stderr.decode(errors="replace")
    if session.truncated:
        body["truncated"] = True
    return body


@router.post("/sandboxes/{sandbox_id}/exec", status_code=201)
async def create_session(
    sandbox_id: str, backend: BackendDep, body: SessionBody | None = None
) -> JSONResponse:
    """Start an argv command (no shell) whose output clients attach to over WebSocket."""
    body = body or SessionBody()
    session = await _start_session(
        backend, sandbox_id, body, body.timeout or 0, body.max_run_after_disconnect or 0
    )
    return JSONResponse(session_json(session), status_code=201)


@router.get("/sandboxes/{sandbox_id}/exec")
async def list_sessions(sandbox_id: str, backend: BackendDep) -> list[dict[str, object]]:
    return [session_json(session) for session in await backend.exec.sessions(sandbox_id)]


@router.post("/sandboxes/{sandbox_id}/exec/{session_id}/kill", status_code=204)
async def kill_session(
    sandbox_id: str, session_id: str, backend: BackendDep, body: KillBody | None = None
) -> Response:
    await backend.exec.kill_session(sandbox_id, session_id, (body.signal if body else None) or 9)
    return Response(status_code=204)


@router.websocket("/sandboxes/{sandbox_id}/exec/{session_id}")
async def attach_session(websocket: WebSocket, sandbox_id: str, session_id: str) -> None:
    """Replay the scrollback, mark its end (0x04), stream live output, then the exit code (0x03).

    Errors before the upgrade (unknown sandbox or session) are answered as JSON, not as a socket.
    """
    backend: LocalBackend = websocket.app.state.backend
    async with backend.exec.attached(sandbox_id, session_id) as (session, replay, listener):
        await websocket.accept()
        stdin = asyncio.create_task(_forward_stdin(websocket, session))
        try:
            await _send_output(websocket, replay, listener, stdin)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the client went away mid-send: it can attach again and replay
        finally:
            stdin.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stdin


async def _send_output(
    websocket: WebSocket, replay: list[bytes], listener: Listener, stdin: asyncio.Task[None]
) -> None:
    """The replay, its end marker, then live frames until the session ends or the client leaves."""
    for frame in replay:
        await websocket.send_bytes(frame)
    await websocket.send_bytes(bytes([REPLAY_END]))
    pending: asyncio.Future[bytes | None] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(listener.next_frame())
            waiting: set[asyncio.Future[Any]] = {pending, stdin}
            done, _ = await asyncio.wait(
                waiting, timeout=WS_KEEPALIVE_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
            if pending in done:
                live, pending = pending.result(), None
                if live is None:
                    if listener.too_slow:
                        await websocket.close(code=1013, reason="client too slow: attach again to replay")
                    else:
                        await websocket.close(code=1000)
                    return
                await websocket.send_bytes(live)
            elif stdin in done:  # the client disconnected
                return
            else:
                await websocket.send_bytes(b"")
    finally:
        if pending is not None:
            pending.cancel()


async def _forward_stdin(websocket: WebSocket, session: ExecSession) -> None:
    """Client frames ``0x00 + bytes`` go to the command's stdin; anything else is ignored."""
    async for data in client_frames(websocket, text=False):
        if data[0] == STDIN:
            await session.write_stdin(data[1:])
