"""Prefect blocks for OpenComputer."""

from prefect_opencomputer.blocks.credentials import OpenComputerCredentials, load_credentials
from prefect_opencomputer.blocks.sync_client import SyncOpenComputerClient

__all__ = ["OpenComputerCredentials", "SyncOpenComputerClient", "load_credentials"]
