"""The credentials block: where a flow finds its OpenComputer API key and endpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect.blocks.abstract import CredentialsBlock
from prefect.blocks.core import Block, schema_extra
from pydantic import ConfigDict, Field, SecretStr

from prefect_opencomputer._settings import (
    API_KEY_ENV,
    API_URL_ENV,
    CREDENTIALS_BLOCK_ENV,
    DEFAULT_REQUEST_TIMEOUT,
)
from prefect_opencomputer._sync import run_sync
from prefect_opencomputer.blocks.sync_client import SyncOpenComputerClient
from prefect_opencomputer.client import OpenComputerClient

# The logo ships in the package; the UI loads it from the published copy of the same file.
LOGO_PATH = Path(__file__).resolve().parent.parent / "assets" / "logo.png"
LOGO_URL = (
    "https://raw.githubusercontent.com/prefect-opencomputer/prefect-opencomputer/main/"
    "prefect_opencomputer/assets/logo.png"
)


def _not_a_block_reference(schema: dict[str, Any], model: type[Block]) -> None:
    """Prefect's block schema, which a `{"$ref": ...}` object does not match.

    Every field is optional and extra keys are allowed, so without this a block reference (what the run
    form's block picker sends) would match both branches of the `oneOf` Prefect's parameter validation
    builds for a block parameter, and be refused.
    """
    schema_extra(schema, model)
    schema["not"] = {"required": ["$ref"]}


class OpenComputerCredentials(CredentialsBlock):
    """Credentials for the OpenComputer sandbox API.

    Leave a field unset to read it from the environment of the process that uses the block
    (`OPENCOMPUTER_API_KEY`, `OPENCOMPUTER_API_URL`), so a saved block need not hold the key.

    Example:
        Load stored credentials and list the running sandboxes:
        ```python
        from prefect_opencomputer import OpenComputerCredentials

        credentials = OpenComputerCredentials.load("BLOCK_NAME")
        with credentials.get_sync_client() as client:
            sandboxes = client.sandboxes.list()
        ```

        In async code, load with `aload` and use the async client:
        ```python
        from prefect_opencomputer import OpenComputerCredentials

        credentials = await OpenComputerCredentials.aload("BLOCK_NAME")
        async with credentials.get_client() as client:
            sandboxes = await client.sandboxes.list()
        ```
    """

    model_config = ConfigDict(json_schema_extra=_not_a_block_reference)

    _block_type_name = "OpenComputer Credentials"
    _logo_url = LOGO_URL  # type: ignore[assignment]
    _documentation_url = "https://docs.opencomputer.dev/introduction"  # type: ignore[assignment]

    api_key: SecretStr | None = Field(
        default=None,
        description=f"OpenComputer API key; unset reads {API_KEY_ENV} from the environment.",
        title="API Key",
    )
    api_url: str | None = Field(
        default=None,
        description=(
            "Base URL of the OpenComputer API (the hosted service or a local server); "
            f"unset reads {API_URL_ENV}, then defaults to the hosted service."
        ),
        title="API URL",
    )
    request_timeout: float = Field(
        default=DEFAULT_REQUEST_TIMEOUT,
        gt=0,
        description="Seconds to wait for one HTTP request before giving up.",
    )

    def get_client(self, *args: Any, **kwargs: Any) -> OpenComputerClient:
        """A new async client; use it as `async with credentials.get_client() as client:`."""
        api_key = self.api_key.get_secret_value() if self.api_key is not None else None
        return OpenComputerClient(api_key=api_key, api_url=self.api_url, timeout=self.request_timeout)

    def get_sync_client(self) -> SyncOpenComputerClient:
        """A new blocking client for `def` code; use it as `with credentials.get_sync_client() as client:`."""
        return SyncOpenComputerClient(self.get_client)


async def aload_credentials(
    block_name: str | None = None, *, credentials: OpenComputerCredentials | None = None
) -> OpenComputerCredentials:
    """The OpenComputer credentials to use: the one resolver, which tasks, flows, hooks, the worker and the
    CLI all call. The first of these that is given wins:

    1. `credentials`, a block given in code (a task's `credentials=`, a flow's block parameter);
    2. the saved block named `block_name`;
    3. the saved block named by the `OPENCOMPUTER_CREDENTIALS_BLOCK` environment variable;
    4. the environment: `OPENCOMPUTER_API_KEY` and `OPENCOMPUTER_API_URL` (unset URL: the hosted service).

    What code says beats what the environment says, as with Prefect's own settings. A block's unset
    `api_key` or `api_url` reads the same variable, so a saved block need not hold the key.

    Args:
        block_name: Name of a saved OpenComputerCredentials block.
        credentials: A block already in hand; when given, it is returned as it is.

    Returns:
        The block to build clients from.

    Example:
        ```python
        credentials = await aload_credentials("opencomputer")
        async with credentials.get_client() as client:
            sandboxes = await client.sandboxes.list()
        ```
    """
    if credentials is not None:
        return credentials
    name = block_name or os.environ.get(CREDENTIALS_BLOCK_ENV)
    if name:
        block = await OpenComputerCredentials.aload(name)
        assert isinstance(block, OpenComputerCredentials)
        return block
    return OpenComputerCredentials()


def load_credentials(
    block_name: str | None = None, *, credentials: OpenComputerCredentials | None = None
) -> OpenComputerCredentials:
    """`aload_credentials` for `def` code: the same credentials by the same precedence."""
    return run_sync(aload_credentials(block_name, credentials=credentials))


def is_configured(credentials: OpenComputerCredentials) -> bool:
    """Whether the credentials name a key or a URL, in the block or the environment: without either, a
    client would ask the hosted service without a key."""
    return bool(
        (credentials.api_key is not None and credentials.api_key.get_secret_value())
        or credentials.api_url
        or os.environ.get(API_KEY_ENV)
        or os.environ.get(API_URL_ENV)
    )
