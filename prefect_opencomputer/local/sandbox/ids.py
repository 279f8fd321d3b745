"""How a sandbox's users map onto this host's ids.

Root filesystems and disks store their owners in one canonical range, HOST_ID_BASE..+ID_COUNT-1,
that no sandbox ever runs as. Every running sandbox gets a range of its own, `range_base(slot)`
for a slot no other live sandbox holds, and sees its files through idmapped mounts: ids
0..ID_COUNT-1 inside are that range outside. Root inside is an unprivileged nobody outside, never
host uid 0, never a real user, and never the same host id as another sandbox's, so what the
kernel counts per user (descriptors in flight, pipe buffers, keys) is its own.
"""

from __future__ import annotations

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


ROOT_OWNER = (host_id(0), host_id(0))  # root:root inside, as stored on disk
SANDBOX_OWNER = (host_id(SANDBOX_UID), host_id(SANDBOX_GID))
