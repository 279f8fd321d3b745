"""Memory of a process and everything it started, read from /proc.

RSS counts shared pages (libc, the bwrap binary) once per process; PSS splits them between the
processes that share them, so a sum of PSS is what a tree of processes really costs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TreeMemory:
    root_rss_kib: int  # the process itself
    root_pss_kib: int
    descendants_pss_kib: int  # everything it started, however deep
    descendants: int

    @property
    def total_pss_kib(self) -> int:
        return self.root_pss_kib + self.descendants_pss_kib


def tree_memory(pid: int) -> TreeMemory:
    rss, pss = _rollup(pid)
    children = descendants(pid)
    return TreeMemory(
        root_rss_kib=rss,
        root_pss_kib=pss,
        descendants_pss_kib=sum(_rollup(child)[1] for child in children),
        descendants=len(children),
    )


def kernel_kib() -> int:
    """Kernel memory that namespaces, mounts and processes cost (slab, stacks, page tables), host-wide."""
    fields = {"Slab", "KernelStack", "PageTables"}
    total = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in fields:
            total += int(rest.split()[0])
    return total


def descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields after the last ")" are fixed.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in parents.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def _rollup(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key == "Rss":
            rss = int(rest.split()[0])
        elif key == "Pss":
            pss = int(rest.split()[0])
    return rss, pss
