"""Prefect blocks for OpenComputer."""

from prefect_opencomputer.blocks.credentials import OpenComputerCredentials, load_credentials

__all__ = ["OpenComputerCredentials", "load_credentials"]
