"""Class 1: the sandbox replaces the binaries the server might run, and they never run as host root.

Each payload is benign: it records its uid and ``/proc/self/uid_map`` (a process in the sandbox's
user namespace shows the sandbox's id range, one in the host's namespace the identity map), then
runs the real binary, which the sandbox keeps aside. A copy of the record also goes to a host
directory that only a process on the host's filesystem can reach: it must stay empty.
"""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import httpx
import pytest

from tests.host_view import host_view, is_host_range_map, marked_sleep, new_marker
from tests.security.conftest import (
    HOST_UID_MAP,
    NewSandbox,
    checkpoint_ready,
    is_sandbox_uid_map,
    run_ok,
)

pytestmark = pytest.mark.security

# Replaced binary -> the real one the payload hands over to (kept aside inside the sandbox).
REPLACED = {
    "/usr/bin/dash": "/usr/bin/dash.real",
    "/usr/bin/sh": "/usr/bin/dash.real",
    "/usr/bin/setpriv": "/usr/bin/setpriv.real",
    "/usr/bin/nsenter": "/usr/bin/nsenter.real",
    "/usr/bin/env": "/usr/bin/env.real",
}
# Keep the real binaries, and make /usr/bin/sh (a link to dash) a file of its own to replace.
SET_ASIDE = (
    "set -e; for b in dash setpriv nsenter env; do sudo cp -a /usr/bin/$b /usr/bin/$b.real; done; "
    "sudo rm /usr/bin/sh; sudo cp -a /usr/bin/dash.real /usr/bin/sh"
)
# Every replaced binary, run by the sandbox's own user: the payloads demonstrably work.
EXERCISE = (
    "/usr/bin/sh -c true; /usr/bin/dash -c true; /usr/bin/env true; "
    "/usr/bin/setpriv --dump >/dev/null; /usr/bin/nsenter --version >/dev/null"
)
READ_RECORDS = 'for f in /home/sandbox/ran-as.*; do [ -e "$f" ] && { cat "$f"; echo ---; }; done; true'


def payload(real: str, host_dir: Path) -> bytes:
    return (
        "#!/bin/bash\n"
        'record() { { id -u; cat /proc/self/uid_map; } 2>/dev/null >"$1"; }\n'
        "record /home/sandbox/ran-as.$$\n"
        f"record {host_dir}/ran-as.$$\n"
        f'exec {real} "$@"\n'
    ).encode()


async def plant_with_files_api(http: httpx.AsyncClient, sandbox: str, host_dir: Path) -> None:
    await run_ok(http, sandbox, SET_ASIDE, bash=True)
    for target, real in REPLACED.items():
        written = await http.put(
            f"/sandboxes/{sandbox}/files", params={"path": target}, content=payload(real, host_dir)
        )
        assert written.status_code == 204, written.text


async def plant_with_sudo_cp(http: httpx.AsyncClient, sandbox: str, host_dir: Path) -> None:
    await run_ok(http, sandbox, SET_ASIDE, bash=True)
    for target, real in REPLACED.items():
        encoded = base64.b64encode(payload(real, host_dir)).decode()
        name = Path(target).name
        await run_ok(
            http,
            sandbox,
            f"echo {encoded} | base64 -d > /tmp/{name} && sudo cp /tmp/{name} {target}",
            bash=True,
        )


PLANTERS = {"files-api": plant_with_files_api, "sudo-cp": plant_with_sudo_cp}


def parse_records(text: str) -> list[tuple[str, list[str]]]:
    """(uid, uid_map fields) of each record ``READ_RECORDS`` printed."""
    records = []
    for chunk in text.split("---\n"):
        lines = chunk.strip().splitlines()
        if lines:
            records.append((lines[0], lines[1].split() if len(lines) > 1 else []))
    return records


async def records_in(http: httpx.AsyncClient, sandbox: str) -> list[tuple[str, list[str]]]:
    return parse_records(await run_ok(http, sandbox, READ_RECORDS, bash=True))


def assert_never_host_root(records: list[tuple[str, list[str]]], host_dir: Path) -> None:
    for uid, uid_map in records:
        assert uid_map != HOST_UID_MAP, (uid, uid_map)
        assert is_sandbox_uid_map(uid_map), (uid, uid_map)
    assert sorted(p.name for p in host_dir.iterdir()) == [], "a payload ran on the host's filesystem"


@pytest.fixture
def host_dir(tmp_path: Path) -> Path:
    """Where a payload running on the host would leave its record (open to any host user)."""
    directory = tmp_path / f"oc-payload-{uuid.uuid4().hex[:8]}"
    directory.mkdir()
    directory.chmod(0o777)
    return directory


