"""Prefect integration for OpenComputer sandboxes.

Blocks are re-exported here so `prefect block register -m prefect_opencomputer` (and Prefect's collection
loader) find them, and the `opencomputer` worker type is registered here (`prefect work-pool create`);
tasks live in `prefect_opencomputer.tasks`, example flows in `prefect_opencomputer.flows`,
the HTTP client in `prefect_opencomputer.client` and the local server in `prefect_opencomputer.local`.

The client and the local server do not need Prefect, so importing them must not import it: the blocks are
loaded on first use, or right away when Prefect is already loaded (then registering them costs nothing).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect_opencomputer.blocks import OpenComputerCredentials

__version__ = "0.1.0"

__all__ = ["OpenComputerCredentials", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "OpenComputerCredentials":
        from prefect_opencomputer.blocks import OpenComputerCredentials

        return OpenComputerCredentials
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if "prefect" in sys.modules:
    from prefect_opencomputer.blocks import OpenComputerCredentials
    from prefect_opencomputer.worker import OpenComputerWorker  # noqa: F401  (registers the type)
