"""The one place that turns a server's configuration into the runtime its backend drives.

Everything the host gives sandboxes is chosen here: the helper's cache, the cgroups (or none, with
``--no-limits``), the networks they may reach, their disk cap and the root filesystems they boot.
The server, the CLI and `LocalServer` all get their runtime from `build_runtime` (and check the
host with `ready_host` before they start); the runtime's own `SandboxRuntime.open` then readies
what needs the event loop (the disk store, /proc views, the sweep of a killed server's leftovers).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import threading
from pathlib import Path

from prefect_opencomputer.local.config import LocalServerConfig
from prefect_opencomputer.local.sandbox import rootfs
from prefect_opencomputer.local.sandbox.cgroups import CgroupHost, CgroupsUnavailable
from prefect_opencomputer.local.sandbox.egress import IPNetwork
from prefect_opencomputer.local.sandbox.host import RuntimeUnavailable
from prefect_opencomputer.local.sandbox.runtime import SandboxRuntime

logger = logging.getLogger("prefect_opencomputer.local.backend.service")
# Every server's cgroup group starts so: a server sweeps the empty ones that servers gone for good left.
CGROUP_PREFIX = "prefect-opencomputer-"


def cgroup_group(data_dir: Path) -> str:
    """One cgroup per server data dir, so a server sweeps only the leftovers of its own sandboxes."""
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    return f"{CGROUP_PREFIX}{digest}"


def discover_cgroups(config: LocalServerConfig) -> CgroupHost | None:
    """The host's cgroups for sandbox limits; None when the server runs with ``--no-limits``.

    Raises `CgroupsUnavailable` with the reason when limits are wanted but cannot be had.
    """
    if not config.limits:
        return None
    return CgroupHost.discover(group=cgroup_group(config.data_dir))


def egress_allowed(config: LocalServerConfig) -> frozenset[IPNetwork]:
    """Special-range networks sandboxes may reach whole: what the server was told (``--egress-allow``).

    The package registries as this host resolves them are open too, on their ports only
    (`registry_exceptions`, resolved as the runtime opens).
    """
    return frozenset(ipaddress.ip_network(network, strict=False) for network in config.egress_allow)


async def template_root(template: str) -> Path:
    """A template's root filesystem, built on first use with its progress in the server log."""
    return await rootfs.ensure_rootfs(template, progress=lambda line: logger.warning("%s", line))


def build_runtime(config: LocalServerConfig) -> SandboxRuntime:
    """The runtime of a server with ``config``: helper compiled, cgroups found, networks chosen.

    Raises `RuntimeUnavailable` with a readable reason when this machine cannot run sandboxes.
    """
    runtime = SandboxRuntime(
        config.data_dir / "runtime",
        cache=rootfs.cache_dir(),
        rootfs=template_root,
        cgroups=None,
        egress_allow=egress_allowed(config),
        max_disk_mb=config.max_disk_mb,
        host_ports=config.allow_host_ports,
        sweep_prefix=CGROUP_PREFIX,
    )
    runtime.check_available()
    try:
        runtime.cgroups = discover_cgroups(config)
    except CgroupsUnavailable as error:
        raise RuntimeUnavailable(f"{error} (or start with --no-limits)") from error
    return runtime


def ready_host(config: LocalServerConfig, *, template: str, progress: rootfs.Progress) -> str:
    """Check this machine can serve ``config`` and build ``template``'s root filesystem, before the
    server starts answering; returns the limits and disks lines for the start-up output.

    Raises `RuntimeUnavailable` with a readable reason.
    """
    runtime = build_runtime(config)
    disks = f"disks: {runtime.layers.store.describe()}"
    cgroups = runtime.cgroups
    built: list[BaseException] = []

    def build() -> None:
        try:
            asyncio.run(rootfs.ensure_rootfs(template, progress=progress))
        except BaseException as error:
            built.append(error)

    # Its own thread and loop: the caller may be inside an event loop of its own.
    worker = threading.Thread(target=build, name="rootfs-build")
    worker.start()
    worker.join()
    if built:
        if cgroups is not None:
            cgroups.release()
        raise RuntimeUnavailable(f"building the sandbox root filesystem failed: {built[0]}") from built[0]
    if cgroups is None:
        limits = "limits: none (--no-limits): memoryMB, cpuCount and process caps are not enforced"
    else:
        limits = f"limits: {cgroups.describe()}"
        cgroups.release()  # a check only: the server makes its groups again as it starts
    return f"{limits}\n  {disks}"
