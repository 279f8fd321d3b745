"""Hibernate is a pause: exec sessions survive it, through the official Python SDK."""

from __future__ import annotations

import asyncio

import pytest
from opencomputer import Sandbox

pytestmark = pytest.mark.slow

# Counts for ever, one line every 0.2 s: a restarted command would start again at 0.
COUNTER = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"


def _ticks(output: bytearray) -> list[int]:
    return [int(line.split()[1]) for line in output.decode().splitlines() if line.startswith("tick ")]


async def _until(condition: object, what: str) -> None:
    for _ in range(300):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_session_survives_hibernate_and_wake_with_its_scrollback(sdk_sandbox: Sandbox) -> None:
    before = bytearray()
    session = await sdk_sandbox.exec.start("sh", args=["-c", COUNTER], on_stdout=before.extend)
    await _until(lambda: len(_ticks(before)) >= 3, "the first ticks")
    await session.close()

    await sdk_sandbox.hibernate()
    await sdk_sandbox.wake()

    listed = [info for info in await sdk_sandbox.exec.list() if info.session_id == session.session_id]
    assert [(info.running, info.exit_code) for info in listed] == [(True, None)]

    replay, live = bytearray(), bytearray()
    replayed = asyncio.Event()

    def on_stdout(data: bytes) -> None:
        (live if replayed.is_set() else replay).extend(data)

    attached = await sdk_sandbox.exec.attach(
        session.session_id, on_stdout=on_stdout, on_scrollback_end=replayed.set
    )
    await _until(lambda: len(_ticks(live)) >= 2, "live ticks after the wake")
    replayed_ticks, live_ticks = _ticks(replay), _ticks(live)
    # The replay starts where the command started and runs on without a gap; the live output
    # carries on from it: the same process, never restarted.
    assert replayed_ticks[:3] == [0, 1, 2]
    assert replayed_ticks == list(range(len(replayed_ticks)))
    assert live_ticks[0] >= replayed_ticks[-1] + 1 and live_ticks == sorted(live_ticks)
    await attached.kill()
    assert await attached.done == -1  # killed by a signal, as the service reports it
    await attached.close()
