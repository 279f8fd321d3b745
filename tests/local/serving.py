"""``prefect-opencomputer local serve`` as a child process, for tests that signal or kill it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

COMMAND = [sys.executable, "-m", "prefect_opencomputer.cli", "local", "serve"]


def environment(**overrides: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "OPENCOMPUTER_LOCAL_API_KEY"}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


class Served:
    """A ``local serve`` process whose combined output goes to a file (pipes would need a reader)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("w") as sink:
            self.process = subprocess.Popen([*COMMAND, *args], env=env, stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while (match := re.search(r"on (http://127\.0\.0\.1:\d+)", log.read_text())) is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"local serve did not start: {log.read_text()}")
            time.sleep(0.02)
        self.url = match.group(1)

    def signal(self, signum: int) -> str:
        self.process.send_signal(signum)
        self.process.wait(timeout=60)
        return self.log.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def wait_until_serving(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/api/sandboxes", timeout=5)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError(f"{url} never answered")


def processes_mentioning(text: str) -> list[int]:
    """Pids that name ``text`` in their command line, cgroups or mounts.

    A sandbox's processes sit in a cgroup named after it, and its helper's mount table holds the
    disk mounted below the data dir (the helper's command line names neither: it is overwritten).
    """
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if any(text.encode() in Path(entry.path, name).read_bytes() for name in _NAMING):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


_NAMING = ("cmdline", "cgroup", "mountinfo")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
