"""Checkpoint patches on the wire: CRUD, sequence, and how a fork runs them."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

MISSING_UUID = "00000000-0000-4000-8000-00000000dead"


@pytest.fixture
async def checkpoint(http: httpx.AsyncClient, sandbox: str) -> str:
    """A ready checkpoint of the test's sandbox, taken after writing ``base.txt``."""
    await http.post(f"/sandboxes/{sandbox}/exec/run", json={"cmd": "echo base > base.txt"})
    created = (await http.post(f"/sandboxes/{sandbox}/checkpoints", json={"name": "patched"})).json()
    for _ in range(100):
        listed = (await http.get(f"/sandboxes/{sandbox}/checkpoints")).json()
        if listed[0]["status"] == "ready":
            checkpoint_id: str = created["id"]
            return checkpoint_id
        await asyncio.sleep(0.05)
    raise AssertionError("checkpoint never became ready")


def _patches(checkpoint_id: str) -> str:
    return f"/sandboxes/checkpoints/{checkpoint_id}/patches"


async def _fork(http: httpx.AsyncClient, created: list[str], checkpoint_id: str) -> str:
    response = await http.post(f"/sandboxes/from-checkpoint/{checkpoint_id}", json={})
    assert response.status_code == 201, response.text
    fork_id: str = response.json()["sandboxID"]
    created.append(fork_id)
    return fork_id


async def _run(http: httpx.AsyncClient, sandbox: str, cmd: str) -> str:
    stdout: str = (await http.post(f"/sandboxes/{sandbox}/exec/run", json={"cmd": cmd})).json()["stdout"]
    return stdout


async def test_create_wraps_the_patch_and_numbers_it_from_one(
    http: httpx.AsyncClient, checkpoint: str
) -> None:
    response = await http.post(_patches(checkpoint), json={"script": "echo one", "description": "first"})
    assert response.status_code == 201
    patch = response.json()["patch"]
    assert re.match(r"^[0-9a-f-]{36}$", patch["id"])
    assert patch["checkpointId"] == checkpoint
    assert patch["sequence"] == 1
    assert patch["script"] == "echo one"
    assert patch["description"] == "first"
    assert patch["strategy"] == "on_wake"
    assert "createdAt" in patch
    second = (await http.post(_patches(checkpoint), json={"script": "echo two"})).json()["patch"]
    assert second["sequence"] == 2
    assert second["description"] == ""


async def test_list_is_a_plain_array_by_sequence_and_gaps_remain(
    http: httpx.AsyncClient, checkpoint: str
) -> None:
    assert (await http.get(_patches(checkpoint))).json() == []
    ids = [
        (await http.post(_patches(checkpoint), json={"script": f"echo {n}"})).json()["patch"]["id"]
        for n in range(3)
    ]
    assert (await http.delete(f"{_patches(checkpoint)}/{ids[1]}")).status_code == 204
    listed = (await http.get(_patches(checkpoint))).json()
    assert [patch["sequence"] for patch in listed] == [1, 3]
    after = (await http.post(_patches(checkpoint), json={"script": "echo last"})).json()["patch"]
    assert after["sequence"] == 4


async def test_patch_errors(http: httpx.AsyncClient, checkpoint: str) -> None:
    cases = [
        (http.post(_patches(checkpoint), json={}), 400, "script is required"),
        (http.post(_patches("nope"), json={"script": "x"}), 400, "invalid checkpoint ID"),
        (http.post(_patches(MISSING_UUID), json={"script": "x"}), 404, "checkpoint not found"),
        (http.get(_patches(MISSING_UUID)), 404, "checkpoint not found"),
        (http.delete(f"{_patches(checkpoint)}/nope"), 400, "invalid patch ID"),
        (http.delete(f"{_patches(checkpoint)}/{MISSING_UUID}"), 404, "patch not found"),
    ]
    for request, status, message in cases:
        response = await request
        assert (response.status_code, response.json()) == (status, {"error": message})


async def test_fork_runs_patches_in_sequence_as_the_sandbox_user(
    http: httpx.AsyncClient, checkpoint: str, created: list[str]
) -> None:
    await http.post(
        _patches(checkpoint), json={"script": "echo one >> log.txt; whoami >> log.txt; pwd >> log.txt"}
    )
    await http.post(_patches(checkpoint), json={"script": "echo two >> log.txt; echo $HOME >> log.txt"})
    fork_id = await _fork(http, created, checkpoint)
    assert await _run(http, fork_id, "cat base.txt log.txt") == (
        "base\none\nsandbox\n/home/sandbox\ntwo\n/home/sandbox\n"
    )
    assert "patchError" not in (await http.get(f"/sandboxes/{fork_id}")).json()


async def test_failing_patch_keeps_fork_and_reports_patch_error(
    http: httpx.AsyncClient, checkpoint: str, created: list[str]
) -> None:
    await http.post(_patches(checkpoint), json={"script": "echo ran > first.txt"})
    await http.post(_patches(checkpoint), json={"script": "echo boom >&2; exit 3"})
    await http.post(_patches(checkpoint), json={"script": "echo never > third.txt"})
    fork_id = await _fork(http, created, checkpoint)
    body = (await http.get(f"/sandboxes/{fork_id}")).json()
    assert body["status"] == "running"
    assert body["patchError"].startswith(
        "patch seq 2 failed: patch exited with code 3: boom\n — delete the bad patch"
    )
    assert (
        await _run(http, fork_id, "cat first.txt; ls third.txt 2>/dev/null || echo skipped")
        == "ran\nskipped\n"
    )


async def test_patches_do_not_run_on_restore(http: httpx.AsyncClient, sandbox: str, checkpoint: str) -> None:
    await http.post(_patches(checkpoint), json={"script": "echo patched > patched.txt"})
    await http.post(f"/sandboxes/{sandbox}/checkpoints/{checkpoint}/restore")
    assert await _run(http, sandbox, "cat base.txt; ls patched.txt 2>/dev/null || echo unpatched") == (
        "base\nunpatched\n"
    )
