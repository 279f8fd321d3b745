"""Checkpoint, fork, patch, snapshot and image routes: success and error shapes over real HTTP."""

from __future__ import annotations

import uuid

import httpx

from prefect_opencomputer.client import Image
from tests.fast.checkpoints import ready_checkpoint
from tests.fast.coverage import covers, error_of

MISSING = "sb-00000000"


@covers(
    "POST /api/sandboxes/{sandbox_id}/checkpoints",
    "GET /api/sandboxes/{sandbox_id}/checkpoints",
    "POST /api/sandboxes/{sandbox_id}/checkpoints/{checkpoint_id}/restore",
    "DELETE /api/sandboxes/{sandbox_id}/checkpoints/{checkpoint_id}",
    "POST /api/sandboxes/from-checkpoint/{checkpoint_id}",
)
async def test_checkpoint_restore_fork_delete(
    http: httpx.AsyncClient, sandbox: str, created: list[str]
) -> None:
    files = f"/sandboxes/{sandbox}/files"
    await http.put(files, params={"path": "state.txt"}, content=b"before")
    checkpoint = await ready_checkpoint(http, sandbox)
    await http.put(files, params={"path": "state.txt"}, content=b"after")
    restored = await http.post(f"/sandboxes/{sandbox}/checkpoints/{checkpoint}/restore")
    assert restored.status_code == 200, restored.text
    assert (await http.get(files, params={"path": "state.txt"})).content == b"before"
    fork = await http.post(f"/sandboxes/from-checkpoint/{checkpoint}", json={})
    assert fork.status_code == 201, fork.text
    forked = fork.json()["sandboxID"]
    created.append(forked)
    assert fork.json()["fromCheckpointId"] == checkpoint
    read = await http.get(f"/sandboxes/{forked}/files", params={"path": "state.txt"})
    assert read.content == b"before"
    unknown = await http.post(f"/sandboxes/from-checkpoint/{uuid.uuid4()}", json={})
    assert unknown.status_code == 404 and error_of(unknown.json())
    bad_restore = await http.post(f"/sandboxes/{sandbox}/checkpoints/{uuid.uuid4()}/restore")
    assert bad_restore.status_code == 404 and error_of(bad_restore.json())
    bad_kind = await http.post(f"/sandboxes/{sandbox}/checkpoints", json={"kind": "sideways"})
    assert bad_kind.status_code == 400 and error_of(bad_kind.json())
    await http.delete(f"/sandboxes/{forked}")
    deleted = await http.delete(f"/sandboxes/{sandbox}/checkpoints/{checkpoint}")
    assert deleted.status_code == 204, deleted.text
    assert checkpoint not in {
        item["id"] for item in (await http.get(f"/sandboxes/{sandbox}/checkpoints")).json()
    }
    again = await http.delete(f"/sandboxes/{sandbox}/checkpoints/{checkpoint}")
    assert again.status_code == 404 and error_of(again.json())
    assert (await http.get(f"/sandboxes/{MISSING}/checkpoints")).status_code == 404


@covers(
    "POST /api/sandboxes/checkpoints/{checkpoint_id}/patches",
    "GET /api/sandboxes/checkpoints/{checkpoint_id}/patches",
    "DELETE /api/sandboxes/checkpoints/{checkpoint_id}/patches/{patch_id}",
)
async def test_patches_apply_to_forks(http: httpx.AsyncClient, sandbox: str, created: list[str]) -> None:
    checkpoint = await ready_checkpoint(http, sandbox)
    patches = f"/sandboxes/checkpoints/{checkpoint}/patches"
    made = await http.post(patches, json={"script": "echo patched > patched.txt", "description": "mark"})
    assert made.status_code == 201, made.text
    patch_id = made.json()["patch"]["id"]
    assert [item["id"] for item in (await http.get(patches)).json()] == [patch_id]
    fork = (await http.post(f"/sandboxes/from-checkpoint/{checkpoint}", json={})).json()
    created.append(fork["sandboxID"])
    read = await http.get(f"/sandboxes/{fork['sandboxID']}/files", params={"path": "patched.txt"})
    assert read.content == b"patched\n"
    no_script = await http.post(patches, json={})
    assert no_script.status_code == 400 and error_of(no_script.json())
    assert (await http.delete(f"{patches}/{patch_id}")).status_code == 204
    gone = await http.delete(f"{patches}/{patch_id}")
    assert gone.status_code == 404 and error_of(gone.json())
    unknown = await http.get(f"/sandboxes/checkpoints/{uuid.uuid4()}/patches")
    assert unknown.status_code == 404 and error_of(unknown.json())


@covers(
    "POST /api/snapshots",
    "GET /api/snapshots",
    "GET /api/snapshots/{name}",
    "DELETE /api/snapshots/{name}",
    "POST /api/snapshots/{name}/patches",
    "GET /api/snapshots/{name}/patches",
    "DELETE /api/snapshots/{name}/patches/{patch_id}",
    "GET /api/images",
)
async def test_snapshots_patches_and_images(http: httpx.AsyncClient, created: list[str]) -> None:
    name = f"fast-{uuid.uuid4().hex[:8]}"
    image = Image.base().run_commands(f"echo {name} > built.txt")
    built = await http.post("/snapshots", json={"name": name, "image": image.to_dict()})
    assert built.status_code == 201, built.text
    assert (await http.get(f"/snapshots/{name}")).json()["status"] == "ready"
    assert name in {item["name"] for item in (await http.get("/snapshots")).json()}
    assert any(item.get("name") == name for item in (await http.get("/images")).json())
    duplicate = await http.post("/snapshots", json={"name": name, "image": image.to_dict()})
    assert duplicate.status_code == 409 and error_of(duplicate.json()) == "snapshot name already exists"
    failing = await http.post(
        "/snapshots", json={"name": f"{name}-bad", "image": Image.base().run_commands("false").to_dict()}
    )
    assert failing.status_code == 500 and error_of(failing.json())
    patches = f"/snapshots/{name}/patches"
    made = await http.post(patches, json={"script": "echo more > more.txt"})
    assert made.status_code == 201, made.text
    patch_id = made.json()["patch"]["id"]
    assert [item["id"] for item in (await http.get(patches)).json()] == [patch_id]
    fork = await http.post("/sandboxes", json={"snapshot": name})
    assert fork.status_code == 201, fork.text
    created.append(fork.json()["sandboxID"])
    read = await http.get(f"/sandboxes/{fork.json()['sandboxID']}/files", params={"path": "more.txt"})
    assert read.content == b"more\n"
    assert (await http.delete(f"{patches}/{patch_id}")).status_code == 204
    assert (await http.delete(f"{patches}/{patch_id}")).status_code == 404
    assert (await http.delete(f"/snapshots/{name}")).status_code == 204
    missing = await http.get(f"/snapshots/{name}")
    assert missing.status_code == 404 and error_of(missing.json())
    assert (await http.delete(f"/snapshots/{name}")).status_code == 404
    assert (await http.get(f"/snapshots/{name}/patches")).status_code == 404
    assert (await http.post(f"/snapshots/{name}/patches", json={"script": "true"})).status_code == 404
