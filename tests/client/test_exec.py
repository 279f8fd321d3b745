"""Commands: synchronous runs, background sessions and their WebSocket stream."""

from __future__ import annotations

import asyncio

import pytest

from prefect_opencomputer.client import (
    ExecEvent,
    ExecExit,
    ExecOutput,
    ExecScrollbackEnd,
    NotFoundError,
    OpenComputerClient,
)


def _output(events: list[ExecEvent], stream: str) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, ExecOutput) and e.stream == stream)


async def test_string_command_runs_through_the_shell(oc: OpenComputerClient, sandbox: str) -> None:
    result = await oc.exec.run(sandbox, "echo out; echo err >&2; exit 3")

    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert not result.ok and not result.timed_out


async def test_sequence_command_runs_as_argv_without_a_shell(oc: OpenComputerClient, sandbox: str) -> None:
    result = await oc.exec.run(sandbox, ["echo", "$HOME", "a b"])

    assert result.ok and result.stdout == "$HOME a b\n"


async def test_env_and_cwd_apply_to_the_command(oc: OpenComputerClient, sandbox: str) -> None:
    await oc.files.mkdir(sandbox, "/home/sandbox/work")

    result = await oc.exec.run(sandbox, "echo $NAME; pwd", envs={"NAME": "prefect"}, cwd="/home/sandbox/work")

    assert result.stdout == "prefect\n/home/sandbox/work\n"


async def test_command_timeout_is_a_result_not_an_error(oc: OpenComputerClient, sandbox: str) -> None:
    result = await oc.exec.run(sandbox, "echo started; sleep 30", timeout=1)

    assert result.timed_out and result.exit_code == -1
    assert result.stdout == "started\n"


async def test_run_in_unknown_sandbox_is_not_found(oc: OpenComputerClient) -> None:
    with pytest.raises(NotFoundError):
        await oc.exec.run("sb-00000000", "true")


async def test_stream_yields_output_while_the_command_runs(oc: OpenComputerClient, sandbox: str) -> None:
    loop = asyncio.get_running_loop()
    arrivals: list[tuple[float, ExecEvent]] = []
    async for event in oc.exec.stream(
        sandbox, "sh", args=["-c", "echo one; sleep 1; echo two >&2; sleep 1; exit 4"]
    ):
        arrivals.append((loop.time(), event))
    events = [event for _, event in arrivals]

    assert _output(events, "stdout") == b"one\n" and _output(events, "stderr") == b"two\n"
    assert events[-1] == ExecExit(4)
    first_output = next(t for t, e in arrivals if isinstance(e, ExecOutput))
    assert arrivals[-1][0] - first_output >= 1.5  # output arrived before the command finished


async def test_attach_replays_scrollback_then_streams_live(oc: OpenComputerClient, sandbox: str) -> None:
    session = await oc.exec.start(sandbox, "sh", args=["-c", "echo early; read go; echo late"])
    async with oc.exec.attach(sandbox, session.session_id) as first:
        async for event in first:  # until "early" is in the scrollback
            if isinstance(event, ExecOutput) and b"early" in event.data:
                break

    async with oc.exec.attach(sandbox, session.session_id) as attachment:
        await attachment.send_stdin("go\n")
        events = [event async for event in attachment]

    end_of_replay = events.index(ExecScrollbackEnd())
    assert _output(events[:end_of_replay], "stdout") == b"early\n"
    assert _output(events[end_of_replay:], "stdout") == b"late\n"
    assert events[-1] == ExecExit(0)


async def test_attached_session_receives_stdin(oc: OpenComputerClient, sandbox: str) -> None:
    session = await oc.exec.start(sandbox, "sh", args=["-c", "read line; echo got:$line"])

    async with oc.exec.attach(sandbox, session.session_id) as attachment:
        await attachment.send_stdin("hello\n")
        events = [event async for event in attachment]

    assert _output(events, "stdout") == b"got:hello\n"
    assert attachment.exit_code == 0


async def test_sessions_are_listed_and_killed(oc: OpenComputerClient, sandbox: str) -> None:
    session = await oc.exec.start(sandbox, "sleep", args=["300"])
    assert session.running and session.command == "sleep"

    listed = {s.session_id: s for s in await oc.exec.list(sandbox)}
    assert listed[session.session_id].running

    await oc.exec.kill(sandbox, session.session_id)
    events = [event async for event in oc.exec.attach(sandbox, session.session_id)]

    exit_event = events[-1]
    assert isinstance(exit_event, ExecExit) and exit_event.exit_code != 0
    after = {s.session_id: s for s in await oc.exec.list(sandbox)}
    assert not after[session.session_id].running


async def test_attach_to_unknown_session_is_not_found(oc: OpenComputerClient, sandbox: str) -> None:
    with pytest.raises(NotFoundError):
        async for _ in oc.exec.attach(sandbox, "deadbeef"):
            pass


@pytest.mark.slow
async def test_long_run_survives_the_keepalive_spaces_before_its_result(
    oc: OpenComputerClient, sandbox: str
) -> None:
    # Past 15 s the service has sent 200 headers and a keepalive space; the JSON comes after.
    result = await oc.exec.run(sandbox, "sleep 16; echo finished", timeout=60)

    assert result.ok and result.stdout == "finished\n"


async def test_run_async_returns_a_fast_result_inline_and_a_slow_one_by_exec_id(
    oc: OpenComputerClient, sandbox: str
) -> None:
    quick = await oc.exec.run_async(sandbox, "echo now")
    assert quick.exec_id is None and not quick.running
    assert (quick.exit_code, quick.stdout) == (0, "now\n")

    slow = await oc.exec.run_async(sandbox, ["sh", "-c", "sleep 1; echo later; exit 4"])
    assert slow.running and slow.exec_id is not None and slow.started_at is not None
    result = await oc.exec.result(sandbox, slow.exec_id)
    while result.running:
        result = await oc.exec.result(sandbox, slow.exec_id)
    assert (result.exit_code, result.stdout, result.truncated, result.error) == (4, "later\n", False, None)


async def test_result_of_an_unknown_exec_is_not_found(oc: OpenComputerClient, sandbox: str) -> None:
    with pytest.raises(NotFoundError):
        await oc.exec.result(sandbox, "00000000")
