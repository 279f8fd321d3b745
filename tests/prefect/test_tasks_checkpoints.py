"""Checkpoint, patch, fork, file and preview tasks against the local server."""

from __future__ import annotations

from typing import Any

import pytest
from prefect import flow
from prefect.context import get_run_context

from prefect_opencomputer.blocks import OpenComputerCredentials
from prefect_opencomputer.tasks import (
    TAG_FLOW_RUN,
    PatchFailedError,
    create_checkpoint,
    create_checkpoint_patch,
    create_preview_url,
    delete_checkpoint,
    delete_checkpoint_patch,
    delete_preview_url,
    fork_checkpoint,
    kill_sandbox,
    list_checkpoint_patches,
    list_checkpoints,
    list_preview_urls,
    open_sandbox,
    read_file,
    restore_checkpoint,
    run_command,
    write_file,
)


async def test_checkpoint_patch_and_fork_tasks(
    credentials: OpenComputerCredentials, control: Any, records: Any
) -> None:
    @flow
    async def checkpoint_work() -> dict[str, Any]:
        async with open_sandbox(credentials=credentials) as sandbox:
            size = await write_file(sandbox, "/home/sandbox/state.txt", "v1\n", credentials=credentials)
            checkpoint = await create_checkpoint(sandbox, "v1", credentials=credentials)
            listed = await list_checkpoints(sandbox, credentials=credentials)
            await write_file(sandbox, "state.txt", b"v2\n", credentials=credentials)
            restore = await restore_checkpoint(checkpoint, credentials=credentials)
            restored = await read_file(sandbox, "/home/sandbox/state.txt", credentials=credentials)

            first = await create_checkpoint_patch(
                checkpoint, "echo one >> /home/sandbox/p.txt", credentials=credentials
            )
            second = await create_checkpoint_patch(
                checkpoint, "echo two >> /home/sandbox/p.txt", description="second", credentials=credentials
            )
            patches = await list_checkpoint_patches(checkpoint, credentials=credentials)
            fork = await fork_checkpoint(checkpoint, credentials=credentials)
            seen = await run_command(
                fork, "cat /home/sandbox/state.txt /home/sandbox/p.txt", credentials=credentials
            )
            await kill_sandbox(fork, credentials=credentials)
            removed = await delete_checkpoint_patch(checkpoint, first, credentials=credentials)
            left = await list_checkpoint_patches(checkpoint, credentials=credentials)
            deleted = await delete_checkpoint(checkpoint, credentials=credentials)
            deleted_again = await delete_checkpoint(checkpoint.id, sandbox=sandbox, credentials=credentials)
        return {
            "flow_run_id": str(get_run_context().flow_run.id),  # type: ignore[union-attr]
            "size": size,
            "checkpoint": checkpoint,
            "listed": listed,
            "restore": restore,
            "restored": restored,
            "patches": patches,
            "second": second,
            "fork": fork,
            "seen": seen,
            "removed": removed,
            "left": left,
            "deleted": (deleted, deleted_again),
        }

    out = await checkpoint_work()
    checkpoint = out["checkpoint"]
    assert out["size"] == 3
    assert checkpoint.is_ready and checkpoint.name == "v1"
    assert [cp.id for cp in out["listed"]] == [checkpoint.id]
    assert out["restore"].checkpoint_id == checkpoint.id
    assert out["restored"] == b"v1\n"
    assert [patch.sequence for patch in out["patches"]] == [1, 2]
    assert out["second"].description == "second"
    # The fork starts from the checkpoint, then runs the patches in order.
    assert out["seen"].stdout == "v1\none\ntwo\n"
    assert out["fork"].tags[TAG_FLOW_RUN] == out["flow_run_id"]
    assert out["fork"].from_checkpoint_id == checkpoint.id
    assert out["removed"] is True and [patch.id for patch in out["left"]] == [out["second"].id]
    assert out["deleted"] == (True, False)
    assert await control.live_sandboxes() == 0

    names = await records.task_run_names(out["flow_run_id"], wait_for=17)
    cp = f"cp-{checkpoint.id[:8]}"
    for expected in (
        f"checkpoint[{checkpoint.sandbox_id}]: v1",
        f"fork[{cp}] #1",
        f"patch[{cp}]",
        f"list-patches[{cp}]",
    ):
        assert expected in names, (expected, names)

    source_events = await records.events(f"opencomputer.sandbox.{checkpoint.sandbox_id}", wait_for=3)
    made = next(event for event in source_events if event.event == "opencomputer.checkpoint.created")
    assert made.payload["checkpoint_id"] == checkpoint.id and made.payload["name"] == "v1"
    events = await records.events(f"opencomputer.sandbox.{out['fork'].sandbox_id}", wait_for=3)
    forked = next(event for event in events if event.event == "opencomputer.sandbox.forked")
    assert f"opencomputer.checkpoint.{checkpoint.id}" in {related.id for related in forked.related}
    assert "opencomputer.sandbox.created" not in {event.event for event in events}


