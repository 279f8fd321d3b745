"""Client methods that match the official SDKs' surface: sizes, is_running, tag keys, exists, token rotation,
and a sandbox list that reads the same from the control plane's and the hosted front door's shapes."""

from __future__ import annotations

import httpx
import pytest

from prefect_opencomputer.client import BadRequestError, OpenComputerClient, TagKey

CP_LIST = [
    {
        "sandboxID": "sb-00000001",
        "status": "running",
        "region": "r",
        "workerID": "w",
        "template": "base",
        "startedAt": "2026-05-01T12:00:00.123456Z",
        "tags": {"team": "a"},
        "tagsLastUpdatedAt": None,
    }
]
EDGE_LIST = [
    {
        "sandboxID": "sb-00000002",
        "templateID": "",
        "cellID": "c",
        "workerID": "w",
        "status": "running",
        "cpuCount": 0,
        "memoryMB": 0,
        "startedAt": "2026-05-01T12:00:00.000Z",
        "endAt": "0001-01-01T00:00:00Z",
    },
    {"sandboxID": "sb-00000003", "templateID": "", "status": "stopped", "endAt": "2026-05-01T13:00:00.000Z"},
]


def _serving(oc: OpenComputerClient, listed: list[dict[str, object]], seen: list[str]) -> None:
    """Point the client at canned list and tag answers (the local server cannot send the hosted shapes)."""

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path.endswith("/tags"):
            return httpx.Response(200, json={"tags": {"team": "b"}, "tagsLastUpdatedAt": None})
        return httpx.Response(200, json=listed)

    oc._transport._http = httpx.AsyncClient(base_url="http://stub/api", transport=httpx.MockTransport(answer))


async def test_control_plane_list_keeps_its_tags_without_more_requests() -> None:
    async with OpenComputerClient(api_key="k", api_url="http://stub") as oc:
        seen: list[str] = []
        _serving(oc, CP_LIST, seen)
        listed = await oc.sandboxes.list()
    assert [(sb.sandbox_id, sb.tags) for sb in listed] == [("sb-00000001", {"team": "a"})]
    assert seen == ["/api/sandboxes"]


async def test_hosted_list_is_filtered_to_running_and_its_tags_fetched() -> None:
    async with OpenComputerClient(api_key="k", api_url="http://stub") as oc:
        seen: list[str] = []
        _serving(oc, EDGE_LIST, seen)
        listed = await oc.sandboxes.list()
        everything = await oc.sandboxes.list(status=None)
    assert [(sb.sandbox_id, sb.tags, sb.end_at) for sb in listed] == [("sb-00000002", {"team": "b"}, None)]
    assert [sb.sandbox_id for sb in everything] == ["sb-00000002", "sb-00000003"]
    assert "/api/sandboxes/sb-00000003/tags" not in seen  # a stopped sandbox's tags are not looked up


async def test_local_list_reads_like_the_control_plane_with_tags(
    oc: OpenComputerClient, sandbox: str
) -> None:
    await oc.sandboxes.set_tags(sandbox, {"team": "local"})
    listed = {sb.sandbox_id: sb for sb in await oc.sandboxes.list()}
    assert listed[sandbox].tags == {"team": "local"} and listed[sandbox].template == "base"
    await oc.sandboxes.kill(sandbox)
    assert sandbox not in {sb.sandbox_id for sb in await oc.sandboxes.list()}
    stopped = {sb.sandbox_id: sb for sb in await oc.sandboxes.list(status="stopped")}
    assert stopped[sandbox].end_at is not None


async def test_create_sends_cpu_count_and_disk_size(oc: OpenComputerClient) -> None:
    sandbox = await oc.sandboxes.create(memory_mb=8192, cpu_count=2, disk_mb=30720, timeout=0)
    try:
        assert sandbox.cpu_count == 2 and sandbox.memory_mb == 8192
        listed = {sb.sandbox_id: sb for sb in await oc.sandboxes.list()}
        assert (listed[sandbox.sandbox_id].cpu_count, listed[sandbox.sandbox_id].memory_mb) == (2, 8192)
    finally:
        await oc.sandboxes.kill(sandbox.sandbox_id)
    with pytest.raises(BadRequestError, match="diskMB must be at least 20480"):
        await oc.sandboxes.create(disk_mb=1024)
    with pytest.raises(BadRequestError):
        await oc.sandboxes.create(memory_mb=4096, cpu_count=4)


async def test_is_running_follows_hibernate_kill_and_unknown_ids(
    oc: OpenComputerClient, sandbox: str
) -> None:
    assert await oc.sandboxes.is_running(sandbox)
    await oc.sandboxes.hibernate(sandbox)
    assert not await oc.sandboxes.is_running(sandbox)
    await oc.sandboxes.kill(sandbox)
    assert not await oc.sandboxes.is_running(sandbox)
    assert not await oc.sandboxes.is_running("sb-00000000")


async def test_tag_keys_count_sandboxes_and_values(oc: OpenComputerClient, sandbox: str) -> None:
    await oc.sandboxes.set_tags(sandbox, {"parity-key": "v1"})
    keys = {key.key: key for key in await oc.sandboxes.tag_keys()}
    assert keys["parity-key"] == TagKey(key="parity-key", sandbox_count=1, value_count=1)


async def test_exists_finds_files_and_directories_without_reading_them(
    oc: OpenComputerClient, sandbox: str
) -> None:
    await oc.files.write(sandbox, "/tmp/parity/here.txt", "x")
    assert await oc.files.exists(sandbox, "/tmp/parity/here.txt")
    assert await oc.files.exists(sandbox, "/tmp/parity")
    assert await oc.files.exists(sandbox, "/")
    assert not await oc.files.exists(sandbox, "/tmp/parity/missing.txt")
    assert not await oc.files.exists(sandbox, "/no/such/dir/file")
    await oc.files.write(sandbox, "relative.txt", "y")
    assert await oc.files.exists(sandbox, "relative.txt")


async def test_rotating_the_preview_token_gates_previews_behind_the_new_one(
    oc: OpenComputerClient, sandbox: str
) -> None:
    first = await oc.previews.rotate_token(sandbox)
    second = await oc.previews.rotate_token(sandbox)
    assert len(first.get_secret_value()) == 43 and first != second
    assert first.get_secret_value() not in repr(second)
