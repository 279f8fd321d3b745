"""Sandboxes booted ahead of their create, as the hosted edge keeps a warm pool for the default shape.

A create of the default shape (the base template, 4096 MB, 1 vCPU, the smallest disk, a network: the
shape the hosted service's "edge claim" fast path serves) takes a spare that is already booted, so it
costs a record and no boot. Each spare is a sandbox of its own from the start: its id,
hostname, disk and cgroups are the ones its create hands out, so nothing is renamed when it is taken.
Until then it is a pending record (unlisted, unbilled, not counted against the running cap), so a
server killed with spares leaves them to the next start's recovery, as any half-made create.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from prefect_opencomputer.local.backend import sizing
from prefect_opencomputer.local.backend.records import SandboxRecord, new_token, utc_now

if TYPE_CHECKING:
    from prefect_opencomputer.local.backend.core import SandboxCore

logger = logging.getLogger(__name__)

# After a spare fails to boot, wait this long before trying again (a broken host must not spin).
_RETRY_SECONDS = 5.0
# How long after a spare is taken the pool starts booting its replacement (measured: a first command
# right after its create took 29 ms at p50 with an immediate refill, 20 ms with this delay).
_REFILL_DELAY_SECONDS = 0.2


def spare_shape(record: SandboxRecord) -> tuple[object, ...]:
    """What a boot depends on; a create whose record has the spares' shape can take one."""
    return (record.template, record.cpu_count, record.memory_mb, record.disk_mb, record.network_enabled)


def _spare_record(sandbox_id: str) -> SandboxRecord:
    return SandboxRecord(
        id=sandbox_id,
        status="pending",
        template=sizing.DEFAULT_TEMPLATE,
        timeout=0,
        cpu_count=sizing.DEFAULT_CPU_COUNT,
        memory_mb=sizing.DEFAULT_MEMORY_MB,
        disk_mb=sizing.MIN_DISK_MB,
        token=new_token(),
        started_at=utc_now(),
    )


class WarmPool:
    """Up to ``size`` booted spares of the default shape, topped up in the background."""

    def __init__(self, core: SandboxCore, size: int) -> None:
        self._core = core
        self._size = size
        self._ready: list[str] = []
        self._booting: set[str] = set()
        self._filling: asyncio.Task[None] | None = None
        self._draining = asyncio.Event()
        self._refill: asyncio.TimerHandle | None = None
        self._shape = spare_shape(_spare_record(""))

    @property
    def ready(self) -> int:
        """Spares booted and waiting for a create."""
        return len(self._ready)

    @property
    def ids(self) -> frozenset[str]:
        """Every spare, ready or still booting: none of them is a client's sandbox yet."""
        return frozenset(self._ready) | frozenset(self._booting)

    def start(self) -> None:
        """Begin (or resume) keeping the pool full."""
        self._draining.clear()
        if self._size > 0 and (self._filling is None or self._filling.done()):
            self._filling = asyncio.create_task(self._fill(), name="warm-pool")

    def take(self, record: SandboxRecord) -> str | None:
        """A ready spare for ``record`` (None when its shape differs or none is ready); the pool refills."""
        if spare_shape(record) != self._shape or not self._ready:
            return None
        spare = self._ready.pop(0)
        # Not at once: the first command of the sandbox just taken would share the CPU with a boot.
        if self._refill is None:
            self._refill = asyncio.get_running_loop().call_later(_REFILL_DELAY_SECONDS, self._top_up)
        return spare

    def _top_up(self) -> None:
        """Refill after a take, unless the pool was drained meanwhile (a server closing)."""
        self._refill = None
        if not self._draining.is_set():
            self.start()

    async def drain(self) -> None:
        """Stop filling and remove every spare, its record and layer with it.

        A spare booting now finishes its boot first: a boot cut short midway would leave its layer
        being made while it is removed.
        """
        self._draining.set()
        if self._refill is not None:
            self._refill.cancel()
            self._refill = None
        filling, self._filling = self._filling, None
        if filling is not None:
            await filling
        spares, self._ready = self._ready, []
        for spare in spares:
            await self._core.discard_sandbox(spare)

    async def _fill(self) -> None:
        while len(self._ready) < self._size and not self._draining.is_set():
            spare = self._core.unused_sandbox_id()
            self._booting.add(spare)
            try:
                await self._core.boot_spare(_spare_record(spare))
            except Exception as error:  # the creates boot as before; say why once per attempt
                logger.warning("could not boot a warm sandbox (creates boot their own): %s", error)
                await self._core.discard_sandbox(spare)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._draining.wait(), _RETRY_SECONDS)
                continue
            finally:
                self._booting.discard(spare)
            self._ready.append(spare)


async def close_pool(pool: WarmPool) -> None:
    """`WarmPool.drain`, never raising: a spare left now goes with the next start's recovery."""
    with contextlib.suppress(Exception):
        await pool.drain()
