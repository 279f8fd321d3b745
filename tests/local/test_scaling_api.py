"""Scale, autoscale, the scaling lock, reboot and power cycle, through the official Python SDK."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from opencomputer import Sandbox, ScalingLockedError

pytestmark = pytest.mark.slow

# Holds 1.5 GiB: more than the 1024 MB tier allows, well within the 4096 MB one.
GRAB = "python3 -c \"b = b'x' * (1536 << 20); print('allocated')\"; echo code=$?"


async def _size(http: httpx.AsyncClient, sandbox: Sandbox) -> tuple[int, int]:
    listed = {item["sandboxID"]: item for item in (await http.get("/sandboxes")).json()}
    return listed[sandbox.sandbox_id]["memoryMB"], listed[sandbox.sandbox_id]["cpuCount"]


async def test_scale_changes_the_running_sandboxs_memory_limit(
    small_sdk_sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    assert (await small_sdk_sandbox.exec.run(GRAB)).stdout == "code=137\n"  # the 1024 MB tier's OOM killer
    await small_sdk_sandbox.exec.run("nohup sleep 600 >/dev/null 2>&1 &")

    scaled = await small_sdk_sandbox.scale(8192)
    assert scaled == {
        "sandboxID": small_sdk_sandbox.sandbox_id,
        "workerID": "local",
        "memoryMB": 8192,
        "cpuPercent": 200,
        "migrated": False,
        "ok": True,
        "autoscaleDisabled": False,
    }
    assert (await small_sdk_sandbox.exec.run(GRAB)).stdout == "allocated\ncode=0\n"
    assert (await small_sdk_sandbox.exec.run("pgrep -x sleep >/dev/null && echo kept")).stdout == "kept\n"
    assert await _size(http, small_sdk_sandbox) == (8192, 2)


async def test_scale_below_what_the_processes_hold_is_409_oom_floor(
    small_sdk_sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    await small_sdk_sandbox.scale(4096)
    hold = "import time; b = b'x' * (1536 << 20); open('/tmp/held', 'w').close(); time.sleep(600)"
    await small_sdk_sandbox.exec.run(f'nohup python3 -c "{hold}" >/dev/null 2>&1 &')
    for _ in range(600):
        if await small_sdk_sandbox.files.exists("/tmp/held"):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the holder never allocated its memory")
    with pytest.raises(httpx.HTTPStatusError) as caught:
        await small_sdk_sandbox.scale(1024)
    body = caught.value.response.json()
    assert (caught.value.response.status_code, body["code"]) == (409, "oom_floor")
    assert body["error"] == "memory limit below guest working set — would OOM-kill processes"
    assert await _size(http, small_sdk_sandbox) == (4096, 1)


async def test_scale_refuses_sizes_that_are_not_a_tier_as_hosted(
    small_sdk_sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    for body, message in [
        ({"memoryMB": 2048}, "memoryMB must be one of: 1024, 4096, 8192, 16384 (got 2048)"),
        (
            {"memoryMB": 32768},
            "memoryMB=32768 exceeds the largest self-serve tier (16384 MB). "
            "Contact us for enterprise sizing.",
        ),
        ({}, "memoryMB is required and must be positive"),
        ({"memoryMB": "big"}, "memoryMB is required and must be positive"),
    ]:
        response = await http.post(f"/sandboxes/{small_sdk_sandbox.sandbox_id}/scale", json=body)
        assert (response.status_code, response.json()) == (400, {"error": message})
    missing = await http.post("/sandboxes/sb-00000000/scale", json={"memoryMB": 4096})
    assert (missing.status_code, missing.json()) == (404, {"error": "sandbox not found"})
    await small_sdk_sandbox.hibernate()
    asleep = await http.post(f"/sandboxes/{small_sdk_sandbox.sandbox_id}/scale", json={"memoryMB": 4096})
    assert (asleep.status_code, asleep.json()) == (400, {"error": "sandbox is not running"})


async def test_autoscale_and_the_scaling_lock_are_stored_and_answered(small_sdk_sandbox: Sandbox) -> None:
    assert await small_sdk_sandbox.get_autoscale() == {
        "sandboxID": small_sdk_sandbox.sandbox_id,
        "enabled": False,
        "minMemoryMB": 0,
        "maxMemoryMB": 0,
    }
    enabled = await small_sdk_sandbox.set_autoscale(True, min_memory_mb=1024, max_memory_mb=8192)
    assert enabled == {
        "sandboxID": small_sdk_sandbox.sandbox_id,
        "enabled": True,
        "minMemoryMB": 1024,
        "maxMemoryMB": 8192,
    }
    assert await small_sdk_sandbox.get_autoscale() == enabled
    with pytest.raises(httpx.HTTPStatusError) as caught:
        await small_sdk_sandbox.set_autoscale(True, min_memory_mb=8192, max_memory_mb=1024)
    assert caught.value.response.json() == {"error": "minMemoryMB must be ≤ maxMemoryMB"}

    # A manual scale turns autoscale off, and says it did.
    assert (await small_sdk_sandbox.scale(4096))["autoscaleDisabled"] is True
    assert (await small_sdk_sandbox.get_autoscale())["enabled"] is False

    assert await small_sdk_sandbox.get_scaling_lock() == {
        "sandboxID": small_sdk_sandbox.sandbox_id,
        "locked": False,
    }
    await small_sdk_sandbox.set_autoscale(True, min_memory_mb=1024, max_memory_mb=4096)
    assert await small_sdk_sandbox.set_scaling_lock(True) == {
        "sandboxID": small_sdk_sandbox.sandbox_id,
        "locked": True,
    }
    assert (await small_sdk_sandbox.get_autoscale())["enabled"] is False  # the lock turned it off
    with pytest.raises(ScalingLockedError, match="unlock via PUT /scaling-lock to allow size changes"):
        await small_sdk_sandbox.scale(8192)
    with pytest.raises(ScalingLockedError, match="to enable autoscale"):
        await small_sdk_sandbox.set_autoscale(True, min_memory_mb=1024, max_memory_mb=4096)
    await small_sdk_sandbox.set_scaling_lock(False)
    assert (await small_sdk_sandbox.scale(8192))["memoryMB"] == 8192


@pytest.mark.parametrize("restart", ["reboot", "power_cycle"])
async def test_reboot_and_power_cycle_restart_processes_and_keep_the_disk(
    small_sdk_sandbox: Sandbox, restart: str
) -> None:
    await small_sdk_sandbox.files.write("kept.txt", "on disk")
    await small_sdk_sandbox.exec.run("nohup sleep 600 >/dev/null 2>&1 &")
    session = await small_sdk_sandbox.exec.start("sleep", args=["600"])
    await session.close()
    # When pid 1 started, in clock ticks: a new pid 1 started later.
    before = (await small_sdk_sandbox.exec.run("cut -d' ' -f22 /proc/1/stat")).stdout

    await getattr(small_sdk_sandbox, restart)()

    assert (await small_sdk_sandbox.exec.run("pgrep -x sleep || echo none")).stdout == "none\n"
    assert await small_sdk_sandbox.exec.list() == []
    assert await small_sdk_sandbox.files.read("kept.txt") == "on disk"
    assert (await small_sdk_sandbox.exec.run("cut -d' ' -f22 /proc/1/stat")).stdout != before
    assert (
        await small_sdk_sandbox.exec.run("hostname; whoami")
    ).stdout == f"{small_sdk_sandbox.sandbox_id}\nsandbox\n"
