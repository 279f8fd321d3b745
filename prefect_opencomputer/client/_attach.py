"""A live attachment to an exec session over the service's binary WebSocket protocol.

Server to client, the first byte of each binary frame says what it holds: 0x01 stdout, 0x02 stderr,
0x03 exit code (4-byte big-endian signed), 0x04 end of the scrollback replay. Empty frames are keepalives.
Client to server: 0x00 + stdin bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Final, Self

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from prefect_opencomputer.client._errors import TransportError
from prefect_opencomputer.client._models import ExecEvent, ExecExit, ExecOutput, ExecScrollbackEnd
from prefect_opencomputer.client._transport import error_from_response

STDIN: Final = 0x00
STDOUT: Final = 0x01
STDERR: Final = 0x02
EXIT: Final = 0x03
SCROLLBACK_END: Final = 0x04
UNKNOWN_EXIT_CODE: Final = -1
# The scrollback replay (a 1 MB ring) may arrive as one frame.
_MAX_FRAME: Final = 16 * 1024 * 1024


def decode_frame(frame: bytes) -> ExecEvent | None:
    """The event a server frame carries, or None for keepalives and frame types we do not know."""
    if not frame:
        return None
    kind, payload = frame[0], frame[1:]
    if kind == STDOUT:
        return ExecOutput("stdout", payload)
    if kind == STDERR:
        return ExecOutput("stderr", payload)
    if kind == EXIT:
        code = int.from_bytes(payload[:4], "big", signed=True) if len(payload) >= 4 else UNKNOWN_EXIT_CODE
        return ExecExit(code)
    if kind == SCROLLBACK_END:
        return ExecScrollbackEnd()
    return None


class ExecAttachment:
    """Events of one exec session: iterate it, optionally inside `async with` to also `send_stdin`.

    Iterating without `async with` connects on the first event and disconnects at the end. Ends after
    `ExecExit`; a socket that closes without one yields `ExecExit(-1)`. Detaching never kills the process.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        open_timeout: float,
        path: str,
    ) -> None:
        self._url = url
        self._headers = dict(headers)
        self._open_timeout = open_timeout
        self._path = path
        self._secret = self._headers.get("X-API-Key", "")
        self._socket: ClientConnection | None = None
        self.exit_code: int | None = None

    def __repr__(self) -> str:
        return f"ExecAttachment({self._path!r}, connected={self._socket is not None})"

    async def connect(self) -> None:
        """Open the WebSocket (idempotent); the scrollback replay starts right away."""
        await self._open()

    async def _open(self) -> ClientConnection:
        if self._socket is not None:
            return self._socket
        try:
            socket = await connect(
                self._url,
                additional_headers=self._headers,
                open_timeout=self._open_timeout,
                max_size=_MAX_FRAME,
                # Frames are small binary chunks, read as they arrive: deflate would only add latency.
                compression=None,
            )
        except InvalidStatus as exc:
            response = exc.response
            raise error_from_response(
                response.status_code,
                bytes(response.body or b""),
                response.headers,
                method="GET",
                path=self._path,
                secret=self._secret,
            ) from exc
        except (OSError, TimeoutError, WebSocketException) as exc:
            detail = str(exc).replace(self._secret, "***") if self._secret else str(exc)
            raise TransportError(
                f"attach {self._path}: {type(exc).__name__}: {detail}", ambiguous=False
            ) from exc
        self._socket = socket
        return socket

    async def close(self) -> None:
        """Detach; the process keeps running (see `max_run_after_disconnect`)."""
        socket, self._socket = self._socket, None
        if socket is not None:
            await socket.close()

    async def send_stdin(self, data: bytes | str) -> None:
        """Write to the process's stdin; requires `async with` (or `connect()`) first."""
        if self._socket is None:
            raise RuntimeError("attachment is not connected: use `async with` before send_stdin")
        payload = data.encode() if isinstance(data, str) else data
        await self._socket.send(bytes([STDIN]) + payload)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[ExecEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[ExecEvent]:
        owns_socket = self._socket is None
        socket = await self._open()
        try:
            async for event in self._receive(socket):
                yield event
        finally:
            if owns_socket:
                await self.close()

    async def _receive(self, socket: ClientConnection) -> AsyncIterator[ExecEvent]:
        while True:
            try:
                frame = await socket.recv()
            except ConnectionClosed:
                self.exit_code = UNKNOWN_EXIT_CODE
                yield ExecExit(UNKNOWN_EXIT_CODE)
                return
            if not isinstance(frame, bytes):
                continue
            event = decode_frame(frame)
            if event is None:
                continue
            if isinstance(event, ExecExit):
                self.exit_code = event.exit_code
                yield event
                return
            yield event
