"""A checkpoint holds its sandbox's own disk and nothing else, whatever the sandbox does while it is taken.

The attack that worked on copied checkpoints: code inside swaps directories for links (to the host's
paths and to another sandbox's) as fast as it can while checkpoints are taken, hoping the host-side
copy descends through a link. Checkpoints now clone the disk image, so there is no walk to steer;
these tests keep it that way, with limits (the processes paused for the clone) and without them.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest

from prefect_opencomputer.local import LocalServer, LocalServerConfig
from tests.security.conftest import NewSandbox, checkpoint_ready, run_ok

pytestmark = pytest.mark.security

SWAPPER = r"""
import os, sys, time
race, targets = sys.argv[1], sys.argv[2:]
os.makedirs(race, exist_ok=True)
deadline = time.time() + 30
while time.time() < deadline:
    for index, target in enumerate(targets):
        slot = os.path.join(race, f"d{index}")
        try:
            os.mkdir(slot + ".dir")
        except FileExistsError:
            pass
        try:
            os.symlink(target, slot + ".link")
        except FileExistsError:
            pass
        # Swap the names round, so a walker that looked at a directory descends a link.
        os.replace(slot + ".link", slot)
        os.rename(slot, slot + ".link")
        os.replace(slot + ".dir", slot)
        os.rename(slot, slot + ".dir")
"""


@pytest.fixture
def host_canary(tmp_path: Path) -> tuple[Path, str]:
    """A root-only file on the host whose content no sandbox may ever hold."""
    token = f"host-canary-{secrets.token_hex(8)}"
    directory = tmp_path / "canary"
    directory.mkdir(mode=0o700)
    (directory / "secret").write_text(token)
    (directory / "secret").chmod(0o600)
    return directory, token


async def _attack(
    http: httpx.AsyncClient, attacker: str, victim_disk: Path, host_dir: Path, checkpoints: int
) -> list[str]:
    """Swap links to the host and to the victim's disk while taking checkpoints; the checkpoint ids."""
    await run_ok(http, attacker, f"cat > /tmp/swap.py <<'EOF'\n{SWAPPER}\nEOF")
    targets = [str(host_dir), str(victim_disk), "/", "/proc/1/root", "../../../../.."]
    command = "sudo nohup python3 /tmp/swap.py /home/sandbox/race " + " ".join(targets)
    await run_ok(http, attacker, f"{command} >/dev/null 2>&1 &")
    taken = []
    for index in range(checkpoints):
        taken.append(await checkpoint_ready(http, attacker, f"race-{index}"))
    # The swapping ran all along (so the checks below are not vacuous).
    slots = await run_ok(http, attacker, "sudo ls /home/sandbox/race")
    assert len(slots.split()) >= len(targets), slots
    await run_ok(http, attacker, "sudo pkill -f '/tmp/swa[p].py'; true")
    return taken


async def _holds_nothing_foreign(http: httpx.AsyncClient, checkpoint: str, tokens: list[str]) -> None:
    forked = await http.post(f"/sandboxes/from-checkpoint/{checkpoint}", json={})
    assert forked.status_code == 201, forked.text
    fork = forked.json()["sandboxID"]
    try:
        # Everything the attacker's disk holds, searched without following links.
        found = await run_ok(
            http, fork, "sudo grep -rlF -e " + " -e ".join(tokens) + " /home /tmp /root /etc || true"
        )
        assert found.strip() == "", found
        entries = await run_ok(http, fork, "sudo find /home/sandbox/race -mindepth 2 | head -5")
        assert entries.strip() == "", f"a checkpoint took something through a link: {entries}"
    finally:
        await http.delete(f"/sandboxes/{fork}")


async def test_swapping_links_during_checkpoints_puts_nothing_foreign_in_them(
    http: httpx.AsyncClient,
    new_sandbox: NewSandbox,
    local_server: LocalServer,
    host_canary: tuple[Path, str],
) -> None:
    host_dir, host_token = host_canary
    victim = await new_sandbox()
    victim_token = f"victim-{secrets.token_hex(8)}"
    await run_ok(http, victim, f"echo {victim_token} > private.txt && sync")
    victim_disk = local_server.data_dir / "runtime" / "layers" / "sandboxes" / victim / "disk"
    attacker = await new_sandbox()
    for checkpoint in await _attack(http, attacker, victim_disk, host_dir, checkpoints=4):
        await _holds_nothing_foreign(http, checkpoint, [host_token, victim_token])


async def test_without_limits_checkpoints_hold_only_the_sandboxs_own_disk_too(
    tmp_path: Path, host_canary: tuple[Path, str]
) -> None:
    host_dir, host_token = host_canary
    with LocalServer(LocalServerConfig(data_dir=tmp_path / "data", limits=False)) as server:
        async with httpx.AsyncClient(
            base_url=server.api_url, headers={"X-API-Key": server.api_key}, timeout=120
        ) as http:
            victim = (await http.post("/sandboxes", json={"timeout": 0})).json()["sandboxID"]
            victim_token = f"victim-{secrets.token_hex(8)}"
            await run_ok(http, victim, f"echo {victim_token} > private.txt && sync")
            victim_disk = server.data_dir / "runtime" / "layers" / "sandboxes" / victim / "disk"
            attacker = (await http.post("/sandboxes", json={"timeout": 0})).json()["sandboxID"]
            for checkpoint in await _attack(http, attacker, victim_disk, host_dir, checkpoints=3):
                await _holds_nothing_foreign(http, checkpoint, [host_token, victim_token])
            for sandbox in (attacker, victim):
                await http.delete(f"/sandboxes/{sandbox}")
