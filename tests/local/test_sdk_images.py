"""The official SDK's images and snapshots, unchanged, against the local server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from opencomputer import Image, Sandbox, Snapshots

from prefect_opencomputer.local import LocalServer

# Every test here builds at least one image (the apt/pip one reaches the package registries).
pytestmark = pytest.mark.slow


@pytest.fixture
def sdk_env(local_server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENCOMPUTER_API_URL", local_server.url)
    monkeypatch.setenv("OPENCOMPUTER_API_KEY", local_server.api_key)


@pytest.fixture
async def sandboxes(sdk_env: None) -> AsyncIterator[list[Sandbox]]:
    """SDK sandboxes a test creates; killed and closed afterwards."""
    created: list[Sandbox] = []
    yield created
    for sandbox in created:
        await sandbox.kill()
        await sandbox.close()


@pytest.fixture
async def snapshots(sdk_env: None) -> AsyncIterator[Snapshots]:
    client = Snapshots()
    yield client
    await client.close()


async def test_sdk_image_build_logs_every_step_and_caches_the_image(sandboxes: list[Sandbox]) -> None:
    image = (
        Image.base()
        .apt_install(["cowsay"])
        .pip_install(["tomli-w"])
        .run_commands(f"echo built {uuid.uuid4().hex}", "/usr/games/cowsay image ready")
    )
    first_log: list[str] = []
    second_log: list[str] = []

    sandboxes.append(await Sandbox.create(image=image, on_build_log=first_log.append))
    sandboxes.append(await Sandbox.create(image=image, on_build_log=second_log.append))

    joined = "\n".join(first_log)
    assert "Step 1/3: apt-get install cowsay" in joined and "Setting up cowsay" in joined
    assert "Step 2/3: pip install tomli-w" in joined  # quiet, as the hosted `sudo pip install -q`
    assert "< image ready >" in joined
    assert second_log == [
        f"Image found in cache (hash={image.cache_key()[:12]})",
        "Creating sandbox from image...",
    ]
    result = await sandboxes[1].exec.run("/usr/games/cowsay moo && python3 -c 'import tomli_w'")
    assert result.exit_code == 0 and "< moo >" in result.stdout


async def test_sdk_snapshots_create_list_get_fork_delete(
    snapshots: Snapshots, sandboxes: list[Sandbox]
) -> None:
    name = f"sdk-{uuid.uuid4().hex[:8]}"
    image = Image.base().run_commands(f"echo {name} > /home/sandbox/name.txt")
    log: list[str] = []

    created = await snapshots.create(name, image, on_build_logs=log.append)

    assert created["name"] == name and created["status"] == "ready"
    assert any(line.startswith("Step 1/1: echo") for line in log)
    assert name in {snapshot["name"] for snapshot in await snapshots.list()}
    assert (await snapshots.get(name))["contentHash"] == image.cache_key()

    sandbox = await Sandbox.create(snapshot=name)
    sandboxes.append(sandbox)
    assert (await sandbox.files.read("/home/sandbox/name.txt")) == f"{name}\n"

    await snapshots.delete(name)
    with pytest.raises(httpx.HTTPStatusError) as caught:
        await snapshots.get(name)
    assert caught.value.response.status_code == 404
    await snapshots.delete(name)  # the SDK ignores a 404 on delete


async def test_sdk_reports_a_failing_build_step(sdk_env: None) -> None:
    image = Image.base().run_commands("echo no such thing >&2; exit 2")

    with pytest.raises(RuntimeError) as caught:
        await Sandbox.create(image=image)

    assert str(caught.value).startswith("Build failed: image build failed: step 1 (run: ")
    assert "no such thing" in str(caught.value)
