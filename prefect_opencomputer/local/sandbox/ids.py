"""How a sandbox's users map onto this host's ids.

Root filesystems and disks store their owners in one canonical range, HOST_ID_BASE..+ID_COUNT-1,
that no sandbox ever runs as. Every running sandbox gets a range of its own, `range_base(slot)`
for a slot no other live sandbox holds, and sees its files through idmapped mounts: ids
0..ID_COUNT-1 inside are that range outside. Root inside is an unprivileged nobody outside, never
host uid 0, never a real user, and never the same host id as another sandbox's, so what the
kernel counts per user (descriptors in flight, pipe buffers, keys) is its own.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

HOST_ID_BASE = 100_000_000
ID_COUNT = 65_536

SANDBOX_USER = "sandbox"
SANDBOX_UID = 1000
SANDBOX_GID = 1000
SANDBOX_HOME = "/home/sandbox"
SUDO_GID = 27  # static in Debian's base-passwd, as in the hosted Ubuntu image


def host_id(inner: int) -> int:
    """The host uid or gid that an id inside a sandbox is."""
    if not 0 <= inner < ID_COUNT:
        raise ValueError(f"id {inner} is outside a sandbox's range")
    return HOST_ID_BASE + inner


# The most slots whose ranges stay below 2**32 - 1 (the kernel's invalid id).
MAX_SLOTS = (2**32 - 1 - HOST_ID_BASE) // ID_COUNT - 1


def range_base(slot: int) -> int:
    """The first host id of a running sandbox's own range (slot 0 is the canonical, stored range)."""
    if not 1 <= slot <= MAX_SLOTS:
        raise ValueError(f"id range slot {slot} out of 1..{MAX_SLOTS}")
    return HOST_ID_BASE + slot * ID_COUNT


class IdSlots:
    """Which sandbox holds which id range slot, kept in the data dir.

    A sandbox takes the lowest free slot at its first boot and keeps it while it lives, hibernated
    or stopped with its server included; the slot is free again only once the sandbox is gone (its
    disk removed, so none of its processes is left). No other sandbox ever runs as ids that one
    still may: whatever the kernel keeps per user for a while after its processes (keys awaiting
    collection, for one) is never handed to another sandbox.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._held: dict[str, int] = {}

    def load(self, exists: Callable[[str], bool]) -> None:
        """Read the slots a stopped server left, keeping those whose sandbox still ``exists``."""
        try:
            held = json.loads(self._path.read_text())
        except FileNotFoundError:
            held = {}
        except (OSError, ValueError) as error:
            logger.warning("the id range slots could not be read (%s): every sandbox takes a new one", error)
            held = {}
        self._held = {
            sandbox_id: slot
            for sandbox_id, slot in (held.items() if isinstance(held, dict) else ())
            if isinstance(slot, int) and 1 <= slot <= MAX_SLOTS and exists(sandbox_id)
        }
        self._save()

    def hold(self, sandbox_id: str) -> int:
        """The sandbox's slot: the one it holds, or the lowest one nobody holds."""
        slot = self._held.get(sandbox_id)
        if slot is None:
            taken = set(self._held.values())
            slot = next(slot for slot in range(1, MAX_SLOTS + 1) if slot not in taken)
            self._held[sandbox_id] = slot
            self._save()
        return slot

    def release(self, sandbox_id: str) -> None:
        """The sandbox is gone: its slot may go to another."""
        if self._held.pop(sandbox_id, None) is not None:
            self._save()

    def _save(self) -> None:
        # Whole or not at all: a server killed while writing leaves the last whole list.
        partial = self._path.with_name(f".{self._path.name}.partial")
        partial.write_text(json.dumps(self._held))
        os.replace(partial, self._path)


ROOT_OWNER = (host_id(0), host_id(0))  # root:root inside, as stored on disk
SANDBOX_OWNER = (host_id(SANDBOX_UID), host_id(SANDBOX_GID))
