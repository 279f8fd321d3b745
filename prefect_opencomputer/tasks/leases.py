"""Owner leases: how the reaper knows that the process owning a sandbox is gone, whatever Prefect says.

A locally run `python flow.py` killed with SIGKILL (or an OOM, or a lost machine) leaves its flow run
Running in Prefect forever: no state says its sandboxes are orphans. So every process that creates a
sandbox holds a lease, a Prefect variable `opencomputer_lease_<id>` whose value says when it was last
renewed, renews it from a daemon thread while it lives, and tags each sandbox it creates with the lease's
name (`prefect.owner_lease`). A sandbox whose lease was not renewed for
`PREFECT_OPENCOMPUTER_ORPHAN_AFTER_SECONDS` (and which is at least that old) has outlived its owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import VariableCreate, VariableUpdate
from prefect.client.schemas.objects import State
from prefect.states import Crashed

from prefect_opencomputer._settings import DEFAULT_ORPHAN_AFTER_SECONDS, ORPHAN_AFTER_ENV

# The sandbox tag naming the lease of the process that created it.
TAG_OWNER_LEASE = "prefect.owner_lease"
LEASE_PREFIX = "opencomputer_lease_"
# Renewals per window: a few missed renewals (a slow API) never expire a live owner's lease.
_RENEWALS_PER_WINDOW = 4
_MAX_RENEW_INTERVAL = 60.0


def orphan_after_seconds() -> float:
    """The window after which an unrenewed lease has expired (`PREFECT_OPENCOMPUTER_ORPHAN_AFTER_SECONDS`)."""
    value = os.environ.get(ORPHAN_AFTER_ENV)
    if not value:
        return DEFAULT_ORPHAN_AFTER_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{ORPHAN_AFTER_ENV} must be a number of seconds, not {value!r}") from None
    if seconds <= 0:
        raise ValueError(f"{ORPHAN_AFTER_ENV} must be positive, not {value!r}")
    return seconds


# -- The owner's side: one lease per process, renewed while it lives ------------------------------------


class _Renewer:
    """This process's lease and the daemon thread that renews it."""

    def __init__(self) -> None:
        self.name = f"{LEASE_PREFIX}{uuid4().hex[:16]}"
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self) -> str:
        """The lease's name, renewing it from now on."""
        with self._lock:
            if self._thread is None:
                # The thread talks to the same Prefect API as the caller (settings live in the context).
                context = contextvars.copy_context()
                self._thread = threading.Thread(
                    target=context.run, args=(self._renew_forever,), name="opencomputer-lease", daemon=True
                )
                self._thread.start()
        return self.name

    def _renew_forever(self) -> None:
        interval = min(orphan_after_seconds() / _RENEWALS_PER_WINDOW, _MAX_RENEW_INTERVAL)
        while True:
            # An API unreachable now must not end the renewals.
            with contextlib.suppress(Exception):
                asyncio.run(_renew(self.name))
            time.sleep(interval)


async def _renew(name: str) -> None:
    value: dict[str, Any] = {
        "renewed_at": datetime.now(UTC).isoformat(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    async with get_client() as prefect:
        if await prefect.read_variable_by_name(name) is None:
            await prefect.create_variable(VariableCreate(name=name, value=value))
        else:
            await prefect.update_variable(VariableUpdate(name=name, value=value))


_renewer = _Renewer()


def held_lease() -> str:
    """The name of the lease this process renews while it lives (started on first use)."""
    return _renewer.hold()


# -- The reaper's side ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lease:
    """What a lease variable says: when its owner last renewed it, and who the owner is."""

    name: str
    renewed_at: datetime
    owner: str


async def read_leases() -> dict[str, Lease]:
    """Every owner lease the Prefect API holds, by name."""
    leases: dict[str, Lease] = {}
    async with get_client() as prefect:
        for variable in await prefect.read_variables():
            value = variable.value
            if not variable.name.startswith(LEASE_PREFIX) or not isinstance(value, dict):
                continue
            try:
                renewed_at = datetime.fromisoformat(str(value["renewed_at"]))
            except (KeyError, ValueError):
                continue
            owner = f"process {value.get('pid')} on {value.get('host')}"
            leases[variable.name] = Lease(variable.name, renewed_at, owner)
    return leases


@dataclass(frozen=True)
class OwnerVerdict:
    """Whether a sandbox's owning process is gone, and why the reaper thinks so either way."""

    gone: bool
    reason: str


def judge_owner(
    tags: dict[str, str], started_at: datetime | None, leases: dict[str, Lease], now: datetime
) -> OwnerVerdict:
    """Whether the process that created a sandbox (of a flow run Prefect still calls live) is gone."""
    window = orphan_after_seconds()
    name = tags.get(TAG_OWNER_LEASE)
    if not name:
        return OwnerVerdict(False, "its flow run is not over and it carries no owner lease")
    lease = leases.get(name)
    if lease is None:
        # A new owner may not have written its lease yet: only a sandbox older than the window proves it.
        if started_at is None or (now - started_at).total_seconds() < window:
            return OwnerVerdict(False, "its flow run is not over and its owner's lease is not written yet")
        return OwnerVerdict(True, f"its owner never renewed lease {name} in {window:g} s")
    silent = (now - lease.renewed_at).total_seconds()
    if silent < window:
        return OwnerVerdict(
            False, f"its flow run is not over and {lease.owner} renewed its lease {silent:.0f} s ago"
        )
    return OwnerVerdict(
        True, f"{lease.owner} stopped renewing its lease {silent:.0f} s ago (window {window:g} s)"
    )


async def propose_crashed(flow_run_id: str, reason: str) -> bool:
    """Propose Crashed for a flow run whose owning process is gone; False if Prefect refused."""
    async with get_client() as prefect:
        crashed: State[Any] = Crashed(message=f"The process running this flow run is gone: {reason}.")
        result = await prefect.set_flow_run_state(UUID(flow_run_id), crashed)
    return result.state is not None and result.state.is_crashed()


async def delete_expired_leases() -> None:
    """Forget the leases whose owners are gone (a sandbox still naming one counts as never renewed)."""
    window = orphan_after_seconds()
    now = datetime.now(UTC)
    expired = [
        name
        for name, lease in (await read_leases()).items()
        if (now - lease.renewed_at).total_seconds() >= window
    ]
    async with get_client() as prefect:
        for name in expired:
            await prefect.delete_variable_by_name(name)
