"""The machine a run measured: figures mean little without it."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


@dataclass(frozen=True)
class Machine:
    cpu_model: str
    cores: int
    memory_gib: float
    kernel: str
    os_name: str
    python: str
    bubblewrap: str
    prefect: str
    date: str

    def lines(self) -> list[tuple[str, str]]:
        return [
            ("CPU", self.cpu_model),
            ("Cores", str(self.cores)),
            ("Memory", f"{self.memory_gib:.1f} GiB"),
            ("Kernel", self.kernel),
            ("OS", self.os_name),
            ("Python", self.python),
            ("bubblewrap", self.bubblewrap),
            ("Prefect", self.prefect),
            ("Date", self.date),
        ]


def describe() -> Machine:
    return Machine(
        cpu_model=_cpu_model(),
        cores=os.cpu_count() or 0,
        memory_gib=_memory_kib() / 1024 / 1024,
        kernel=platform.release(),
        os_name=_os_name(),
        python=platform.python_version(),
        bubblewrap=_command_version(["bwrap", "--version"]),
        prefect=_package_version("prefect"),
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )


def _cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_kib() -> int:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 0


def _os_name() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return platform.system()


def _command_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "absent"
    return done.stdout.strip() or "unknown"


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""
