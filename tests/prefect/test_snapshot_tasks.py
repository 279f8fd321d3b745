"""Images and snapshots in flows: build logs in the run log, snapshot tasks, a golden flow on a snapshot."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.context import get_run_context

from prefect_opencomputer.blocks import OpenComputerCredentials
from prefect_opencomputer.client import BuildFailedError, Image, OpenComputerClient, Sandbox, Snapshot
from prefect_opencomputer.flows import GoldenCheckpointParameters, rebuild_golden_checkpoint
from prefect_opencomputer.tasks import (
    TAG_FLOW_RUN,
    create_sandbox,
    create_snapshot,
    delete_snapshot,
    get_snapshot,
    kill_sandbox,
    list_snapshots,
    open_sandbox,
    run_command,
)

# Every test here builds at least one image in a builder sandbox.
pytestmark = pytest.mark.slow


def unique_image() -> Image:
    return Image.base().run_commands(f"echo build {uuid.uuid4().hex}")


async def test_create_sandbox_from_an_image_logs_the_build_and_tags_the_sandbox(
    credentials: OpenComputerCredentials, control: Any, records: Any
) -> None:
    image = unique_image().env({"STAGE": "image"}).run_commands("echo compiling the image")

    @flow
    async def from_image() -> tuple[str, Sandbox, str]:
        flow_run_id = str(get_run_context().flow_run.id)  # type: ignore[union-attr]
        sandbox = await create_sandbox(image=image, credentials=credentials)
        # As hosted, an image's env reaches login shells (and sudo), not a plain command.
        output = await run_command(sandbox, "bash -lc 'echo $STAGE'", credentials=credentials)
        await kill_sandbox(sandbox, credentials=credentials)
        return flow_run_id, sandbox, output.stdout

    flow_run_id, sandbox, stdout = await from_image()

    assert stdout == "image\n"
    assert sandbox.tags[TAG_FLOW_RUN] == flow_run_id and sandbox.from_checkpoint_id
    logs = await records.logs(flow_run_id)
    assert "[build 3 run] compiling the image" in logs
    assert any(line.startswith("[build 0 create] Creating sandbox from image") for line in logs)
    names = await records.task_run_names(flow_run_id, wait_for=3)
    assert f"create-sandbox[image {image.cache_key()[:12]}]" in names
    assert await control.live_sandboxes() == 0


async def test_a_failing_build_fails_the_task_with_its_step_and_output_and_leaves_no_sandbox(
    credentials: OpenComputerCredentials, control: Any, records: Any
) -> None:
    image = unique_image().run_commands("echo 'fatal: no such package' >&2; exit 4")

    @flow
    async def broken_image() -> Sandbox:
        return await create_sandbox(image=image, credentials=credentials)

    state = await broken_image(return_state=True)

    assert state.is_failed()
    with pytest.raises(BuildFailedError) as caught:
        await state.aresult()
    assert "step 2 (run: " in str(caught.value) and "exited with code 4" in str(caught.value)
    assert "fatal: no such package" in str(caught.value)
    assert "[build 2 run] fatal: no such package" in await records.logs(state.state_details.flow_run_id)
    assert await control.live_sandboxes() == 0


async def test_snapshot_tasks_build_list_start_and_delete(
    credentials: OpenComputerCredentials, control: Any, oc: OpenComputerClient
) -> None:
    name = f"snap-{uuid.uuid4().hex[:8]}"
    image = unique_image().add_file("/home/sandbox/greeting.txt", "from the snapshot")

    @flow
    async def snapshot_life() -> dict[str, Any]:
        snapshot = await create_snapshot(name, image, credentials=credentials)
        again = await create_snapshot(name, image, exist_ok=True, credentials=credentials)
        listed = await list_snapshots(credentials=credentials)
        fetched = await get_snapshot(name, credentials=credentials)
        sandbox = await create_sandbox(snapshot=name, credentials=credentials)
        greeting = await run_command(sandbox, "cat greeting.txt", credentials=credentials)
        await kill_sandbox(sandbox, credentials=credentials)
        async with open_sandbox(snapshot=name, credentials=credentials) as scoped:
            scoped_greeting = await run_command(scoped, "cat greeting.txt", credentials=credentials)
        return {
            "scoped_greeting": scoped_greeting.stdout,
            "snapshot": snapshot,
            "again": again,
            "listed": listed,
            "fetched": fetched,
            "greeting": greeting.stdout,
            "deleted": await delete_snapshot(name, credentials=credentials),
            "deleted_again": await delete_snapshot(name, credentials=credentials),
        }

    out = await snapshot_life()

    snapshot: Snapshot = out["snapshot"]
    assert snapshot.name == name and snapshot.is_ready and snapshot.content_hash == image.cache_key()
    assert out["again"].id == snapshot.id
    assert name in {listed.name for listed in out["listed"]}
    assert out["fetched"].id == snapshot.id and out["fetched"].is_ready
    assert out["greeting"] == out["scoped_greeting"] == "from the snapshot"
    assert out["deleted"] is True and out["deleted_again"] is False
    assert name not in {listed.name for listed in await oc.snapshots.list()}
    assert await control.live_sandboxes() == 0


async def test_golden_checkpoint_can_start_from_a_snapshot(
    credentials: OpenComputerCredentials, control: Any, oc: OpenComputerClient
) -> None:
    name = f"golden-base-{uuid.uuid4().hex[:8]}"
    await oc.snapshots.create(name, unique_image().add_file("/home/sandbox/toolchain.txt", "installed"))
    parameters = GoldenCheckpointParameters(
        snapshot=name,
        verify_command="test -f /home/sandbox/toolchain.txt && test -f /home/sandbox/golden/built-at",
        variable_name=f"golden-{uuid.uuid4().hex[:8]}",
    )

    golden = await rebuild_golden_checkpoint(parameters)

    fork = await oc.checkpoints.fork(golden.checkpoint_id)
    try:
        assert (await oc.exec.run(fork.sandbox_id, "cat toolchain.txt")).stdout == "installed"
    finally:
        await oc.sandboxes.kill(fork.sandbox_id)
        await oc.sandboxes.kill(golden.sandbox_id)
        await oc.snapshots.delete(name)
    async with get_client() as prefect:
        await prefect.delete_variable_by_name(parameters.variable_name)
