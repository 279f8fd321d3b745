"""The org's running-sandbox quota as a Prefect global concurrency limit: a slot per sandbox, create to kill.

The hosted service runs at most 50 sandboxes per organisation and answers 429 past that. With
`concurrency_limit="opencomputer-sandboxes"` (after `prefect gcl create opencomputer-sandboxes --limit 50`)
every create and fork first takes a slot of that limit, so flow runs queue for the quota in Prefect
instead of racing into 429s. A slot is a Prefect concurrency lease:

- taken before the create request; given back if the create fails, however it fails;
- bound to the sandbox once it exists, and named in its tags (`prefect.concurrency_lease_id`), so the
  process that kills it, or a cleanup hook in another process, gives it back;
- given back on kill (whatever path kills it) and on hibernate (a hibernated sandbox does not count on
  the hosted service), taken again before a wake;
- renewed by this process while it holds it; a process that dies stops renewing, and the slot comes back
  by itself when the lease runs out (`LEASE_SECONDS`).

Renewals and give-backs go to the Prefect API from one thread with one connection, so a give-back never
waits on the API (20 give-backs at the end of a fan-out would otherwise add a second to it); what is
still queued when the process exits is given back then.

A limit that does not exist is skipped with a warning, unless `concurrency_strict=True`.
"""

from __future__ import annotations

import atexit
import contextvars
import queue
import threading
import time
from collections.abc import Mapping
from uuid import UUID

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency._asyncio import (
    ConcurrencySlotAcquisitionError,
    aacquire_concurrency_slots_with_lease,
)
from prefect.concurrency.context import ConcurrencyContext

from prefect_opencomputer.tasks import run_registry
from prefect_opencomputer.tasks.errors import ConcurrencyLimitMissingError

TAG_LEASE = "prefect.concurrency_lease_id"
# How long a slot outlives the last renewal of the process holding it.
LEASE_SECONDS = 300.0
_RENEW_EVERY = LEASE_SECONDS / 3

_lock = threading.Lock()
# Sandbox id -> the lease of its slot, while this process holds one for it.
_held: dict[str, UUID] = {}
# Sandbox id -> (limit, strict) of sandboxes created under a limit: a wake takes a slot again.
_limits: dict[str, tuple[str, bool]] = {}
_renewing: set[UUID] = set()
_give_backs: queue.SimpleQueue[UUID] = queue.SimpleQueue()
_keeper: threading.Thread | None = None


async def take_slot(limit: str, *, strict: bool) -> UUID | None:
    """Wait for a slot of `limit`; None when the limit does not exist (and `strict` is False)."""
    holder = None
    if (flow_run_id := run_registry.current_flow_run_id()) is not None:
        holder = ConcurrencyLeaseHolder(type="flow_run", id=UUID(flow_run_id))
    try:
        granted = await aacquire_concurrency_slots_with_lease(
            [limit], 1, lease_duration=LEASE_SECONDS, strict=strict, holder=holder
        )
    except ConcurrencySlotAcquisitionError as error:
        if strict and "must be created" in str(error):
            raise ConcurrencyLimitMissingError(limit) from None
        raise
    if not granted.limits:
        return None
    with _lock:
        _renewing.add(granted.lease_id)
    _ensure_keeper()
    # The task engine gives back, as the task ends, every lease taken inside it; this one lives until
    # the kill, and is ours to give back.
    if (context := ConcurrencyContext.get()) is not None and granted.lease_id in context.cleanup_lease_ids:
        context.cleanup_lease_ids.remove(granted.lease_id)
    return granted.lease_id


def lease_tags(lease: UUID | None) -> dict[str, str]:
    """The tag naming a sandbox's slot, so a cleanup in another process gives it back."""
    return {} if lease is None else {TAG_LEASE: str(lease)}


def bind(sandbox_id: str, lease: UUID | None, limit: str, *, strict: bool) -> None:
    """The slot `lease` is now the sandbox's (and a wake of it takes a slot of `limit` again)."""
    with _lock:
        _limits[sandbox_id] = (limit, strict)
        if lease is not None:
            _held[sandbox_id] = lease


