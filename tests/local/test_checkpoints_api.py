"""Checkpoint routes on the wire: create, list, limits, retention, restore, delete and fork."""

from __future__ import annotations

import asyncio

import httpx
import pytest

CHECKPOINT_KEYS = {
    "id",
    "sandboxId",
    "orgId",
    "name",
    "sandboxConfig",
    "kind",
    "status",
    "sizeBytes",
    "isPublic",
    "createdAt",
}
MISSING_UUID = "00000000-0000-4000-8000-00000000dead"


async def _run(http: httpx.AsyncClient, sandbox: str, cmd: str) -> str:
    response = await http.post(f"/sandboxes/{sandbox}/exec/run", json={"cmd": cmd})
    assert response.status_code == 200, response.text
    stdout: str = response.json()["stdout"]
    return stdout


async def _checkpoint(http: httpx.AsyncClient, sandbox: str, name: str, **body: object) -> dict[str, object]:
    """Create a checkpoint and wait until it is ready."""
    response = await http.post(f"/sandboxes/{sandbox}/checkpoints", json={"name": name, **body})
    assert response.status_code == 201, response.text
    created: dict[str, object] = response.json()
    for _ in range(100):
        listed = (await http.get(f"/sandboxes/{sandbox}/checkpoints")).json()
        current = next(cp for cp in listed if cp["id"] == created["id"])
        if current["status"] != "processing":
            assert current["status"] == "ready", current
            return dict(current)
        await asyncio.sleep(0.05)
    raise AssertionError("checkpoint never became ready")


async def _fork(
    http: httpx.AsyncClient, created: list[str], checkpoint_id: object, **body: object
) -> httpx.Response:
    response = await http.post(f"/sandboxes/from-checkpoint/{checkpoint_id}", json=body)
    if response.status_code == 201:
        created.append(response.json()["sandboxID"])
    return response


async def test_create_answers_processing_then_becomes_ready(http: httpx.AsyncClient, sandbox: str) -> None:
    response = await http.post(f"/sandboxes/{sandbox}/checkpoints", json={"name": "first"})
    assert response.status_code == 201
    body = response.json()
    assert set(body) >= CHECKPOINT_KEYS
    assert body["status"] == "processing"
    assert body["sandboxId"] == sandbox
    assert body["kind"] == "full"
    assert body["isPublic"] is False
    assert body["sandboxConfig"]["templateID"] == "base"
    ready = await _checkpoint(http, sandbox, "second")
    assert ready["sizeBytes"] != 0


async def test_list_is_newest_first(http: httpx.AsyncClient, sandbox: str) -> None:
    assert (await http.get(f"/sandboxes/{sandbox}/checkpoints")).json() == []
    for name in ("a", "b", "c"):
        await _checkpoint(http, sandbox, name)
    names = [cp["name"] for cp in (await http.get(f"/sandboxes/{sandbox}/checkpoints")).json()]
    assert names == ["c", "b", "a"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "name is required"),
        ({"name": "x", "kind": "memory"}, "kind must be full or disk_only"),
        ({"name": "x", "promoteToFull": True}, "promoteToFull is only supported for disk_only checkpoints"),
        (
            {"name": "x", "retentionPolicy": {"mode": "keep_newest"}},
            "unsupported checkpoint retention policy",
        ),
        (
            {"name": "x", "retentionPolicy": {"mode": "delete_oldest", "maxCount": 11}},
            "retentionPolicy.maxCount must be between 1 and 10 for full checkpoints",
        ),
        (
            {"name": "x", "kind": "disk_only", "retentionPolicy": {"mode": "delete_oldest", "maxCount": -1}},
            "retentionPolicy.maxCount must be between 1 and 100 for disk_only checkpoints",
        ),
    ],
)
async def test_invalid_create_is_400_with_the_service_message(
    http: httpx.AsyncClient, sandbox: str, body: dict[str, object], message: str
) -> None:
    response = await http.post(f"/sandboxes/{sandbox}/checkpoints", json=body)
    assert (response.status_code, response.json()) == (400, {"error": message})


async def test_duplicate_name_is_409(http: httpx.AsyncClient, sandbox: str) -> None:
    await _checkpoint(http, sandbox, "same")
    response = await http.post(
        f"/sandboxes/{sandbox}/checkpoints", json={"name": "same", "kind": "disk_only"}
    )
    assert (response.status_code, response.json()) == (
        409,
        {"error": "checkpoint name already exists for this sandbox"},
    )


