"""The credentials block: where a flow finds its OpenComputer API key and endpoint."""

from __future__ import annotations

from typing import Any

from prefect.blocks.abstract import CredentialsBlock
from pydantic import Field, SecretStr

from prefect_opencomputer.client import OpenComputerClient


class OpenComputerCredentials(CredentialsBlock):
    """Credentials for the OpenComputer sandbox API.

    Leave a field unset to read it from the environment of the process that uses the block
    (`OPENCOMPUTER_API_KEY`, `OPENCOMPUTER_API_URL`), so a saved block need not hold the key.

    Example:
        Load stored credentials and list sandboxes:
        ```python
        from prefect_opencomputer import OpenComputerCredentials

        credentials = OpenComputerCredentials.load("BLOCK_NAME")
        async with credentials.get_client() as client:
            sandboxes = await client.sandboxes.list()
        ```
    """

    _block_type_name = "OpenComputer Credentials"
    _logo_url = "https://raw.githubusercontent.com/diggerhq/opencomputer/main/docs/images/favicon.svg"  # type: ignore[assignment]
    _documentation_url = "https://docs.opencomputer.dev/introduction"  # type: ignore[assignment]

    api_key: SecretStr | None = Field(
        default=None,
        description="OpenComputer API key; unset reads OPENCOMPUTER_API_KEY from the environment.",
        title="API Key",
    )
    api_url: str | None = Field(
        default=None,
        description=(
            "Base URL of the OpenComputer API (the hosted service or a local server); "
            "unset reads OPENCOMPUTER_API_URL, then defaults to the hosted service."
        ),
        title="API URL",
    )
    request_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds to wait for one HTTP request before giving up.",
    )

    def get_client(self, *args: Any, **kwargs: Any) -> OpenComputerClient:
        """A new client; use it as `async with credentials.get_client() as client:`."""
        api_key = self.api_key.get_secret_value() if self.api_key is not None else None
        return OpenComputerClient(api_key=api_key, api_url=self.api_url, timeout=self.request_timeout)


async def load_credentials(block_name: str | None = None) -> OpenComputerCredentials:
    """The saved block called `block_name`, or (None) credentials read from the environment.

    Flows and cleanup hooks take a block *name*, not the block, so the key never becomes a run parameter
    and a hook running in another process can find the same credentials.
    """
    if block_name:
        block = await OpenComputerCredentials.aload(block_name)
        assert isinstance(block, OpenComputerCredentials)
        return block
    return OpenComputerCredentials()
