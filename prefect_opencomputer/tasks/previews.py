"""Tasks for preview URLs: public hostnames that route to one port of a sandbox."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import acreate_link_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import JsonValue

from prefect_opencomputer.blocks.credentials import OpenComputerCredentials
from prefect_opencomputer.client import NotFoundError, PreviewURL
from prefect_opencomputer.tasks import report
from prefect_opencomputer.tasks.naming import TASK_TAG, on_sandbox
from prefect_opencomputer.tasks.references import SandboxRef, sandbox_id_of
from prefect_opencomputer.tasks.retries import RETRY_DELAYS, retry_if_replayable


@task(
    name="create_preview_url",
    task_run_name=on_sandbox("preview", "port"),
    tags=[TASK_TAG],
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=RETRY_DELAYS,
    # The service keeps one URL per port, so replaying a create is safe.
    retry_condition_fn=retry_if_replayable,
)
async def create_preview_url(
    credentials: OpenComputerCredentials,
    sandbox: SandboxRef,
    port: int,
    *,
    domain: str | None = None,
    auth_config: dict[str, JsonValue] | None = None,
    link_artifact: bool = True,
) -> PreviewURL:
    """Expose `port` of a running sandbox at a public URL (the same URL again for a port already exposed).

    With `link_artifact`, the URL also appears as a link artifact of the run.
    """
    sandbox_id = sandbox_id_of(sandbox)
    async with credentials.get_client() as client:
        preview = await client.previews.create(sandbox_id, port, domain=domain, auth_config=auth_config)
    get_run_logger().info("Port %d of %s is at %s", port, sandbox_id, preview.url)
    report.record("preview", sandbox_id, f"port {port}", preview.url)
    if link_artifact:
        await acreate_link_artifact(
            link=preview.url,
            link_text=f"{sandbox_id} port {port}",
            description=f"Preview URL of port {port} of sandbox {sandbox_id}.",
        )
    return preview


@task(
    name="list_preview_urls",
    task_run_name=on_sandbox("list-previews"),
    tags=[TASK_TAG],
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_if_replayable,
)
async def list_preview_urls(credentials: OpenComputerCredentials, sandbox: SandboxRef) -> list[PreviewURL]:
    """The sandbox's preview URLs."""
    async with credentials.get_client() as client:
        return await client.previews.list(sandbox_id_of(sandbox))


@task(
    name="delete_preview_url",
    task_run_name=on_sandbox("delete-preview", "port"),
    tags=[TASK_TAG],
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_if_replayable,
)
async def delete_preview_url(credentials: OpenComputerCredentials, sandbox: SandboxRef, port: int) -> bool:
    """Stop exposing `port`; False when it was not exposed."""
    async with credentials.get_client() as client:
        try:
            await client.previews.delete(sandbox_id_of(sandbox), port)
        except NotFoundError:
            return False
    return True
