"""`run_command`: streamed output in the run log, bounded logging, failures, timeouts, remote kill."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
from prefect import flow
from prefect.context import get_run_context

from prefect_opencomputer.blocks import OpenComputerCredentials
from prefect_opencomputer.client import CommandTimedOutError, OpenComputerClient
from prefect_opencomputer.tasks import (
    CommandFailedError,
    OutputLimits,
    create_sandbox,
    open_sandbox,
    run_command,
)


async def test_output_of_a_long_command_is_in_the_run_log_before_it_ends(
    credentials: OpenComputerCredentials, control: Any, records: Any
) -> None:
    flow_run_ids: list[Any] = []

    @flow
    async def slow_command() -> str:
        flow_run_ids.append(get_run_context().flow_run.id)  # type: ignore[union-attr]
        async with open_sandbox(credentials=credentials) as sandbox:
            result = await run_command(
                sandbox, "echo first-line-marker; sleep 12; echo last-line", credentials=credentials
            )
        return result.stdout

    running = asyncio.ensure_future(slow_command())
    seen_at = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not running.done():
        if flow_run_ids and any("first-line-marker" in line for line in await records.logs(flow_run_ids[0])):
            seen_at = time.monotonic()
            break
        await asyncio.sleep(0.2)
    assert seen_at is not None, "the first line never reached the Prefect API while the command ran"
    assert not running.done(), "the command had already ended"
    assert await running == "first-line-marker\nlast-line\n"
    assert "last-line" in await records.wait_for_log(flow_run_ids[0], "last-line")


async def test_argv_env_and_cwd_reach_the_command(credentials: OpenComputerCredentials, control: Any) -> None:
    @flow
    async def shapes() -> tuple[str, str]:
        async with open_sandbox(credentials=credentials) as sandbox:
            argv = await run_command(sandbox, ["printf", "%s|", "a b", "$HOME"], credentials=credentials)
            shell = await run_command(
                sandbox, "echo $GREETING $(pwd)", envs={"GREETING": "hi"}, cwd="/tmp", credentials=credentials
            )
        return argv.stdout, shell.stdout

    assert await shapes() == ("a b|$HOME|", "hi /tmp\n")


async def test_non_zero_exit_raises_unless_check_is_off(
    credentials: OpenComputerCredentials, control: Any
) -> None:
    @flow
    async def failing(check: bool) -> Any:
        async with open_sandbox(credentials=credentials) as sandbox:
            return await run_command(
                sandbox, "echo out; echo oops >&2; exit 7", check=check, credentials=credentials
            )

    with pytest.raises(CommandFailedError, match="exited with code 7") as caught:
        await failing(True)
    assert caught.value.result.stdout == "out\n"
    # Both streams' tails, in the error and its message: that is where the reason is.
    assert (caught.value.stderr_tail, caught.value.stdout_tail) == ("oops", "out")
    assert "stderr:\noops" in str(caught.value) and "stdout:\nout" in str(caught.value)
    result = await failing(False)
    assert (result.exit_code, result.stdout, result.stderr) == (7, "out\n", "oops\n")
    assert await control.live_sandboxes() == 0


async def test_command_timeout_is_a_result_or_an_error(
    credentials: OpenComputerCredentials, control: Any
) -> None:
    @flow
    async def too_slow(check: bool) -> Any:
        async with open_sandbox(credentials=credentials) as sandbox:
            return await run_command(
                sandbox, "echo started; sleep 30", timeout=1, check=check, credentials=credentials
            )

    started = time.monotonic()
    with pytest.raises(CommandTimedOutError):
        await too_slow(True)
    result = await too_slow(False)
    assert result.timed_out and result.exit_code == -1 and result.stdout == "started\n"
    assert time.monotonic() - started < 20
    assert await control.live_sandboxes() == 0


async def test_task_timeout_kills_the_remote_process(
    credentials: OpenComputerCredentials, control: Any, oc: OpenComputerClient
) -> None:
    @flow
    async def task_times_out() -> str:
        sandbox = await create_sandbox(credentials=credentials)
        with contextlib.suppress(TimeoutError):
            await run_command.with_options(timeout_seconds=2)(sandbox, "sleep 60", credentials=credentials)
        return sandbox.sandbox_id

    started = time.monotonic()
    sandbox_id = await task_times_out()
    assert time.monotonic() - started < 30
    try:
        sessions = await oc.exec.list(sandbox_id)
        assert sessions and not any(session.running for session in sessions)
        processes = await oc.exec.run(sandbox_id, "ps -eo args")
        assert "sleep 60" not in processes.stdout
    finally:
        await oc.sandboxes.kill(sandbox_id)


async def test_task_timeout_inside_open_sandbox_leaves_no_sandbox(
    credentials: OpenComputerCredentials, control: Any
) -> None:
    @flow
    async def task_times_out() -> None:
        async with open_sandbox(credentials=credentials) as sandbox:
            await run_command.with_options(timeout_seconds=2)(sandbox, "sleep 60", credentials=credentials)

    state = await task_times_out(return_state=True)
    assert state.is_failed()
    assert await control.live_sandboxes() == 0


async def test_a_loud_command_cannot_flood_the_run_log(
    credentials: OpenComputerCredentials, control: Any, records: Any
) -> None:
    limits = OutputLimits(max_lines=50, burst_lines=20, lines_per_second=10, max_result_bytes=4096)

    @flow
    async def loud() -> tuple[Any, Any]:
        async with open_sandbox(credentials=credentials) as sandbox:
            result = await run_command(
                sandbox, "seq 1 200000 | sed 's/^/line-/'", limits=limits, credentials=credentials
            )
        return get_run_context().flow_run.id, result  # type: ignore[union-attr]

    flow_run_id, result = await loud()
    assert result.stdout.endswith("line-200000\n") and len(result.stdout) <= 4096
    logs = await records.wait_for_log(flow_run_id, "not logged")
    output_lines = [line for line in logs if line.startswith("line-")]
    assert 0 < len(output_lines) <= 50
    assert any("not logged" in line for line in logs)


async def test_a_failing_command_fails_the_flow_with_its_exit_code_and_leaves_no_sandbox(
    credentials: OpenComputerCredentials, control: Any
) -> None:
    @flow
    async def failing_in_block() -> None:
        async with open_sandbox(credentials=credentials) as sandbox:
            await run_command(sandbox, "exit 1", credentials=credentials)

    state = await failing_in_block(return_state=True)
    assert state.is_failed() and "exited with code 1" in (state.message or "")
    assert await control.live_sandboxes() == 0


# Fails on its first run, succeeds on the second: a retry is visible in its result.
FAILS_ONCE = "if [ -f ~/ran-once ]; then echo second; else touch ~/ran-once; echo first >&2; exit 1; fi"


async def test_preset_retries_never_run_a_failing_command_twice(control: Any) -> None:
    @flow
    async def once() -> str:
        async with open_sandbox() as sandbox:
            with pytest.raises(CommandFailedError):
                await run_command(sandbox, FAILS_ONCE)
            return (await run_command(sandbox, "ls ~/ran-once && echo still-there")).stdout

    assert "still-there" in await once()


@pytest.mark.parametrize(
    "options", [{"retries": 2}, {"retries": 1, "retry_condition_fn": None}], ids=["retries", "no-condition"]
)
async def test_with_options_retries_rerun_a_failing_command(control: Any, options: dict[str, Any]) -> None:
    @flow
    async def retried() -> str:
        async with open_sandbox() as sandbox:
            result = await run_command.with_options(retry_delay_seconds=0, **options)(sandbox, FAILS_ONCE)
            return result.stdout

    assert await retried() == "second\n"


def test_with_options_retries_rerun_a_failing_command_in_a_def_flow(control: Any) -> None:
    @flow
    def retried() -> str:
        with open_sandbox() as sandbox:
            return run_command.with_options(retries=1, retry_delay_seconds=0)(sandbox, FAILS_ONCE).stdout

    assert retried() == "second\n"


async def test_a_loud_commands_last_lines_reach_the_log(control: Any, records: Any) -> None:
    limits = OutputLimits(burst_lines=5, lines_per_second=1.0, tail_lines=3)

    @flow
    async def loud() -> Any:
        async with open_sandbox() as sandbox:
            await run_command(sandbox, "seq 1 500; echo the-real-failure >&2", limits=limits, check=False)
        return get_run_context().flow_run.id  # type: ignore[union-attr]

    flow_run_id = await loud()

    logs = await records.wait_for_log(flow_run_id, "the-real-failure")
    assert "[stderr] the-real-failure" in logs
    assert "500" in logs and "250" not in logs


def test_task_timeout_kills_the_remote_process_in_a_def_flow(control: Any) -> None:
    @flow
    def task_times_out() -> list[Any]:
        with open_sandbox() as sandbox:
            with contextlib.suppress(TimeoutError):
                run_command.with_options(timeout_seconds=2)(sandbox, "sleep 60")
            return [s for s in list_sessions(sandbox) if "sleep 60" in " ".join([s.command, *s.args])]

    (session,) = task_times_out()
    # Killed, not run to its end (which would have exited 0).
    assert not session.running and session.exit_code != 0


def list_sessions(sandbox: Any) -> list[Any]:
    from prefect_opencomputer.blocks import OpenComputerCredentials

    with OpenComputerCredentials().get_sync_client() as client:
        sessions: list[Any] = client.exec.list(sandbox.sandbox_id)
        return sessions
