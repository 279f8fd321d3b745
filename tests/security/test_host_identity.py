"""Two sandboxes never share a host identity: what the kernel counts per user is each one's own.

Each running sandbox gets a host id range of its own. A sandbox that exhausts what Linux accounts
per user (keys and their quota, pipe buffer pages, descriptors in flight over unix sockets) hurts
only itself, and neither sees the other's keys in ``/proc/keys``. The payloads only count what
they get.
"""

from __future__ import annotations

import httpx
import pytest

from tests.security.conftest import NewSandbox, run_ok

pytestmark = pytest.mark.security

# Fills the user's key quota (descriptions the other sandbox must never see), holds pipes past the
# per-user soft limit of pipe pages, and puts 3,000 descriptors in flight; then holds it all.
HOG = r"""
import ctypes, fcntl, os, resource, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
keys = 0
while libc.syscall(248, b"user", f"secret-of-a-{keys}".encode(), b"0123456789", 10, -4) >= 0:
    keys += 1
pipes = []
for _ in range(128):
    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(write_end, 1031, 1 << 20)  # F_SETPIPE_SZ
    except OSError:
        pass
    pipes.append((read_end, write_end))
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
spare = os.open("/dev/null", os.O_RDONLY)
inflight = 0
while inflight < 3000:
    socket.send_fds(left, [b"x"], [spare] * 200)
    inflight += 200
open(sys.argv[1], "w").write(f"{keys} {inflight}\n")
time.sleep(600)
"""

# What a sandbox can still do: add a key, get a full-size pipe and grow it, pass a descriptor with a
# descriptor limit of 1024; and whether it sees the other's keys.
PROBE = r"""
import ctypes, fcntl, os, resource, socket
libc = ctypes.CDLL(None, use_errno=True)
key = libc.syscall(248, b"user", b"own-key", b"0123456789", 10, -4)
read_end, write_end = os.pipe()
size = fcntl.fcntl(write_end, 1032)  # F_GETPIPE_SZ
try:
    fcntl.fcntl(write_end, 1031, 1 << 20)
    grown = "grown"
except OSError as error:
    grown = f"refused:{error.errno}"
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
try:
    socket.send_fds(left, [b"x"], [read_end])
    passed = "passed"
except OSError as error:
    passed = f"refused:{error.errno}"
foreign = "secret-of-a" in open("/proc/keys").read()
print("key" if key >= 0 else "no-key", size, grown, passed, "sees-a" if foreign else "sees-none")
"""

UNHARMED = "key 65536 grown passed sees-none"


async def _write(http: httpx.AsyncClient, sandbox: str, path: str, content: str) -> None:
    response = await http.put(f"/sandboxes/{sandbox}/files", params={"path": path}, content=content)
    assert response.status_code == 204, response.text


async def test_one_sandbox_exhausting_per_user_kernel_limits_changes_nothing_for_another(
    http: httpx.AsyncClient, new_sandbox: NewSandbox
) -> None:
    hog, victim = await new_sandbox(), await new_sandbox()
    for sandbox in (hog, victim):
        await _write(http, sandbox, "/tmp/hog.py", HOG)
        await _write(http, sandbox, "/tmp/probe.py", PROBE)
    assert (await run_ok(http, victim, "python3 /tmp/probe.py")).strip() == UNHARMED

    held = await run_ok(
        http,
        hog,
        "nohup python3 /tmp/hog.py /tmp/held >/tmp/hog.log 2>&1 & "
        "for i in $(seq 300); do test -s /tmp/held && break; sleep 0.1; done; cat /tmp/held",
        timeout=60,
    )
    keys, inflight = (int(word) for word in held.split())
    assert keys > 0 and inflight == 3000, held
    # The hog has hurt itself (so the check on the victim is not vacuous) ...
    assert (await run_ok(http, hog, "python3 /tmp/probe.py")).split()[0] == "no-key"
    # ... and nobody else.
    assert (await run_ok(http, victim, "python3 /tmp/probe.py")).strip() == UNHARMED
