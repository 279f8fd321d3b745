"""How commands start in a sandbox: forked by its boot process, in its cgroups, with nothing of the host."""

from __future__ import annotations

import asyncio

from booting import LIMITS

from prefect_opencomputer.local.sandbox.cgroups import Limits
from prefect_opencomputer.local.sandbox.runtime import SandboxRuntime

# Few enough processes to use them all up from inside.
FEW_PROCESSES = Limits(LIMITS.memory_bytes, 24, LIMITS.cpu_quota_cores)
LIST_OWN_FDS = "ls -l /proc/self/fd"
# Fork until the limit refuses, then hold every process a while.
FILL_PROCESSES = """
import os, time
while True:
    try:
        if os.fork() == 0:
            time.sleep(3)
            os._exit(0)
    except OSError:
        break
time.sleep(3)
"""


async def _boot(runtime: SandboxRuntime, sandbox_id: str, limits: Limits = LIMITS) -> str:
    runtime.layers.create_sandbox(sandbox_id)
    await runtime.start(sandbox_id, template="base", network=False, limits=limits)
    return sandbox_id


def _descriptors(listing: bytes) -> dict[str, str]:
    """Descriptor -> what it is, from ``ls -l``, without the one ``ls`` reads the listing through."""
    held = {}
    for line in listing.decode().splitlines():
        if " -> " in line:
            name, target = line.split(" -> ")
            held[name.split()[-1]] = target
    return {fd: target for fd, target in held.items() if not target.endswith("/fd")}


async def test_a_command_holds_its_stdio_and_nothing_of_the_server(runtime: SandboxRuntime) -> None:
    sandbox = await _boot(runtime, "sb-fdsx0001")
    for as_root in (False, True):
        result = await runtime.run(sandbox, ["/bin/sh", "-c", LIST_OWN_FDS], as_root=as_root)
        held = _descriptors(result.stdout)
        assert sorted(held) == ["0", "1", "2"], held
        assert held["0"] == "/dev/null"
        assert held["1"].startswith("pipe:") and held["2"].startswith("pipe:")
    session = await runtime.spawn(sandbox, ["/bin/sh", "-c", f"read line; exec {LIST_OWN_FDS}"], stdin=True)
    assert session.stdin is not None and session.stdout is not None
    session.stdin.write(b"go\n")
    await session.stdin.drain()
    held = _descriptors(await session.stdout.read())
    assert await session.wait() == 0
    assert sorted(held) == ["0", "1", "2"] and held["0"].startswith("pipe:"), held


async def test_a_command_too_large_for_one_request_still_runs(runtime: SandboxRuntime) -> None:
    sandbox = await _boot(runtime, "sb-bigx0001")
    words = ["a" * 100_000, "b" * 90_000]
    result = await runtime.run(sandbox, ["/bin/sh", "-c", 'echo "${#1} ${#2}"', "sh", *words])
    assert (result.exit_code, result.stdout) == (0, b"100000 90000\n")


async def test_exit_codes_and_signals_reach_the_caller(runtime: SandboxRuntime) -> None:
    sandbox = await _boot(runtime, "sb-exit0001")
    assert (await runtime.run(sandbox, ["/bin/sh", "-c", "exit 7"])).exit_code == 7
    assert (await runtime.run(sandbox, ["/bin/sh", "-c", "kill -TERM $$"])).exit_code == -1
    missing = await runtime.run(sandbox, ["no-such-command"])
    assert missing.exit_code == 127 and b"no-such-command" in missing.stderr
    process = await runtime.spawn(
        sandbox, ["/bin/sh", "-c", "trap 'echo got TERM; exit 3' TERM; sleep 30 >/dev/null & wait"]
    )
    assert process.stdout is not None
    await asyncio.sleep(0.3)  # the trap is set once the shell runs
    process.terminate()  # forwarded to the command by its carrier
    assert await asyncio.wait_for(process.wait(), 10) == 3
    assert await process.stdout.read() == b"got TERM\n"


async def test_a_sandbox_at_its_process_limit_still_answers_and_recovers(runtime: SandboxRuntime) -> None:
    sandbox = await _boot(runtime, "sb-pids0001", FEW_PROCESSES)
    await runtime.run(sandbox, ["/bin/sh", "-c", f"nohup python3 -c '{FILL_PROCESSES}' >/dev/null 2>&1 &"])
    for _ in range(100):
        answer = await runtime.run(sandbox, ["echo", "hi"])
        if answer.exit_code != 0:
            break
        await asyncio.sleep(0.05)
    # Refused as a command a VM could not fork would be: a result with the reason, not an error.
    assert answer.exit_code == 125 and b"fork" in answer.stderr, answer
    for _ in range(100):
        if (await runtime.run(sandbox, ["echo", "hi"])).stdout == b"hi\n":
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("commands never ran again once the processes ended")
