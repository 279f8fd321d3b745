"""Prefect blocks for OpenComputer."""

from prefect_opencomputer.blocks.credentials import (
    OpenComputerCredentials,
    aload_credentials,
    load_credentials,
)
from prefect_opencomputer.blocks.sync_client import SyncOpenComputerClient

__all__ = ["OpenComputerCredentials", "SyncOpenComputerClient", "aload_credentials", "load_credentials"]