@pytest.mark.parametrize("planter", sorted(PLANTERS))
async def test_replaced_binaries_never_run_as_host_root_on_command_wake_fork_restore_or_kill(
    http: httpx.AsyncClient, new_sandbox: NewSandbox, host_dir: Path, planter: str
) -> None:
    sandbox = await new_sandbox()
    await PLANTERS[planter](http, sandbox, host_dir)
    await run_ok(http, sandbox, EXERCISE)
    exercised = await records_in(http, sandbox)
    assert len(exercised) >= len(REPLACED), exercised  # the payloads do run, inside
    assert {uid for uid, _ in exercised} == {"1000"}

    # A new command, and an exec session.
    await run_ok(http, sandbox, "true")
    session = await http.post(f"/sandboxes/{sandbox}/exec", json={"cmd": "/bin/sh", "args": ["-c", "true"]})
    assert session.status_code == 201, session.text
    # Hibernate and wake, then a command.
    assert (await http.post(f"/sandboxes/{sandbox}/hibernate")).status_code == 200
    assert (await http.post(f"/sandboxes/{sandbox}/wake", json={})).status_code == 200
    await run_ok(http, sandbox, "true")
    # A checkpoint (the payloads travel in it), a fork of it, a command in the fork, a patch run in it.
    checkpoint = await checkpoint_ready(http, sandbox, f"payload-{uuid.uuid4().hex[:8]}")
    patch = await http.post(
        f"/sandboxes/checkpoints/{checkpoint}/patches", json={"script": "/bin/sh -c true; /usr/bin/env true"}
    )
    assert patch.status_code == 201, patch.text
    forked = await http.post(f"/sandboxes/from-checkpoint/{checkpoint}", json={})
    assert forked.status_code == 201, forked.text
    fork = forked.json()["sandboxID"]
    try:
        await run_ok(http, fork, "true")
        fork_records = await records_in(http, fork)
        assert len(fork_records) > len(exercised)  # the fork's own command and patch ran them too
    finally:
        await http.delete(f"/sandboxes/{fork}")

    # Restoring the checkpoint reboots the sandbox over a copy of its layer, payloads included.
    restored = await http.post(f"/sandboxes/{sandbox}/checkpoints/{checkpoint}/restore")
    assert restored.status_code == 200, restored.text
    await run_ok(http, sandbox, "true")

    records = await records_in(http, sandbox)
    assert len(records) > len(exercised)
    assert_never_host_root(records + fork_records, host_dir)
    # Kill: nothing of the sandbox runs on the host on the way out.
    assert (await http.delete(f"/sandboxes/{sandbox}")).status_code == 204
    assert_never_host_root([], host_dir)


@pytest.mark.slow
async def test_binaries_replaced_in_an_image_build_step_never_run_as_host_root(
    http: httpx.AsyncClient, host_dir: Path
) -> None:
    plant = [
        "set -e",
        *(f"sudo cp -a /usr/bin/{b} /usr/bin/{b}.real" for b in ("dash", "setpriv", "nsenter", "env")),
        "sudo rm /usr/bin/sh",
        *(
            f"echo {base64.b64encode(payload(real, host_dir)).decode()} | base64 -d"
            f" | sudo tee {target} >/dev/null && sudo chmod 0755 {target}"
            for target, real in REPLACED.items()
        ),
    ]
    manifest = {
        "base": "base",
        "steps": [
            {"type": "run", "args": {"commands": [" && ".join(plant[1:]), f"echo {uuid.uuid4().hex}"]}},
            {"type": "workdir", "args": {"path": "/srv/after-payload"}},
            {"type": "run", "args": {"commands": ["/usr/bin/env true && /bin/sh -c true"]}},
            {"type": "env", "args": {"vars": {"AFTER": "payload"}}},
        ],
    }
    created = await http.post("/sandboxes", json={"image": manifest, "timeout": 0})
    assert created.status_code == 201, created.text
    sandbox = created.json()["sandboxID"]
    try:
        await run_ok(http, sandbox, "true")
        records = await records_in(http, sandbox)
        # Build steps run as the sandbox user, as the hosted builder runs them (their sudo ran too).
        assert records and {uid for uid, _ in records} <= {"0", "1000"}, records
        assert_never_host_root(records, host_dir)
    finally:
        await http.delete(f"/sandboxes/{sandbox}")
    assert_never_host_root([], host_dir)


async def test_every_command_runs_in_the_sandbox_id_range(
    http: httpx.AsyncClient, new_sandbox: NewSandbox
) -> None:
    sandbox = await new_sandbox()
    for script in (
        "cat /proc/self/uid_map",
        "sudo cat /proc/self/uid_map",
        "sudo -u nobody cat /proc/self/uid_map",
    ):
        out = await run_ok(http, sandbox, script)
        assert is_sandbox_uid_map(out.split()), script
    gid_map = await run_ok(http, sandbox, "cat /proc/self/gid_map")
    assert is_sandbox_uid_map(gid_map.split())
    direct = await http.post(  # argv form, no shell
        f"/sandboxes/{sandbox}/exec/run", json={"cmd": "cat", "args": ["/proc/self/uid_map"]}
    )
    assert is_sandbox_uid_map(direct.json()["stdout"].split())
    # That namespace, seen from the host, is the sandbox's own id range; every command runs in it.
    marker = new_marker()
    await run_ok(http, sandbox, marked_sleep(marker), bash=True)
    seen = host_view(marker)
    assert is_host_range_map(seen.uid_map) and seen.gid_map == seen.uid_map, seen
    for script in ("readlink /proc/self/ns/user", "sudo readlink /proc/self/ns/user"):
        assert (await run_ok(http, sandbox, script)).strip() == seen.user_namespace, script
