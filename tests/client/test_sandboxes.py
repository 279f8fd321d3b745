"""Sandbox lifecycle against the local server over real HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from prefect_opencomputer.client import (
    BadRequestError,
    ForbiddenError,
    NotFoundError,
    OpenComputerClient,
    UnauthorizedError,
)


async def test_created_sandbox_is_running_listed_and_gone_after_kill(oc: OpenComputerClient) -> None:
    sandbox = await oc.sandboxes.create(template="base", timeout=120, envs={"GREETING": "hi"})
    try:
        assert sandbox.sandbox_id.startswith("sb-") and sandbox.is_running
        assert sandbox.template == "base"
        assert sandbox.token is None or sandbox.token.get_secret_value() not in repr(sandbox)

        fetched = await oc.sandboxes.get(sandbox.sandbox_id)
        assert fetched.sandbox_id == sandbox.sandbox_id and fetched.status == "running"
        assert sandbox.sandbox_id in {listed.sandbox_id for listed in await oc.sandboxes.list()}

        result = await oc.exec.run(sandbox.sandbox_id, "echo $GREETING")
        assert result.stdout == "hi\n"
    finally:
        await oc.sandboxes.kill(sandbox.sandbox_id)

    assert (await oc.sandboxes.get(sandbox.sandbox_id)).status == "stopped"
    assert sandbox.sandbox_id not in {listed.sandbox_id for listed in await oc.sandboxes.list()}
    await oc.sandboxes.kill(sandbox.sandbox_id)  # killing a stopped sandbox is fine


async def test_unknown_sandbox_is_not_found(oc: OpenComputerClient) -> None:
    with pytest.raises(NotFoundError) as caught:
        await oc.sandboxes.get("sb-00000000")
    assert caught.value.status_code == 404 and "not found" in caught.value.message

    with pytest.raises(NotFoundError):
        await oc.sandboxes.kill("sb-00000000")


async def test_invalid_memory_size_is_a_bad_request(oc: OpenComputerClient) -> None:
    with pytest.raises(BadRequestError) as caught:
        await oc.sandboxes.create(memory_mb=1234)
    assert "memoryMB" in caught.value.message


async def test_unknown_template_is_not_found(oc: OpenComputerClient) -> None:
    with pytest.raises(NotFoundError) as caught:
        await oc.sandboxes.create(template="no-such-template")
    assert "template" in caught.value.message


async def test_a_wrong_or_missing_key_is_refused_without_echoing_it(local_server: Any) -> None:
    url = local_server.url
    wrong_key = "osb_" + "0" * 64
    async with OpenComputerClient(api_key=wrong_key, api_url=url) as wrong:
        with pytest.raises((UnauthorizedError, ForbiddenError)) as caught:
            await wrong.sandboxes.list()
    assert wrong_key not in str(caught.value) and wrong_key not in repr(caught.value)

    async with OpenComputerClient(api_key="", api_url=url) as anonymous:
        with pytest.raises(UnauthorizedError):
            await anonymous.sandboxes.list()


async def test_idle_timeout_can_be_changed_and_made_persistent(oc: OpenComputerClient, sandbox: str) -> None:
    await oc.sandboxes.set_timeout(sandbox, 600)
    await oc.sandboxes.set_timeout(sandbox, 0)

    with pytest.raises(BadRequestError):
        await oc.sandboxes.set_timeout(sandbox, -1)


async def test_hibernated_sandbox_keeps_its_disk_and_wakes(oc: OpenComputerClient, sandbox: str) -> None:
    await oc.files.write(sandbox, "/home/sandbox/kept.txt", "still here")

    hibernated = await oc.sandboxes.hibernate(sandbox)
    assert hibernated.status == "hibernated"
    assert (await oc.sandboxes.hibernate(sandbox)).status == "hibernated"  # idempotent

    woken = await oc.sandboxes.wake(sandbox)
    assert woken.status == "running"
    assert await oc.files.read_text(sandbox, "/home/sandbox/kept.txt") == "still here"


async def test_tags_are_replaced_as_a_whole(oc: OpenComputerClient, sandbox: str) -> None:
    assert (await oc.sandboxes.get_tags(sandbox)).tags == {}

    first = await oc.sandboxes.set_tags(sandbox, {"prefect.flow-run": "abc", "team": "data"})
    assert first.tags == {"prefect.flow-run": "abc", "team": "data"}
    assert first.tags_last_updated_at is not None

    second = await oc.sandboxes.set_tags(sandbox, {"team": "ml"})
    assert second.tags == {"team": "ml"}
    assert (await oc.sandboxes.get(sandbox)).tags == {"team": "ml"}

    with pytest.raises(BadRequestError):
        await oc.sandboxes.set_tags(sandbox, {"oc:reserved": "x"})
