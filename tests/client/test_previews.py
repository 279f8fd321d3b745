"""Preview URLs: one per port, idempotent create, reachable over HTTP."""

from __future__ import annotations

import pytest

from prefect_opencomputer.client import BadRequestError, NotFoundError, OpenComputerClient


async def test_preview_create_is_idempotent_per_port(oc: OpenComputerClient, sandbox: str) -> None:
    preview = await oc.previews.create(sandbox, 8000)
    again = await oc.previews.create(sandbox, 8000)

    assert again.id == preview.id
    assert preview.sandbox_id == sandbox and preview.port == 8000
    assert preview.hostname.startswith(f"{sandbox}-p8000.")
    assert preview.url.endswith(preview.hostname) and preview.url.startswith(("http://", "https://"))
    assert [p.port for p in await oc.previews.list(sandbox)] == [8000]


async def test_deleted_preview_is_gone(oc: OpenComputerClient, sandbox: str) -> None:
    await oc.previews.create(sandbox, 9000)

    await oc.previews.delete(sandbox, 9000)

    assert await oc.previews.list(sandbox) == []
    with pytest.raises(NotFoundError):
        await oc.previews.delete(sandbox, 9000)


async def test_out_of_range_port_is_a_bad_request(oc: OpenComputerClient, sandbox: str) -> None:
    with pytest.raises(BadRequestError):
        await oc.previews.create(sandbox, 70000)
