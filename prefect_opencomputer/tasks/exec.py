"""`run_command`: a command in a sandbox, its output streamed to the run log while it runs; and the
commands running in a sandbox, listed and killed.

The client's `exec.run_async` (and its `result`) has no task: `run_command` already waits for a command's
end without one long request, logging its output as it comes, and a task that started a command and
returned would leave it running where no cleanup layer counts it. Start a background process with
`run_command(sandbox, "nohup ... &")`, find it with `list_commands`, stop it with `kill_command`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any, cast

from prefect import Task, get_run_logger
from prefect.client.schemas.objects import State, TaskRun

from prefect_opencomputer.blocks.credentials import OpenComputerCredentials
from prefect_opencomputer.client import (
    CommandResult,
    CommandTimedOutError,
    ExecExit,
    ExecOutput,
    ExecScrollbackEnd,
    ExecSession,
    OpenComputerClient,
    OpenComputerError,
    TransportError,
)
from prefect_opencomputer.tasks import run_report
from prefect_opencomputer.tasks.errors import CommandFailedError
from prefect_opencomputer.tasks.factory import opencomputer_task, resolve_credentials, service_client
from prefect_opencomputer.tasks.leakproof import finish_despite_cancellation
from prefect_opencomputer.tasks.output import CommandOutput, OutputLimits
from prefect_opencomputer.tasks.references import SandboxRef, sandbox_id_of
from prefect_opencomputer.tasks.retries import (
    failure_of,
    is_transient,
    retry_if_replayable,
    retry_if_transient,
)
from prefect_opencomputer.tasks.run_names import RunName, on_sandbox, short_command

TIMED_OUT_SUFFIX = "\nProcess timed out"
# If this process dies (SIGKILL, lost machine) the service kills the command this long after we detach.
DETACHED_GRACE_SECONDS = 60
_REATTACH_ATTEMPTS = 5


def _command_run_name(parameters: dict[str, Any]) -> str:
    return f"run[{sandbox_id_of(parameters['sandbox'])}]: {short_command(parameters['command'])}"


def retry_failed_commands(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """What `run_command.with_options(retries=N)` retries: a command that failed or timed out (it runs
    again), and the transient failures the preset retries cover."""
    failure = failure_of(state)
    if failure is None:
        return False
    return isinstance(failure, CommandFailedError | CommandTimedOutError) or is_transient(failure)


@opencomputer_task(
    "run_command",
    run_name=cast(RunName, _command_run_name),
    # The preset retries never run a command twice; a caller's own `retries=` does.
    retry_condition=retry_if_transient,
    rerun_condition=retry_failed_commands,
)
async def run_command(
    sandbox: SandboxRef,
    command: str | Sequence[str],
    *,
    credentials: OpenComputerCredentials | None = None,
    envs: dict[str, str] | None = None,
    cwd: str | None = None,
    timeout: int | None = None,
    check: bool = True,
    stream_output: bool = True,
    limits: OutputLimits | None = None,
) -> CommandResult:
    """Run a command in the sandbox, logging its output lines while it runs, and return its result.

    The command runs as an exec session, which ends when its own process exits, as on the hosted service
    (the one-shot `client.exec.run` instead waits until every process holding its output has closed it).
    Start a background server with `nohup server >server.log 2>&1 &`, so it holds none of the command's
    output and runs on after the session, on either path.

    If the task is cancelled or times out, the remote process is killed. To run a failing command again,
    give the task retries: `run_command.with_options(retries=2)(sandbox, "make test")` retries a non-zero
    exit or a timeout (the preset retries only cover requests the service refused).

    Args:
        command: A string runs through `sh -c`; a sequence runs as argv.
        envs: Environment variables for this command, over the sandbox's.
        cwd: Working directory (default: the sandbox user's home).
        timeout: Seconds after which the service kills the command.
        check: Raise `CommandFailedError` on a non-zero exit and `CommandTimedOutError` on a timeout.
        stream_output: Log output lines while the command runs (bounded by `limits`).
        limits: How much output reaches the log and the result.

    Returns:
        The exit code and output; each stream keeps its last `limits.max_result_bytes`.

    Raises:
        CommandFailedError: The command exited non-zero (with `check`); it carries the tail of both streams.
        CommandTimedOutError: The command ran out of `timeout` (with `check`).

    Example:
        ```python
        result = run_command(sandbox, "python -c 'print(6 * 7)'")
        assert result.stdout.strip() == "42"
        run_command(sandbox, "nohup python -m http.server 8000 >http.log 2>&1 &")  # returns at once
        ```
    """
    credentials = await resolve_credentials(credentials)
    sandbox_id = sandbox_id_of(sandbox)
    argv = ["sh", "-c", command] if isinstance(command, str) else list(command)
    if not argv:
        raise ValueError("command must not be empty")
    label = short_command(command, limit=200)
    logger = get_run_logger()
    output = CommandOutput(logger if stream_output else None, limits)
    started = time.monotonic()
    async with credentials.get_client() as client:
        session = await client.exec.start(
            sandbox_id,
            argv[0],
            args=argv[1:],
            envs=envs,
            cwd=cwd,
            timeout=timeout,
            max_run_after_disconnect=DETACHED_GRACE_SECONDS,
        )
        finished = False
        try:
            exit_code = await _follow(client, sandbox_id, session.session_id, output)
            finished = True
        except OpenComputerError as exc:
            # The command has started: a task retry would run it twice, so this error must not look
            # transient.
            raise OpenComputerError(f"lost the output of {label!r} in {sandbox_id}: {exc}") from exc
        finally:
            if not finished:
                await finish_despite_cancellation(
                    _kill_session(client, sandbox_id, session.session_id), timeout=15.0
                )
                logger.warning(
                    "Killed %r in %s: the task stopped before the command ended", label, sandbox_id
                )
    output.finish()
    elapsed = time.monotonic() - started
    stderr = output.text("stderr")
    if (
        timeout is not None
        and exit_code == -1
        and elapsed >= timeout - 0.5
        and not stderr.endswith(TIMED_OUT_SUFFIX)
    ):
        stderr += TIMED_OUT_SUFFIX
    result = CommandResult(exit_code=exit_code, stdout=output.text("stdout"), stderr=stderr)
    outcome = "timed out" if result.timed_out else f"exit {exit_code}"
    run_report.record("command", sandbox_id, short_command(command), f"{outcome} ({elapsed:.1f} s)")
    logger.info("%r in %s: %s after %.1f s", label, sandbox_id, outcome, elapsed)
    if check and result.timed_out:
        raise CommandTimedOutError(f"command {label!r} in {sandbox_id} timed out after {timeout} s")
    if check and not result.ok:
        raise CommandFailedError(sandbox_id, label, result)
    return result


async def _follow(client: OpenComputerClient, sandbox_id: str, session_id: str, output: CommandOutput) -> int:
    """Stream the session's output into `output` until it exits; reattach if the socket drops."""
    seen = {"stdout": 0, "stderr": 0}
    for attempt in range(_REATTACH_ATTEMPTS + 1):
        replayed = {"stdout": 0, "stderr": 0}
        live = False
        try:
            async for event in client.exec.attach(sandbox_id, session_id):
                if isinstance(event, ExecOutput):
                    data = event.data
                    if not live:
                        # A reattach replays the scrollback: skip what we already have.
                        skip = seen[event.stream] - replayed[event.stream]
                        replayed[event.stream] += len(data)
                        if skip >= len(data):
                            continue
                        data = data[max(skip, 0) :]
                    seen[event.stream] += len(data)
                    output.feed(event.stream, data)
                elif isinstance(event, ExecScrollbackEnd):
                    live = True
                elif isinstance(event, ExecExit) and event.exit_code != -1:
                    return event.exit_code
        except TransportError:
            if attempt == _REATTACH_ATTEMPTS:
                raise
        # The socket closed without an exit code (or said -1): ask the session list what happened.
        state = next((s for s in await client.exec.list(sandbox_id) if s.session_id == session_id), None)
        if state is None or not state.running:
            return -1 if state is None or state.exit_code is None else state.exit_code
        await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
    raise OpenComputerError(f"lost the output stream of exec session {session_id} in {sandbox_id}")


async def _kill_session(client: OpenComputerClient, sandbox_id: str, session_id: str) -> None:
    # Already exited, or the sandbox is gone: either way nothing is left running.
    with contextlib.suppress(OpenComputerError):
        await client.exec.kill(sandbox_id, session_id)


@opencomputer_task("list_commands", run_name=on_sandbox("list-commands"), retry_condition=retry_if_replayable)
async def list_commands(
    sandbox: SandboxRef, *, credentials: OpenComputerCredentials | None = None
) -> list[ExecSession]:
    """The sandbox's exec sessions: commands running in it, and those that exited recently.

    Returns:
        Its sessions (id, command, arguments, whether running, exit code), in no particular order.

    Example:
        ```python
        running = [session for session in list_commands(sandbox) if session.running]
        ```
    """
    async with service_client(credentials) as client:
        return await client.exec.list(sandbox_id_of(sandbox))


@opencomputer_task(
    "kill_command", run_name=on_sandbox("kill-command", "session_id"), retry_condition=retry_if_replayable
)
async def kill_command(
    sandbox: SandboxRef,
    session_id: str,
    *,
    signal: int = 9,
    credentials: OpenComputerCredentials | None = None,
) -> None:
    """Send a signal to a command's process in the sandbox (default: SIGKILL).

    Args:
        session_id: The command's exec session, as `list_commands` shows it.
        signal: The signal number (15 asks the process to end, 9 ends it).

    Returns:
        None.

    Raises:
        NotFoundError: There is no such session.

    Example:
        ```python
        for session in list_commands(sandbox):
            if session.running and session.command == "sleep":
                kill_command(sandbox, session.session_id)
        ```
    """
    async with service_client(credentials) as client:
        await client.exec.kill(sandbox_id_of(sandbox), session_id, signal)


arun_command = run_command.aio
alist_commands = list_commands.aio
akill_command = kill_command.aio
