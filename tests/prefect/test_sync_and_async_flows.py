"""Every task works in `def` flows (values) and in `async def` flows (awaitables), with typed results."""

from __future__ import annotations

from typing import Any

import pytest
from prefect import flow
from prefect.context import get_run_context

from prefect_opencomputer.blocks import OpenComputerCredentials
from prefect_opencomputer.client import Checkpoint, CommandResult, Sandbox
from prefect_opencomputer.tasks import (
    acreate_checkpoint,
    acreate_sandbox,
    afork_checkpoint,
    akill_sandbox,
    arun_command,
    create_checkpoint,
    create_sandbox,
    fork_checkpoint,
    kill_sandbox,
    open_fork,
    open_sandbox,
    publish_run_report,
    run_command,
)
from tests.waiting import until


def test_a_def_flow_gets_values_from_every_step(control: Any, sync_live_sandboxes: Any) -> None:
    @flow
    def sync_lifecycle() -> dict[str, Any]:
        sandbox = create_sandbox()
        result = run_command(sandbox, "echo made > ~/made.txt && echo ok")
        checkpoint = create_checkpoint(sandbox, "sync")
        fork = fork_checkpoint(checkpoint)
        seen = run_command(fork, "cat ~/made.txt")
        killed = [kill_sandbox(fork), kill_sandbox(sandbox)]
        with open_sandbox() as scoped:
            scoped_result = run_command(scoped, "echo scoped")
        return {
            "sandbox": sandbox,
            "result": result,
            "checkpoint": checkpoint,
            "fork": fork,
            "seen": seen,
            "killed": killed,
            "scoped": scoped,
            "scoped_result": scoped_result,
            "flow_run_id": get_run_context().flow_run.id,  # type: ignore[union-attr]
        }

    out = sync_lifecycle()

    assert isinstance(out["sandbox"], Sandbox) and isinstance(out["fork"], Sandbox)
    assert isinstance(out["result"], CommandResult) and out["result"].stdout == "ok\n"
    assert isinstance(out["checkpoint"], Checkpoint) and out["checkpoint"].status == "ready"
    assert out["seen"].stdout == "made\n"
    assert out["killed"] == [True, True]
    assert out["scoped_result"].stdout == "scoped\n"
    assert out["scoped"].sandbox_id not in {out["sandbox"].sandbox_id, out["fork"].sandbox_id}
    assert sync_live_sandboxes() == 0


async def test_sync_flow_task_runs_are_recorded(control: Any, records: Any) -> None:
    @flow
    def two_steps() -> Any:
        with open_sandbox() as sandbox:
            run_command(sandbox, "true")
        return get_run_context().flow_run.id  # type: ignore[union-attr]

    flow_run_id = two_steps()

    names = await records.task_run_names(flow_run_id, wait_for=2)
    assert any(name.startswith("create-sandbox[base]") for name in names)
    assert any(name.endswith(": true") and name.startswith("run[") for name in names)
    assert await control.live_sandboxes() == 0


async def test_an_async_def_flow_awaits_both_spellings(control: Any) -> None:
    @flow
    async def async_lifecycle() -> dict[str, Any]:
        sandbox = await acreate_sandbox()
        result = await run_command(sandbox, "echo made > ~/made.txt && echo ok")  # dispatches to the twin
        checkpoint = await acreate_checkpoint(sandbox, "async")
        fork = await fork_checkpoint(checkpoint)
        seen = await arun_command(fork, "cat ~/made.txt")
        killed = [await akill_sandbox(fork), await kill_sandbox(sandbox)]
        async with open_fork(checkpoint) as scoped:
            scoped_result = await arun_command(scoped, "cat ~/made.txt")
        return {
            "sandbox": sandbox,
            "result": result,
            "checkpoint": checkpoint,
            "fork": fork,
            "seen": seen,
            "killed": killed,
            "scoped_result": scoped_result,
        }

    out = await async_lifecycle()

    assert isinstance(out["sandbox"], Sandbox) and isinstance(out["fork"], Sandbox)
    assert isinstance(out["result"], CommandResult) and out["result"].stdout == "ok\n"
    assert isinstance(out["checkpoint"], Checkpoint)
    assert out["seen"].stdout == "made\n" and out["scoped_result"].stdout == "made\n"
    assert out["killed"] == [True, True]
    assert await control.live_sandboxes() == 0


