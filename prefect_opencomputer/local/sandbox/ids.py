"""How a sandbox's users map onto this host's ids.

Every sandbox runs in its own user namespace whose ids 0..ID_COUNT-1 are the host ids
HOST_ID_BASE..HOST_ID_BASE+ID_COUNT-1: root inside is an unprivileged nobody outside, never host
uid 0 and never a real user. Root filesystems and layers are owned by ids in that range.
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


ROOT_OWNER = (host_id(0), host_id(0))  # root:root inside, as host ids
SANDBOX_OWNER = (host_id(SANDBOX_UID), host_id(SANDBOX_GID))
