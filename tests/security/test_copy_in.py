"""Forks and restores of a checkpoint holding planted links: the links stay links, resolving inside."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.security.conftest import NewSandbox, checkpoint_ready, is_sandbox_uid_map, run_ok

pytestmark = pytest.mark.security


async def test_links_in_a_checkpoint_are_copied_as_links_never_followed_onto_the_host(
    http: httpx.AsyncClient, new_sandbox: NewSandbox, tmp_path: Path
) -> None:
    canary = tmp_path / "canary"  # a host directory a followed link would write into
    canary.mkdir()
    source = await new_sandbox()
    plant = (
        f"sudo ln -s {canary} /home/sandbox/escape && sudo ln -s / /home/sandbox/hostroot && "
        "sudo mkdir -p /home/sandbox/d && sudo ln -s /etc /home/sandbox/d/etc && "
        "id -u > /home/sandbox/ran-as && cat /proc/self/uid_map >> /home/sandbox/ran-as"
    )
    await run_ok(http, source, plant)
    checkpoint = await checkpoint_ready(http, source, "links")

    forked = await http.post(f"/sandboxes/from-checkpoint/{checkpoint}", json={})
    assert forked.status_code == 201, forked.text
    fork = forked.json()["sandboxID"]
    try:
        seen = await run_ok(
            http, fork, "for l in escape hostroot d/etc; do readlink /home/sandbox/$l; done; hostname"
        )
        assert seen.split() == [str(canary), "/", "/etc", fork]  # links, resolving inside the fork
        restored = await http.post(f"/sandboxes/{source}/checkpoints/{checkpoint}/restore")
        assert restored.status_code == 200, restored.text
        after = await run_ok(http, source, "readlink /home/sandbox/escape; cat /home/sandbox/ran-as")
        words = after.split()
        assert words[:2] == [str(canary), "1000"] and is_sandbox_uid_map(words[2:]), words
    finally:
        await http.delete(f"/sandboxes/{fork}")
    assert list(canary.iterdir()) == [], "a copy-in wrote through a planted link onto the host"