def test_map_over_sandboxes_needs_no_unmapped(control: Any, credentials: OpenComputerCredentials) -> None:
    @flow
    def fan_out() -> list[str]:
        sandboxes = [create_sandbox(), create_sandbox()]
        try:
            defaults = run_command.map(sandboxes, "hostname")
            explicit = run_command.map(sandboxes, "echo hi", credentials=credentials)
            return [r.stdout for r in defaults.result()] + [r.stdout for r in explicit.result()]
        finally:
            for sandbox in sandboxes:
                kill_sandbox(sandbox)

    outputs = fan_out()

    assert len(outputs) == 4
    assert outputs[2:] == ["hi\n", "hi\n"]


async def test_async_map_over_forks(control: Any) -> None:
    @flow
    async def forks() -> list[str]:
        sandbox = await acreate_sandbox()
        checkpoint = await acreate_checkpoint(sandbox, "map")
        children = afork_checkpoint.map([checkpoint, checkpoint]).result()
        try:
            return [result.stdout for result in arun_command.map(children, "echo fork").result()]
        finally:
            for child in [*children, sandbox]:
                await akill_sandbox(child)

    assert await forks() == ["fork\n", "fork\n"]
    assert await control.live_sandboxes() == 0


def test_open_sandbox_kills_in_a_def_flow_on_error(control: Any, sync_live_sandboxes: Any) -> None:
    @flow
    def fails() -> None:
        with open_sandbox():
            assert sync_live_sandboxes() == 1
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fails()
    assert sync_live_sandboxes() == 0


async def test_forks_of_one_checkpoint_have_distinct_task_run_names(control: Any, records: Any) -> None:
    @flow
    async def three_forks() -> Any:
        async with open_sandbox() as sandbox:
            checkpoint = await acreate_checkpoint(sandbox, "named")
            for _ in range(3):
                async with open_fork(checkpoint):
                    pass
        return get_run_context().flow_run.id  # type: ignore[union-attr]

    flow_run_id = await three_forks()

    forks: list[str] = []

    async def three_recorded() -> bool:
        # Task runs are recorded asynchronously, and not necessarily in the order they ran.
        names = await records.task_run_names(flow_run_id)
        forks[:] = sorted(name for name in names if name.startswith("fork["))
        return len(forks) >= 3

    await until(three_recorded, what="the three forks' task runs to be recorded")
    assert len(forks) == 3 and len(set(forks)) == 3
    assert [name.rsplit(" ", 1)[-1] for name in forks] == ["#1", "#2", "#3"]


async def test_a_kill_at_the_end_of_a_with_block_is_an_event_of_the_run(control: Any, records: Any) -> None:
    @flow
    def scoped() -> tuple[Any, str]:
        with open_sandbox() as sandbox:
            pass
        publish_run_report(key="scoped-run")  # the sync spelling, in a def flow
        return get_run_context().flow_run.id, sandbox.sandbox_id  # type: ignore[union-attr]

    flow_run_id, sandbox_id = scoped()

    events = await records.events(f"opencomputer.sandbox.{sandbox_id}", wait_for=2)
    killed = next(event for event in events if event.event == "opencomputer.sandbox.killed")
    assert f"prefect.flow-run.{flow_run_id}" in {related.id for related in killed.related}
    (artifact,) = [a for a in await records.artifacts(flow_run_id) if a.key == "scoped-run"]
    assert "kill" in str(artifact.data)