async def test_sandbox_must_be_running(http: httpx.AsyncClient, sandbox: str) -> None:
    await http.post(f"/sandboxes/{sandbox}/hibernate")
    response = await http.post(f"/sandboxes/{sandbox}/checkpoints", json={"name": "x"})
    assert (response.status_code, response.json()) == (
        400,
        {"error": "sandbox must be running to create a checkpoint"},
    )
    assert (await http.post("/sandboxes/sb-00000000/checkpoints", json={"name": "x"})).status_code == 404


async def test_at_most_ten_full_checkpoints_but_disk_only_counts_apart(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    for index in range(10):
        await _checkpoint(http, sandbox, f"full-{index}")
    response = await http.post(f"/sandboxes/{sandbox}/checkpoints", json={"name": "one-too-many"})
    assert (response.status_code, response.json()) == (
        400,
        {"error": "maximum 10 full checkpoints per sandbox"},
    )
    disk_only = await _checkpoint(http, sandbox, "disk", kind="disk_only")
    assert disk_only["kind"] == "disk_only"


async def test_delete_oldest_retention_keeps_the_newest(http: httpx.AsyncClient, sandbox: str) -> None:
    policy = {"mode": "delete_oldest", "maxCount": 2}
    for name in ("r1", "r2", "r3"):
        await _checkpoint(http, sandbox, name, retentionPolicy=policy)
    names = [cp["name"] for cp in (await http.get(f"/sandboxes/{sandbox}/checkpoints")).json()]
    assert names == ["r3", "r2"]


async def test_retention_skips_checkpoints_with_patches_or_forks(
    http: httpx.AsyncClient, sandbox: str, created: list[str]
) -> None:
    policy = {"mode": "delete_oldest", "maxCount": 2}
    patched = await _checkpoint(http, sandbox, "patched", retentionPolicy=policy)
    await http.post(f"/sandboxes/checkpoints/{patched['id']}/patches", json={"script": "true"})
    forked = await _checkpoint(http, sandbox, "forked", retentionPolicy=policy)
    assert (await _fork(http, created, forked["id"])).status_code == 201
    response = await http.post(
        f"/sandboxes/{sandbox}/checkpoints", json={"name": "third", "retentionPolicy": policy}
    )
    assert (response.status_code, response.json()) == (
        400,
        {
            "error": "maximum 10 full checkpoints per sandbox; no eligible checkpoint can be deleted by "
            "retention policy"
        },
    )
    plain_policy = {"mode": "delete_oldest", "maxCount": 3}
    await _checkpoint(http, sandbox, "plain", retentionPolicy=plain_policy)
    await _checkpoint(http, sandbox, "newest", retentionPolicy=plain_policy)
    names = [cp["name"] for cp in (await http.get(f"/sandboxes/{sandbox}/checkpoints")).json()]
    assert names == ["newest", "forked", "patched"]


async def test_restore_reverts_the_disk_in_place(http: httpx.AsyncClient, sandbox: str) -> None:
    await _run(http, sandbox, "echo v1 > state.txt")
    checkpoint = await _checkpoint(http, sandbox, "v1")
    await _run(http, sandbox, "echo v2 > state.txt; touch later.txt")
    response = await http.post(f"/sandboxes/{sandbox}/checkpoints/{checkpoint['id']}/restore")
    assert response.status_code == 200
    assert response.json() == {"sandboxId": sandbox, "checkpointId": checkpoint["id"], "status": "restoring"}
    assert await _run(http, sandbox, "cat state.txt; ls later.txt 2>/dev/null || echo none") == "v1\nnone\n"
    assert (await http.get(f"/sandboxes/{sandbox}")).json()["status"] == "running"


async def test_restore_preconditions(http: httpx.AsyncClient, sandbox: str, created: list[str]) -> None:
    checkpoint = await _checkpoint(http, sandbox, "mine")
    other = (await _fork(http, created, checkpoint["id"])).json()["sandboxID"]
    cases = [
        (f"/sandboxes/{sandbox}/checkpoints/not-a-uuid/restore", 400, "invalid checkpoint ID"),
        (f"/sandboxes/{sandbox}/checkpoints/{MISSING_UUID}/restore", 404, "checkpoint not found"),
        (
            f"/sandboxes/{other}/checkpoints/{checkpoint['id']}/restore",
            400,
            "checkpoint does not belong to this sandbox",
        ),
    ]
    for path, status, message in cases:
        response = await http.post(path)
        assert (response.status_code, response.json()) == (status, {"error": message}), path
    await http.post(f"/sandboxes/{sandbox}/hibernate")
    response = await http.post(f"/sandboxes/{sandbox}/checkpoints/{checkpoint['id']}/restore")
    assert (response.status_code, response.json()) == (
        400,
        {"error": "sandbox must be running to restore a checkpoint"},
    )


async def test_delete_removes_the_checkpoint_and_its_patches(
    http: httpx.AsyncClient, sandbox: str, created: list[str]
) -> None:
    checkpoint = await _checkpoint(http, sandbox, "doomed")
    await http.post(f"/sandboxes/checkpoints/{checkpoint['id']}/patches", json={"script": "true"})
    assert (await http.delete(f"/sandboxes/{sandbox}/checkpoints/{checkpoint['id']}")).status_code == 204
    assert (await http.get(f"/sandboxes/{sandbox}/checkpoints")).json() == []
    assert (await http.get(f"/sandboxes/checkpoints/{checkpoint['id']}/patches")).status_code == 404
    assert (await _fork(http, created, checkpoint["id"])).status_code == 404
    again = await http.delete(f"/sandboxes/{sandbox}/checkpoints/{checkpoint['id']}")
    assert (again.status_code, again.json()) == (404, {"error": "checkpoint not found"})


async def test_fork_boots_a_new_sandbox_with_the_checkpoint_disk(
    http: httpx.AsyncClient, sandbox: str, created: list[str]
) -> None:
    await _run(http, sandbox, "echo from-parent > inherited.txt")
    checkpoint = await _checkpoint(http, sandbox, "base")
    response = await _fork(http, created, checkpoint["id"])
    assert response.status_code == 201
    body = response.json()
    assert body["fromCheckpointId"] == checkpoint["id"]
    assert body["status"] == "running"
    assert {"sandboxID", "token", "region", "workerID", "memoryMB"} <= set(body)
    fork_id = body["sandboxID"]
    assert fork_id != sandbox
    assert await _run(http, fork_id, "cat inherited.txt") == "from-parent\n"
    # The fork's disk is its own.
    await _run(http, fork_id, "echo changed > inherited.txt")
    assert await _run(http, sandbox, "cat inherited.txt") == "from-parent\n"


async def test_fork_envs_merge_over_the_checkpoint_envs(http: httpx.AsyncClient, created: list[str]) -> None:
    parent = (await http.post("/sandboxes", json={"envs": {"A": "parent", "B": "parent"}})).json()[
        "sandboxID"
    ]
    created.append(parent)
    checkpoint = await _checkpoint(http, parent, "envs")
    fork_id = (await _fork(http, created, checkpoint["id"], envs={"B": "fork"})).json()["sandboxID"]
    assert await _run(http, fork_id, "echo $A $B") == "parent fork\n"


async def test_fork_errors(http: httpx.AsyncClient, sandbox: str, created: list[str]) -> None:
    response = await _fork(http, created, "not-a-uuid")
    assert (response.status_code, response.json()) == (400, {"error": "invalid checkpoint ID"})
    response = await _fork(http, created, MISSING_UUID)
    assert (response.status_code, response.json()) == (404, {"error": "checkpoint not found"})
    checkpoint = await _checkpoint(http, sandbox, "ok")
    response = await _fork(http, created, checkpoint["id"], secretStore="vault")
    assert (response.status_code, response.json()) == (400, {"error": "secret store not found: vault"})


async def test_fork_right_after_create_waits_for_the_copy(
    http: httpx.AsyncClient, sandbox: str, created: list[str]
) -> None:
    await _run(http, sandbox, "head -c 20000000 /dev/urandom > big.bin; echo marker > m.txt")
    checkpoint = (await http.post(f"/sandboxes/{sandbox}/checkpoints", json={"name": "fresh"})).json()
    response = await _fork(http, created, checkpoint["id"])
    assert response.status_code == 201
    assert (
        await _run(http, response.json()["sandboxID"], "cat m.txt; stat -c %s big.bin")
        == "marker\n20000000\n"
    )


async def test_checkpoints_outlive_their_killed_sandbox(
    http: httpx.AsyncClient, sandbox: str, created: list[str]
) -> None:
    await _run(http, sandbox, "echo survivor > s.txt")
    checkpoint = await _checkpoint(http, sandbox, "kept")
    await http.delete(f"/sandboxes/{sandbox}")
    listed = (await http.get(f"/sandboxes/{sandbox}/checkpoints")).json()
    assert [cp["id"] for cp in listed] == [checkpoint["id"]]
    fork_id = (await _fork(http, created, checkpoint["id"])).json()["sandboxID"]
    assert await _run(http, fork_id, "cat s.txt") == "survivor\n"
