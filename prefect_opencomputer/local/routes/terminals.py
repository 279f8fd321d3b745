"""PTY routes: create a session, attach to it over a WebSocket (raw bytes both ways), resize, kill.

`socket_router` holds the attach: besides the API key it takes the sandbox's own token, as the
hosted worker's socket does (``?token=``), because the official Python SDK presents the token there.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from prefect_opencomputer.local.auth import require_api_key_or_sandbox_token
from prefect_opencomputer.local.backend.service import LocalBackend
from prefect_opencomputer.local.backend.terminals import Terminal
from prefect_opencomputer.local.errors import Invalid
from prefect_opencomputer.local.routes.deps import BackendDep
from prefect_opencomputer.local.routes.sandboxes import Int64
from prefect_opencomputer.local.routes.sockets import client_frames

router = APIRouter()
socket_router = APIRouter()

# A terminal's rows and columns fit the kernel's 16 bits.
_SIZE = range(0, 65536)


class TerminalBody(BaseModel):
    """``types.PTYCreateRequest``."""

    model_config = ConfigDict(extra="ignore")

    cols: Int64 = 0
    rows: Int64 = 0
    shell: str = ""


class ResizeBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    cols: Int64 = 0
    rows: Int64 = 0


def _size(cols: int, rows: int) -> tuple[int, int]:
    if cols not in _SIZE or rows not in _SIZE:
        raise Invalid("cols and rows must be between 0 and 65535")
    return cols, rows


@router.post("/sandboxes/{sandbox_id}/pty", status_code=201)
async def create_terminal(
    sandbox_id: str, backend: BackendDep, body: TerminalBody | None = None
) -> JSONResponse:
    """201 ``{sessionID, sandboxID}``: attach to ``/pty/{sessionID}`` to use the shell."""
    body = body or TerminalBody()
    cols, rows = _size(body.cols, body.rows)
    terminal = await backend.terminals.start(sandbox_id, cols, rows, body.shell)
    return JSONResponse({"sessionID": terminal.id, "sandboxID": sandbox_id}, status_code=201)


@router.post("/sandboxes/{sandbox_id}/pty/{session_id}/resize")
async def resize_terminal(
    sandbox_id: str, session_id: str, backend: BackendDep, body: ResizeBody | None = None
) -> Response:
    """200 with no body, as the service answers it; the shell gets SIGWINCH."""
    body = body or ResizeBody()
    (await backend.terminals.get(sandbox_id, session_id)).resize(*_size(body.cols, body.rows))
    return Response(status_code=200)


@router.delete("/sandboxes/{sandbox_id}/pty/{session_id}", status_code=204)
async def kill_terminal(sandbox_id: str, session_id: str, backend: BackendDep) -> Response:
    await backend.terminals.close(sandbox_id, session_id)
    return Response(status_code=204)


@socket_router.websocket("/sandboxes/{sandbox_id}/pty/{session_id}")
async def attach_terminal(websocket: WebSocket, sandbox_id: str, session_id: str) -> None:
    """The terminal's output as binary frames; every frame the client sends is typed into it.

    The socket closes (1000) when the shell exits; an unknown session is a 404 before the upgrade.
    """
    backend: LocalBackend = websocket.app.state.backend
    await require_api_key_or_sandbox_token(websocket, backend, sandbox_id)
    async with backend.terminals.attached(sandbox_id, session_id) as terminal:
        await websocket.accept()
        typing = asyncio.create_task(_type_into(websocket, terminal))
        try:
            while True:
                reading = asyncio.ensure_future(terminal.read())
                done, _ = await asyncio.wait({reading, typing}, return_when=asyncio.FIRST_COMPLETED)
                if reading not in done:  # the client went away: the shell stays for the next one
                    reading.cancel()
                    return
                output = reading.result()
                if not output:
                    await websocket.close(code=1000)
                    return
                await websocket.send_bytes(output)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            typing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await typing


async def _type_into(websocket: WebSocket, terminal: Terminal) -> None:
    async for data in client_frames(websocket, text=True):
        await terminal.write(data)
