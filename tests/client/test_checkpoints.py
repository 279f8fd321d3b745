"""Checkpoints: create, wait, list, restore, delete and fork."""

from __future__ import annotations

import pytest

from prefect_opencomputer.client import (
    BadRequestError,
    Checkpoint,
    ConflictError,
    NotFoundError,
    OpenComputerClient,
    RetentionPolicy,
)


async def test_checkpoint_becomes_ready_and_is_listed_newest_first(
    oc: OpenComputerClient, sandbox: str
) -> None:
    first = await oc.checkpoints.create(sandbox, "first")
    assert first.status in ("processing", "ready") and first.sandbox_id == sandbox
    await oc.checkpoints.wait_ready(sandbox, first.id)
    second = await oc.checkpoints.create(sandbox, "second")
    ready = await oc.checkpoints.wait_ready(sandbox, second.id)

    assert ready.is_ready and ready.name == "second"
    assert [cp.name for cp in await oc.checkpoints.list(sandbox)] == ["second", "first"]


async def test_duplicate_checkpoint_name_is_a_conflict(
    oc: OpenComputerClient, sandbox: str, ready_checkpoint: Checkpoint
) -> None:
    with pytest.raises(ConflictError) as caught:
        await oc.checkpoints.create(sandbox, ready_checkpoint.name)
    assert caught.value.status_code == 409
    assert len(await oc.checkpoints.list(sandbox)) == 1


async def test_checkpoint_without_name_is_a_bad_request(oc: OpenComputerClient, sandbox: str) -> None:
    with pytest.raises(BadRequestError):
        await oc.checkpoints.create(sandbox, "")


async def test_retention_deletes_the_oldest_checkpoint(oc: OpenComputerClient, sandbox: str) -> None:
    keep_two = RetentionPolicy(mode="delete_oldest", max_count=2)
    for name in ("a", "b", "c"):
        checkpoint = await oc.checkpoints.create(sandbox, name, retention=keep_two)
        await oc.checkpoints.wait_ready(sandbox, checkpoint.id)

    assert [cp.name for cp in await oc.checkpoints.list(sandbox)] == ["c", "b"]


async def test_restore_reverts_the_sandbox_in_place(
    oc: OpenComputerClient, sandbox: str, ready_checkpoint: Checkpoint
) -> None:
    await oc.files.write(sandbox, "/home/sandbox/base.txt", "changed later\n")
    await oc.files.write(sandbox, "/home/sandbox/new.txt", "added later\n")

    restore = await oc.checkpoints.restore(sandbox, ready_checkpoint.id)

    assert (restore.sandbox_id, restore.checkpoint_id) == (sandbox, ready_checkpoint.id)
    assert await oc.files.read_text(sandbox, "/home/sandbox/base.txt") == "from the checkpoint\n"
    listing = {entry.name for entry in await oc.files.list(sandbox, "/home/sandbox")}
    assert "new.txt" not in listing


async def test_fork_starts_a_new_sandbox_with_the_checkpoint_disk(
    oc: OpenComputerClient, sandbox: str, ready_checkpoint: Checkpoint
) -> None:
    fork = await oc.checkpoints.fork(ready_checkpoint.id, envs={"ROLE": "fork"}, timeout=120)
    try:
        assert fork.sandbox_id != sandbox and fork.is_running
        assert fork.from_checkpoint_id in (None, ready_checkpoint.id)
        result = await oc.exec.run(fork.sandbox_id, "cat /home/sandbox/base.txt; echo $ROLE")
        assert result.stdout == "from the checkpoint\nfork\n"

        # The fork is independent of its origin.
        await oc.files.write(fork.sandbox_id, "/home/sandbox/base.txt", "fork only\n")
        assert await oc.files.read_text(sandbox, "/home/sandbox/base.txt") == "from the checkpoint\n"
    finally:
        await oc.sandboxes.kill(fork.sandbox_id)


async def test_deleted_checkpoint_cannot_be_forked(
    oc: OpenComputerClient, sandbox: str, ready_checkpoint: Checkpoint
) -> None:
    await oc.checkpoints.delete(sandbox, ready_checkpoint.id)

    assert await oc.checkpoints.list(sandbox) == []
    with pytest.raises(NotFoundError):
        await oc.checkpoints.fork(ready_checkpoint.id)
    with pytest.raises(NotFoundError):
        await oc.checkpoints.wait_ready(sandbox, ready_checkpoint.id)
