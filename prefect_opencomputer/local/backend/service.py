"""The local server's backend as the routes see it, independent of HTTP.

`LocalBackend` composes the sandboxes core (`core.SandboxCore`: records, runtime, locks,
lifecycle) with the resources built on it (sandboxes, exec, files, checkpoints, previews, ...),
one per resource, each with one method per wire action, and runs the server's lifecycle. Routers
turn their records into wire shapes; they raise a named `BackendError` for every client mistake.
"""

from __future__ import annotations

import logging
import secrets

from prefect_opencomputer.local.backend.checkpoints import Checkpoints
from prefect_opencomputer.local.backend.core import SandboxCore
from prefect_opencomputer.local.backend.exec import Exec
from prefect_opencomputer.local.backend.files import SandboxFiles
from prefect_opencomputer.local.backend.images import Images
from prefect_opencomputer.local.backend.patches import Patches
from prefect_opencomputer.local.backend.previews import Previews
from prefect_opencomputer.local.backend.records import utc_now
from prefect_opencomputer.local.backend.sandboxes import Sandboxes
from prefect_opencomputer.local.backend.scaling import Scaling
from prefect_opencomputer.local.backend.signed_urls import UrlSigner
from prefect_opencomputer.local.backend.snapshots import Snapshots
from prefect_opencomputer.local.backend.startup import started
from prefect_opencomputer.local.backend.state import StateStore
from prefect_opencomputer.local.backend.terminals import Terminals
from prefect_opencomputer.local.backend.usage import MemorySampler, Usage
from prefect_opencomputer.local.backend.warm import close_pool
from prefect_opencomputer.local.config import LocalServerConfig
from prefect_opencomputer.local.private_files import make_private_dir
from prefect_opencomputer.local.sandbox.protocol import Runtime

logger = logging.getLogger(__name__)

_SIGNING_SECRET_KEY = "url_signing_secret"
# How long `close()` lets checkpoint copies in flight finish before leaving them to recovery.
_CLOSE_GRACE_SECONDS = 30.0


class LocalBackend:
    """State and behaviour of every sandbox, checkpoint, patch, exec session and preview URL."""

    def __init__(self, config: LocalServerConfig, runtime: Runtime) -> None:
        self.config = config
        self.core = SandboxCore(config, runtime)
        self.checkpoints = Checkpoints(self.core)
        self.images = Images(self.core, self.checkpoints)
        self.snapshots = Snapshots(self.images)
        self.patches = Patches(self.core, self.snapshots)
        self.sandboxes = Sandboxes(self.core, self.images)
        self.exec = Exec(self.core)
        self.files = SandboxFiles(self.core)
        self.previews = Previews(self.core)
        self.scaling = Scaling(self.core)
        self.terminals = Terminals(self.core)
        self.usage = Usage(self.core)
        self._signer: UrlSigner | None = None
        self.memory_sampler = MemorySampler(self.core.sample_memory, config.usage_sample_seconds)

    def __repr__(self) -> str:
        return f"LocalBackend(data_dir={self.config.data_dir!r})"

    @property
    def store(self) -> StateStore:
        return self.core.store

    @property
    def signer(self) -> UrlSigner:
        return started(self._signer)

    # -- server lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Open the state and recover from the last run: what was running comes back hibernated."""
        make_private_dir(self.config.data_dir)
        # The default template up front (a cache hit after the first run), so no create waits for it.
        await self.core.open_host()
        self.core.open(StateStore(self.config.data_dir / "state.db"))
        # A killed server could not close the running intervals of its sandboxes: they end at
        # their last sample.
        self.store.close_abandoned_intervals()
        secret = self.store.setting(_SIGNING_SECRET_KEY)
        if secret is None:
            secret = secrets.token_hex(32)
            self.store.set_setting(_SIGNING_SECRET_KEY, secret)
        self._signer = UrlSigner(bytes.fromhex(secret))
        self.core.recover()
        await self.checkpoints.recover()
        await self.images.start()
        self.core.peak = 0
        self.core.idle.start()
        self.memory_sampler.start()
        self.core.warm.start()

    async def close(self) -> None:
        """Stop every sandbox's processes; their disks and all state stay for the next start."""
        await self.core.idle.stop()
        await self.memory_sampler.stop()
        await close_pool(self.core.warm)
        await self.images.close()
        await self.checkpoints.finish_copies(_CLOSE_GRACE_SECONDS)
        await self.core.exec_sessions.close_all()
        await self.core.terminals.close_all()
        opened = self.core.opened
        if opened is not None:
            now = utc_now()
            for record in opened.sandboxes(status="running"):
                opened.stop_running(record.id, now, self.core.memory_sample(record.id))
                record.status = "hibernated"
                self.store.save_sandbox(record)
        await self.core.shutdown_host()
        if opened is not None:
            opened.close()
            self.core.open(None)

    async def reset(self) -> None:
        """Kill and forget everything (test isolation); the server keeps running."""
        await self.images.reset()
        await self.checkpoints.finish_copies(_CLOSE_GRACE_SECONDS)
        await self.core.exec_sessions.close_all()
        await self.core.terminals.close_all()
        await self.core.destroy_everything()
        self.store.forget_everything()
        self.core.max_running_sandboxes = self.config.max_running_sandboxes
        self.core.idle.clear()
        self.core.peak = self.core.live_count()
        self.core.warm.start()

    def stats(self) -> dict[str, int]:
        """Sandboxes with live processes now, the most at once since start or reset, and warm spares."""
        return {
            "liveSandboxes": self.core.live_count(),
            "peakSandboxes": self.core.peak,
            "warmSandboxes": self.core.warm.ready,
        }

    # -- sandboxes ---------------------------------------------------------------------------

    # -- usage -------------------------------------------------------------------------------

    # -- the data plane ----------------------------------------------------------------------

    # -- shared with the checkpoint and preview services -------------------------------------

    # -- internals ---------------------------------------------------------------------------

    # -- PTY sessions --------------------------------------------------------------------------
