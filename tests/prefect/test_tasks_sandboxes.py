"""Sandbox tasks against the local server and a real Prefect API: results, tags, run names, events."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.context import get_run_context

from prefect_opencomputer.blocks import OpenComputerCredentials
from prefect_opencomputer.client import Sandbox
from prefect_opencomputer.tasks import (
    CREATED_BY,
    TAG_CREATED_BY,
    TAG_FLOW_RUN,
    TAG_TASK_RUN,
    create_sandbox,
    get_sandbox,
    hibernate_sandbox,
    kill_sandbox,
    list_sandboxes,
    set_sandbox_timeout,
    wake_sandbox,
)


async def test_sandbox_tasks_take_a_sandbox_through_its_life(
    credentials: OpenComputerCredentials, control: Any, records: Any
) -> None:
    @flow
    async def sandbox_life() -> dict[str, Any]:
        flow_run_id = str(get_run_context().flow_run.id)  # type: ignore[union-attr]
        sandbox = await create_sandbox("base", tags={"team": "data"}, credentials=credentials)
        fetched = await get_sandbox(sandbox.sandbox_id, credentials=credentials)
        listed = await list_sandboxes(tags={TAG_FLOW_RUN: flow_run_id}, credentials=credentials)
        await set_sandbox_timeout(sandbox, 900, credentials=credentials)
        hibernated = await hibernate_sandbox(sandbox, credentials=credentials)
        woken = await wake_sandbox(sandbox, credentials=credentials)
        killed = await kill_sandbox(sandbox, credentials=credentials)
        unknown = await kill_sandbox("sb-00000000", credentials=credentials)
        after = await get_sandbox(sandbox, credentials=credentials)
        return {
            "flow_run_id": flow_run_id,
            "sandbox": sandbox,
            "fetched": fetched,
            "listed": listed,
            "hibernated": hibernated,
            "woken": woken,
            "killed": killed,
            "unknown": unknown,
            "after": after,
        }

    state = await sandbox_life(return_state=True)
    out = await state.aresult()
    sandbox: Sandbox = out["sandbox"]

    assert sandbox.sandbox_id.startswith("sb-") and sandbox.template == "base"
    assert sandbox.tags[TAG_FLOW_RUN] == out["flow_run_id"]
    assert sandbox.tags[TAG_CREATED_BY] == CREATED_BY and sandbox.tags[TAG_TASK_RUN]
    assert sandbox.tags["team"] == "data"
    assert out["fetched"].tags == sandbox.tags
    assert [sb.sandbox_id for sb in out["listed"]] == [sandbox.sandbox_id]
    assert out["hibernated"].status == "hibernated" and out["woken"].status == "running"
    assert out["killed"] is True and out["unknown"] is False
    assert out["after"].status == "stopped"
    assert await control.live_sandboxes() == 0

    names = await records.task_run_names(out["flow_run_id"], wait_for=10)
    sid = sandbox.sandbox_id
    for expected in (
        "create-sandbox[base]",
        f"get-sandbox[{sid}]",
        "list-sandboxes",
        f"set-timeout[{sid}]: 900",
        f"hibernate[{sid}]",
        f"wake[{sid}]",
        f"kill[{sid}]",
    ):
        assert expected in names, (expected, names)


async def test_created_and_killed_sandboxes_are_prefect_events(
    credentials: OpenComputerCredentials, control: Any, records: Any
) -> None:
    @flow
    async def create_then_kill() -> str:
        sandbox = await create_sandbox(credentials=credentials)
        await kill_sandbox(sandbox, credentials=credentials)
        return sandbox.sandbox_id

    sandbox_id = await create_then_kill()
    events = await records.events(f"opencomputer.sandbox.{sandbox_id}", wait_for=2)
    assert {event.event for event in events} == {
        "opencomputer.sandbox.created",
        "opencomputer.sandbox.killed",
    }
    created = next(event for event in events if event.event == "opencomputer.sandbox.created")
    assert created.payload["idle_timeout"] == 600
    # Prefect relates the event to the run that emitted it.
    assert any(related.id.startswith("prefect.flow-run.") for related in created.related)


def test_the_coverage_tasks_answer_in_a_def_flow(credentials: OpenComputerCredentials) -> None:
    from prefect_opencomputer.tasks import (
        create_preview_url,
        file_exists,
        open_sandbox,
        rotate_preview_token,
        sandbox_is_running,
        write_file,
    )

    @flow
    def coverage() -> dict[str, Any]:
        with open_sandbox(credentials=credentials) as sandbox:
            write_file(sandbox, "notes/today.txt", "hello", credentials=credentials)
            create_preview_url(sandbox, 8080, credentials=credentials, link_artifact=False)
            token = rotate_preview_token(sandbox, credentials=credentials)
            answers = {
                "running": sandbox_is_running(sandbox, credentials=credentials),
                "file": file_exists(sandbox, "notes/today.txt", credentials=credentials),
                "dir": file_exists(sandbox, "/home/sandbox/notes", credentials=credentials),
                "missing": file_exists(sandbox, "notes/tomorrow.txt", credentials=credentials),
                "token": token,
            }
        answers["after kill"] = sandbox_is_running(sandbox, credentials=credentials)
        return answers

    answers = coverage()
    assert answers["running"] and answers["file"] and answers["dir"] and not answers["missing"]
    assert not answers["after kill"]
    assert answers["token"].get_secret_value() and "**" in repr(answers["token"])