async def test_a_failing_patch_fails_the_fork_task_and_leaves_no_fork(
    credentials: OpenComputerCredentials, control: Any
) -> None:
    @flow
    async def fork_with_bad_patch() -> None:
        async with open_sandbox(credentials=credentials) as sandbox:
            checkpoint = await create_checkpoint(sandbox, "base", credentials=credentials)
            await create_checkpoint_patch(checkpoint, "echo broken >&2; exit 3", credentials=credentials)
            await fork_checkpoint(checkpoint, credentials=credentials)

    with pytest.raises(PatchFailedError, match=r"exit|code 3|broken"):
        await fork_with_bad_patch()
    assert await control.live_sandboxes() == 0


async def test_fork_without_patch_check_reports_the_patch_error(
    credentials: OpenComputerCredentials, control: Any
) -> None:
    @flow
    async def fork_and_look() -> str | None:
        async with open_sandbox(credentials=credentials) as sandbox:
            checkpoint = await create_checkpoint(sandbox, "base", credentials=credentials)
            await create_checkpoint_patch(checkpoint, "exit 4", credentials=credentials)
            fork = await fork_checkpoint(checkpoint, check_patches=False, credentials=credentials)
            await kill_sandbox(fork, credentials=credentials)
            return fork.patch_error

    assert "4" in (await fork_and_look() or "")
    assert await control.live_sandboxes() == 0


async def test_preview_url_tasks_and_link_artifact(
    credentials: OpenComputerCredentials, control: Any, records: Any
) -> None:
    @flow
    async def previews() -> dict[str, Any]:
        async with open_sandbox(credentials=credentials) as sandbox:
            first = await create_preview_url(sandbox, 8000, credentials=credentials)
            again = await create_preview_url(sandbox, 8000, link_artifact=False, credentials=credentials)
            listed = await list_preview_urls(sandbox, credentials=credentials)
            deleted = await delete_preview_url(sandbox, 8000, credentials=credentials)
            deleted_again = await delete_preview_url(sandbox, 8000, credentials=credentials)
            after = await list_preview_urls(sandbox, credentials=credentials)
        return {
            "flow_run_id": get_run_context().flow_run.id,  # type: ignore[union-attr]
            "first": first,
            "again": again,
            "listed": listed,
            "deleted": (deleted, deleted_again),
            "after": after,
        }

    out = await previews()
    assert out["first"].id == out["again"].id and out["first"].port == 8000
    assert out["first"].url.startswith("http://") and out["first"].sandbox_id in out["first"].url
    assert [preview.port for preview in out["listed"]] == [8000]
    assert out["deleted"] == (True, False) and out["after"] == []
    links = [
        artifact for artifact in await records.artifacts(out["flow_run_id"]) if artifact.type == "markdown"
    ]
    assert any(out["first"].url in str(artifact.data) for artifact in links), links


def test_a_checkpoint_id_without_its_sandbox_is_refused_with_what_to_pass(
    credentials: OpenComputerCredentials,
) -> None:
    @flow
    def restores_by_id() -> None:
        restore_checkpoint("0b7c9f52-5d0e-4a8e-9d5b-2f1c3e4a5b6c", credentials=credentials)

    with pytest.raises(
        TypeError, match="pass the Checkpoint model a task returned, or the sandbox as sandbox="
    ):
        restores_by_id()


def test_context_managers_take_exactly_what_their_tasks_take() -> None:
    import inspect

    from prefect_opencomputer.tasks import create_sandbox, open_fork

    for scope, task in ((open_sandbox, create_sandbox), (open_fork, fork_checkpoint)):
        assert list(inspect.signature(scope).parameters.values()) == list(
            inspect.signature(task.fn).parameters.values()
        )
    assert "metadata" in inspect.signature(open_fork).parameters
    assert "memory_mb" in inspect.signature(open_fork).parameters
