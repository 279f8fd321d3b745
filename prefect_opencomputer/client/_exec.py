"""Command routes: synchronous runs, background exec sessions and their WebSocket attach."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TypedDict, Unpack
from urllib.parse import quote

from prefect_opencomputer.client._attach import ExecAttachment
from prefect_opencomputer.client._errors import ServerError
from prefect_opencomputer.client._models import AsyncRun, CommandResult, ExecEvent, ExecSession
from prefect_opencomputer.client._transport import RouteGroup

# The HTTP deadline of a run must outlast the command's own timeout, or we would abandon a live command.
_RUN_GRACE = 30.0
# What the service applies when a run's timeout is 0 or negative.
_RUN_DEFAULT_TIMEOUT = 60


class StartOptions(TypedDict, total=False):
    """`Exec.start`'s options after the command, as `Exec.stream` passes them on."""

    args: Sequence[str] | None
    envs: Mapping[str, str] | None
    cwd: str | None
    timeout: int | None
    max_run_after_disconnect: int | None


class Exec(RouteGroup):
    """`client.exec`: run commands inside a sandbox, to completion or as streamed sessions."""

    async def run(
        self,
        sandbox_id: str,
        command: str | Sequence[str],
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: int = 60,
    ) -> CommandResult:
        """Run a command to completion: a string through `sh -c`, a sequence as argv (no shell).

        A non-zero exit or a timeout (`result.timed_out`) is a result, not an error. Never retried once it
        may have reached the service: a replay would run the command twice.
        """
        body = _run_body(command, envs, cwd, timeout)
        path = f"/sandboxes/{sandbox_id}/exec/run"
        response = await self._transport.request(
            "POST",
            path,
            json=body,
            timeout=(timeout if timeout > 0 else _RUN_DEFAULT_TIMEOUT) + _RUN_GRACE,
            replayable=False,
        )
        # Runs longer than 30 s get their 200 headers early (then keepalive spaces), so a failure after
        # that point can only be reported as an error body.
        payload = response.json()
        if isinstance(payload, dict) and "exitCode" not in payload and payload.get("error"):
            raise ServerError(
                response.status_code,
                self._transport.scrub(str(payload["error"])),
                method="POST",
                path=path,
            )
        return CommandResult.model_validate(payload)

    async def run_async(
        self,
        sandbox_id: str,
        command: str | Sequence[str],
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: int = 60,
    ) -> AsyncRun:
        """Start a command without holding a request open while it runs (what the TypeScript SDK does).

        A command that ends at once comes back finished (`exec_id` None); otherwise poll `result` with the
        returned `exec_id`. Each request is short, so no proxy in between can time it out. Not replayed.
        """
        body = _run_body(command, envs, cwd, timeout)
        response = await self._transport.request(
            "POST", f"/sandboxes/{sandbox_id}/exec/run-async", json=body, replayable=False
        )
        return AsyncRun.model_validate(response.json())

    async def result(self, sandbox_id: str, exec_id: str) -> AsyncRun:
        """The async run's state; the service waits briefly (about 0.5 s) for a running command to end.

        Results are kept about five minutes after the command exits, then `NotFoundError`.
        """
        response = await self._transport.request("GET", f"/sandboxes/{sandbox_id}/exec/{exec_id}/result")
        return AsyncRun.model_validate(response.json())

    async def start(
        self,
        sandbox_id: str,
        command: str,
        args: Sequence[str] | None = None,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: int | None = None,
        max_run_after_disconnect: int | None = None,
    ) -> ExecSession:
        """Start `command` with `args` as argv (no shell) in the background and return its session.

        `timeout` kills it after that many seconds (exit -1); `max_run_after_disconnect` kills it that many
        seconds after the last attached client leaves.
        """
        body: dict[str, object] = {"cmd": command}
        if args:
            body["args"] = list(args)
        if envs:
            body["envs"] = dict(envs)
        if cwd:
            body["cwd"] = cwd
        if timeout is not None:
            body["timeout"] = timeout
        if max_run_after_disconnect is not None:
            body["maxRunAfterDisconnect"] = max_run_after_disconnect
        response = await self._transport.request("POST", f"/sandboxes/{sandbox_id}/exec", json=body)
        return ExecSession.model_validate(response.json())

    async def list(self, sandbox_id: str) -> builtins.list[ExecSession]:
        """The sandbox's exec sessions, running and recently exited, in no particular order."""
        response = await self._transport.request("GET", f"/sandboxes/{sandbox_id}/exec")
        return [ExecSession.model_validate(item) for item in response.json() or []]

    async def kill(self, sandbox_id: str, session_id: str, signal: int = 9) -> None:
        """Send `signal` to the session's process."""
        await self._transport.request(
            "POST", f"/sandboxes/{sandbox_id}/exec/{session_id}/kill", json={"signal": signal}
        )

    def attach(self, sandbox_id: str, session_id: str) -> ExecAttachment:
        """Stream a session's output (its scrollback first, then live) until it exits.

        `async for event in client.exec.attach(...)` or, to write stdin,
        `async with client.exec.attach(...) as session: await session.send_stdin(b"...")`.
        """
        path = f"/sandboxes/{quote(sandbox_id, safe='')}/exec/{quote(session_id, safe='')}"
        return ExecAttachment(
            self._transport.websocket_base + path,
            # The key goes in a header, never the query string: URLs end up in access logs.
            headers=self._transport.auth_headers(),
            open_timeout=self._transport.timeout,
            path=path,
        )

    async def stream(
        self, sandbox_id: str, command: str, **options: Unpack[StartOptions]
    ) -> AsyncIterator[ExecEvent]:
        """Start a session and yield its events until it exits (`start`, with its options, then `attach`)."""
        session = await self.start(sandbox_id, command, **options)
        async with self.attach(sandbox_id, session.session_id) as attachment:
            async for event in attachment:
                yield event


def _run_body(
    command: str | Sequence[str], envs: Mapping[str, str] | None, cwd: str | None, timeout: int
) -> dict[str, object]:
    """The body of `run` and `run_async`: a string runs through `sh -c`, a sequence as argv (no shell)."""
    if isinstance(command, str):
        body: dict[str, object] = {"cmd": "sh", "args": ["-c", command], "timeout": timeout}
    else:
        argv = list(command)
        if not argv:
            raise ValueError("command must not be empty")
        body = {"cmd": argv[0], "args": argv[1:], "timeout": timeout}
    if envs:
        body["envs"] = dict(envs)
    if cwd:
        body["cwd"] = cwd
    return body
