"""Checkpoint patches: appended in sequence, run in every fork, failures reported on the fork."""

from __future__ import annotations

import pytest

from prefect_opencomputer.client import BadRequestError, Checkpoint, NotFoundError, OpenComputerClient


async def test_patches_run_in_sequence_in_each_fork(
    oc: OpenComputerClient, ready_checkpoint: Checkpoint
) -> None:
    first = await oc.patches.create(
        ready_checkpoint.id, "echo one >> /home/sandbox/patched", description="first"
    )
    second = await oc.patches.create(ready_checkpoint.id, "echo two >> /home/sandbox/patched")

    assert (first.sequence, second.sequence) == (1, 2)
    assert first.checkpoint_id == ready_checkpoint.id and first.description == "first"
    assert [p.id for p in await oc.patches.list(ready_checkpoint.id)] == [first.id, second.id]

    fork = await oc.checkpoints.fork(ready_checkpoint.id, timeout=120)
    try:
        assert await oc.files.read_text(fork.sandbox_id, "/home/sandbox/patched") == "one\ntwo\n"
        assert (await oc.sandboxes.get(fork.sandbox_id)).patch_error is None
    finally:
        await oc.sandboxes.kill(fork.sandbox_id)


async def test_failing_patch_keeps_fork_and_reports_patch_error(
    oc: OpenComputerClient, ready_checkpoint: Checkpoint
) -> None:
    await oc.patches.create(ready_checkpoint.id, "echo broken >&2; exit 7")

    fork = await oc.checkpoints.fork(ready_checkpoint.id, timeout=120)
    try:
        state = await oc.sandboxes.get(fork.sandbox_id)
        assert state.is_running
        assert state.patch_error is not None and "7" in state.patch_error
    finally:
        await oc.sandboxes.kill(fork.sandbox_id)


async def test_deleted_patch_is_gone_and_cannot_be_deleted_twice(
    oc: OpenComputerClient, ready_checkpoint: Checkpoint
) -> None:
    patch = await oc.patches.create(ready_checkpoint.id, "true")

    await oc.patches.delete(ready_checkpoint.id, patch.id)

    assert await oc.patches.list(ready_checkpoint.id) == []
    with pytest.raises(NotFoundError):
        await oc.patches.delete(ready_checkpoint.id, patch.id)


async def test_empty_patch_script_is_a_bad_request(
    oc: OpenComputerClient, ready_checkpoint: Checkpoint
) -> None:
    with pytest.raises(BadRequestError):
        await oc.patches.create(ready_checkpoint.id, "")
