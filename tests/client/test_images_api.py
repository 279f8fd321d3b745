"""Images and snapshots through our client, against the local server over real HTTP."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest

from prefect_opencomputer.client import (
    BadRequestError,
    BuildFailedError,
    BuildLog,
    ConflictError,
    Image,
    NotFoundError,
    OpenComputerClient,
    Sandbox,
)

# Every test here builds at least one image (the apt/pip one reaches the package registries).
pytestmark = pytest.mark.slow


def unique_image() -> Image:
    return Image.base().run_commands(f"echo build {uuid.uuid4().hex}")


@pytest.fixture
async def started(oc: OpenComputerClient) -> AsyncIterator[list[Sandbox]]:
    """Sandboxes a test starts; all killed afterwards."""
    sandboxes: list[Sandbox] = []
    yield sandboxes
    for sandbox in sandboxes:
        await oc.sandboxes.kill(sandbox.sandbox_id)


@pytest.fixture
async def snapshot_name(oc: OpenComputerClient) -> AsyncIterator[str]:
    name = f"snap-{uuid.uuid4().hex[:8]}"
    yield name
    with contextlib.suppress(NotFoundError):
        await oc.snapshots.delete(name)


async def test_create_from_an_image_streams_the_build_log_then_caches_it(
    oc: OpenComputerClient, started: list[Sandbox]
) -> None:
    image = unique_image().env({"FROM_IMAGE": "yes"}).run_commands("echo compiled")
    first_log: list[BuildLog] = []
    second_log: list[BuildLog] = []

    async def collect_async(line: BuildLog) -> None:
        second_log.append(line)

    first = await oc.sandboxes.create(image=image, timeout=120, on_build_log=first_log.append)
    started.append(first)
    second = await oc.sandboxes.create(image=image, timeout=120, on_build_log=collect_async)
    started.append(second)

    assert first.is_running and first.template == "base" and first.from_checkpoint_id
    assert BuildLog(step=3, type="run", message="compiled") in first_log
    assert [line.type for line in second_log] == ["cache_hit", "create"]
    assert second.from_checkpoint_id == first.from_checkpoint_id
    result = await oc.exec.run(second.sandbox_id, "bash -lc 'echo $FROM_IMAGE'")
    assert result.stdout == "yes\n"


async def test_a_failing_build_raises_with_the_step_and_its_output(
    oc: OpenComputerClient, started: list[Sandbox]
) -> None:
    image = unique_image().run_commands("echo 'E: Unable to locate package nope' >&2; exit 100")
    before = {sandbox.sandbox_id for sandbox in await oc.sandboxes.list()}

    with pytest.raises(BuildFailedError) as caught:
        await oc.sandboxes.create(image=image)

    assert str(caught.value).startswith("image build failed: step 2 (run: ")
    assert "exited with code 100" in str(caught.value) and "Unable to locate package nope" in str(
        caught.value
    )
    assert any(line.message == "E: Unable to locate package nope" for line in caught.value.logs)
    assert {sandbox.sandbox_id for sandbox in await oc.sandboxes.list()} == before


async def test_snapshots_create_list_get_fork_and_delete(
    oc: OpenComputerClient, started: list[Sandbox], snapshot_name: str
) -> None:
    image = unique_image().add_file("/home/sandbox/hello.txt", "from the snapshot")
    log: list[BuildLog] = []

    snapshot = await oc.snapshots.create(snapshot_name, image, on_build_log=log.append)

    assert snapshot.name == snapshot_name and snapshot.is_ready and snapshot.checkpoint_id
    assert snapshot.content_hash == image.cache_key() and Image.from_dict(snapshot.manifest) == image
    assert any(line.type == "add_file" for line in log)
    assert (await oc.snapshots.get(snapshot_name)).id == snapshot.id
    assert snapshot_name in {listed.name for listed in await oc.snapshots.list()}
    with pytest.raises(ConflictError):
        await oc.snapshots.create(snapshot_name, image)

    sandbox = await oc.sandboxes.create(snapshot=snapshot_name, timeout=120)
    started.append(sandbox)
    assert await oc.files.read_text(sandbox.sandbox_id, "/home/sandbox/hello.txt") == "from the snapshot"

    await oc.snapshots.delete(snapshot_name)
    with pytest.raises(NotFoundError):
        await oc.snapshots.get(snapshot_name)
    with pytest.raises(BadRequestError) as caught:
        await oc.sandboxes.create(snapshot=snapshot_name)
    assert "not found" in caught.value.message


async def test_an_invalid_image_is_a_bad_request_before_any_build(oc: OpenComputerClient) -> None:
    with pytest.raises(BadRequestError) as caught:
        await oc.sandboxes.create(image=Image.base().workdir("relative/path"))
    assert caught.value.message == "invalid image manifest: step 1 (workdir): path must be an absolute path"
