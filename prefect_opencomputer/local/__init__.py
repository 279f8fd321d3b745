"""An OpenComputer-compatible server on this machine: real sandboxes, the service's wire contract.

`LocalServer` runs it inside the caller's process; ``prefect-opencomputer local serve`` runs it
as a command. The official SDK and our client work against it with only the URL and key changed.
"""

from prefect_opencomputer.local.config import LocalServerConfig
from prefect_opencomputer.local.embedded import LocalServer
from prefect_opencomputer.local.serve import LocalServerError

__all__ = ["LocalServer", "LocalServerConfig", "LocalServerError"]