async def give_back(lease: UUID) -> None:
    """Return a slot to its limit, now, from the keeper thread; never raises (an unreturned slot comes
    back when its lease runs out)."""
    with _lock:
        _renewing.discard(lease)
    _give_backs.put(lease)
    _ensure_keeper()


async def release_slot_of(sandbox_id: str, tags: Mapping[str, str] | None = None) -> None:
    """It stopped running (killed, hibernated): give back its slot, held here or named in `tags`."""
    with _lock:
        lease = _held.pop(sandbox_id, None)
    if lease is None and tags is not None and TAG_LEASE in tags:
        try:
            lease = UUID(tags[TAG_LEASE])
        except ValueError:
            return
    if lease is not None:
        await give_back(lease)


def forget(sandbox_id: str) -> None:
    """The sandbox is gone for good: no wake will ask for a slot again."""
    with _lock:
        _limits.pop(sandbox_id, None)


async def retake_slot(sandbox_id: str) -> UUID | None:
    """Before a wake: take a slot again for a sandbox created under a limit (None: no limit, or one held)."""
    with _lock:
        limited = _limits.get(sandbox_id)
        if limited is None or sandbox_id in _held:
            return None
    limit, strict = limited
    lease = await take_slot(limit, strict=strict)
    bind(sandbox_id, lease, limit, strict=strict)
    return lease


def _ensure_keeper() -> None:
    global _keeper
    with _lock:
        if _keeper is None or not _keeper.is_alive():
            # Prefect's settings (which API) live in context variables: the thread runs in a copy.
            context = contextvars.copy_context()
            _keeper = threading.Thread(
                target=context.run, args=(_keep_slots,), daemon=True, name="opencomputer-slot-keeper"
            )
            _keeper.start()


def _keep_slots() -> None:
    """Give back queued slots as they come; renew the held ones every `_RENEW_EVERY` seconds."""
    try:
        with get_client(sync_client=True) as prefect:
            renew_at = time.monotonic() + _RENEW_EVERY
            while True:
                try:
                    lease = _give_backs.get(timeout=max(0.0, renew_at - time.monotonic()))
                except queue.Empty:
                    _renew_all(prefect)
                    renew_at = time.monotonic() + _RENEW_EVERY
                    continue
                _release(prefect, lease)
    except Exception as error:  # the next give-back starts a new keeper; held leases run out meanwhile
        run_registry.run_logger().warning("Keeping concurrency slots stopped: %s", error)


def _release(prefect: SyncPrefectClient, lease: UUID) -> None:
    try:
        prefect.release_concurrency_slots_with_lease(lease_id=lease)
    except httpx.HTTPStatusError as error:
        if error.response.status_code != 404:  # 404: already given back, or expired
            run_registry.run_logger().warning(
                "Could not give back concurrency slot (lease %s): %s", lease, error
            )
    except Exception as error:
        run_registry.run_logger().warning(
            "Could not give back concurrency slot (lease %s): %s; it frees itself within %d s",
            lease,
            error,
            LEASE_SECONDS,
        )


def _renew_all(prefect: SyncPrefectClient) -> None:
    with _lock:
        leases = list(_renewing)
    for lease in leases:
        try:
            prefect.renew_concurrency_lease(lease_id=lease, lease_duration=LEASE_SECONDS)
        except httpx.HTTPStatusError as error:
            if error.response.status_code in (404, 410):
                with _lock:  # given back elsewhere (a cleanup hook in another process), or expired
                    _renewing.discard(lease)
            else:
                run_registry.run_logger().warning("Renewing concurrency lease %s failed: %s", lease, error)
        except Exception as error:
            run_registry.run_logger().warning("Renewing concurrency lease %s failed: %s", lease, error)


@atexit.register
def _give_back_the_rest() -> None:
    """At exit, what is still queued goes back now rather than when its lease runs out."""
    if _give_backs.empty():
        return
    try:
        with get_client(sync_client=True) as prefect:
            while not _give_backs.empty():
                _release(prefect, _give_backs.get_nowait())
    except Exception:
        pass  # the leases run out by themselves
