"""The bare operations our figures are judged against: a bubblewrap spawn, a `cp -a`, and the test tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# 200 MB in 2,000 files: 20 directories of 100 files of 100,000 bytes.
TREE_DIRS = 20
TREE_FILES_PER_DIR = 100
TREE_FILE_BYTES = 100_000
TREE_BYTES = TREE_DIRS * TREE_FILES_PER_DIR * TREE_FILE_BYTES

# The same program builds the tree inside a sandbox (run by the sandbox's python3) and on the host.
TREE_SCRIPT = f"""\
import os, sys
root = sys.argv[1]
for d in range({TREE_DIRS}):
    os.makedirs(os.path.join(root, "d%02d" % d), exist_ok=True)
    for f in range({TREE_FILES_PER_DIR}):
        with open(os.path.join(root, "d%02d" % d, "f%03d.bin" % f), "wb") as out:
            out.write(os.urandom({TREE_FILE_BYTES}))
"""

# The namespaces a sandbox gets, without its overlay: the cheapest isolated process bubblewrap can start.
BWRAP_TRUE = [
    "bwrap",
    "--ro-bind",
    "/",
    "/",
    "--dev",
    "/dev",
    "--proc",
    "/proc",
    "--unshare-pid",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-net",
    "--die-with-parent",
    "--",
    "/bin/true",
]


def spawn_bwrap_true() -> None:
    subprocess.run(BWRAP_TRUE, check=True, stdin=subprocess.DEVNULL)


def build_tree(root: Path) -> None:
    """Write the test tree on the host (same shape as inside the sandbox)."""
    subprocess.run([sys.executable, "-c", TREE_SCRIPT, str(root)], check=True)


def copy_tree(source: Path, target: Path) -> None:
    subprocess.run(["cp", "-a", "--", str(source), str(target)], check=True)


def remove_tree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def tree_size(root: Path) -> int:
    return sum(
        os.lstat(os.path.join(directory, name)).st_size
        for directory, _, files in os.walk(root)
        for name in files
    )
