"""Tasks for preview URLs: public hostnames that route to one port of a sandbox."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import acreate_link_artifact
from pydantic import JsonValue, SecretStr

from prefect_opencomputer.blocks.credentials import OpenComputerCredentials
from prefect_opencomputer.client import PreviewURL
from prefect_opencomputer.tasks import run_report
from prefect_opencomputer.tasks.factory import opencomputer_task, service_client
from prefect_opencomputer.tasks.leakproof import removed_by_this_call
from prefect_opencomputer.tasks.references import SandboxRef, sandbox_id_of
from prefect_opencomputer.tasks.retries import retry_if_replayable, retry_if_transient
from prefect_opencomputer.tasks.run_names import on_sandbox


@opencomputer_task(
    "create_preview_url",
    run_name=on_sandbox("preview", "port"),
    # The service keeps one URL per port, so replaying a create is safe.
    retry_condition=retry_if_replayable,
)
async def create_preview_url(
    sandbox: SandboxRef,
    port: int,
    *,
    credentials: OpenComputerCredentials | None = None,
    domain: str | None = None,
    auth_config: dict[str, JsonValue] | None = None,
    link_artifact: bool = True,
) -> PreviewURL:
    """Expose a port of a running sandbox at a public URL (the same URL again for a port already exposed).

    Args:
        port: The port a server in the sandbox listens on.
        domain: A custom domain of your organisation.
        auth_config: Access rules, as the service takes them.
        link_artifact: Also show the URL as a link artifact of the run.

    Returns:
        The preview URL.

    Example:
        ```python
        url = create_preview_url(sandbox, 8000).url
        ```
    """
    sandbox_id = sandbox_id_of(sandbox)
    async with service_client(credentials) as client:
        preview = await client.previews.create(sandbox_id, port, domain=domain, auth_config=auth_config)
    get_run_logger().info("Port %d of %s is at %s", port, sandbox_id, preview.url)
    run_report.record("preview", sandbox_id, f"port {port}", preview.url)
    if link_artifact:
        await acreate_link_artifact(
            key=f"preview-{sandbox_id}-{port}".lower(),
            link=preview.url,
            link_text=f"{sandbox_id} port {port}",
            description=f"Preview URL of port {port} of sandbox {sandbox_id}.",
        )
    return preview


@opencomputer_task(
    "list_preview_urls", run_name=on_sandbox("list-previews"), retry_condition=retry_if_replayable
)
async def list_preview_urls(
    sandbox: SandboxRef, *, credentials: OpenComputerCredentials | None = None
) -> list[PreviewURL]:
    """The sandbox's preview URLs.

    Returns:
        One preview URL per exposed port.

    Example:
        ```python
        ports = [preview.port for preview in list_preview_urls(sandbox)]
        ```
    """
    async with service_client(credentials) as client:
        return await client.previews.list(sandbox_id_of(sandbox))


@opencomputer_task(
    "delete_preview_url", run_name=on_sandbox("delete-preview", "port"), retry_condition=retry_if_replayable
)
async def delete_preview_url(
    sandbox: SandboxRef, port: int, *, credentials: OpenComputerCredentials | None = None
) -> bool:
    """Stop exposing a port (idempotent).

    Args:
        port: The exposed port.

    Returns:
        True when this call removed the URL, False when the port was not exposed.

    Example:
        ```python
        delete_preview_url(sandbox, 8000)
        ```
    """
    async with service_client(credentials) as client:
        return await removed_by_this_call(client.previews.delete(sandbox_id_of(sandbox), port))


@opencomputer_task(
    "rotate_preview_token",
    run_name=on_sandbox("rotate-preview-token"),
    # Never replayed: a lost answer would leave a token nobody holds (rotate again to recover).
    retry_condition=retry_if_transient,
)
async def rotate_preview_token(
    sandbox: SandboxRef, *, credentials: OpenComputerCredentials | None = None
) -> SecretStr:
    """Give the sandbox's preview URLs a new bearer token; the old one stops working at once.

    Returns:
        The new token, as a secret (it never shows in logs or results).

    Example:
        ```python
        token = rotate_preview_token(sandbox).get_secret_value()
        ```
    """
    async with service_client(credentials) as client:
        return await client.previews.rotate_token(sandbox_id_of(sandbox))


acreate_preview_url = create_preview_url.aio
alist_preview_urls = list_preview_urls.aio
adelete_preview_url = delete_preview_url.aio
arotate_preview_token = rotate_preview_token.aio
