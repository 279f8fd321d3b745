"""Tasks for a sandbox's life: create, look up, list, idle timeout, hibernate, wake, kill."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.transactions import BaseTransaction, Transaction, get_transaction

from prefect_opencomputer.blocks.credentials import OpenComputerCredentials
from prefect_opencomputer.client import Image, NotFoundError, OpenComputerClient, Sandbox
from prefect_opencomputer.tasks import events, report
from prefect_opencomputer.tasks.build_logs import build_log_handler
from prefect_opencomputer.tasks.lost_creates import create_or_find
from prefect_opencomputer.tasks.naming import TASK_TAG, RunName, on_sandbox
from prefect_opencomputer.tasks.ownership import DEFAULT_IDLE_TIMEOUT, is_retained, ownership_tags
from prefect_opencomputer.tasks.references import SandboxRef, sandbox_id_of
from prefect_opencomputer.tasks.retries import RETRY_DELAYS, retry_if_replayable, retry_if_transient
from prefect_opencomputer.tasks.run_logger import run_logger
from prefect_opencomputer.tasks.shielding import finish_despite_cancellation

# Keys under which a create task leaves what its rollback hook needs in the task's transaction.
_ROLLBACK_SANDBOX = "opencomputer.sandbox_id"
_ROLLBACK_CREDENTIALS = "opencomputer.credentials"
KILL_TIMEOUT = 30.0


async def adopt_new_sandbox(
    client: OpenComputerClient,
    credentials: OpenComputerCredentials,
    sandbox: Sandbox,
    *,
    tags: Mapping[str, str] | None,
    idle_timeout: int | None,
) -> Sandbox:
    """Tag a sandbox this task just created (and set its idle timeout); on any failure, kill it.

    Runs right after the create/fork request, so the sandbox is never left running without the tags that
    let cleanup hooks and the reaper find it.
    """
    _remember_for_rollback(credentials, sandbox.sandbox_id)
    try:
        applied = await client.sandboxes.set_tags(sandbox.sandbox_id, {**(tags or {}), **ownership_tags()})
        if idle_timeout is not None:
            await client.sandboxes.set_timeout(sandbox.sandbox_id, idle_timeout)
    except BaseException:
        await finish_despite_cancellation(
            kill_ignoring_missing(client, sandbox.sandbox_id), timeout=KILL_TIMEOUT
        )
        raise
    return sandbox.model_copy(
        update={"tags": applied.tags, "tags_last_updated_at": applied.tags_last_updated_at}
    )


def _remember_for_rollback(credentials: OpenComputerCredentials, sandbox_id: str) -> None:
    transaction = get_transaction()
    if transaction is not None:
        transaction.set(_ROLLBACK_SANDBOX, sandbox_id)
        transaction.set(_ROLLBACK_CREDENTIALS, credentials)


async def kill_on_rollback(transaction: BaseTransaction) -> None:
    """`on_rollback` hook of the create tasks: a rolled-back transaction leaves no sandbox behind."""
    sandbox_id = transaction.get(_ROLLBACK_SANDBOX, None)
    credentials = transaction.get(_ROLLBACK_CREDENTIALS, None)
    if sandbox_id is None or credentials is None:
        return
    await kill_sandbox_now(credentials, sandbox_id, reason="transaction rolled back")


# Prefect types rollback hooks as sync; both transaction kinds also await coroutine hooks.
rollback_hook = cast("Callable[[Transaction], None]", kill_on_rollback)


async def kill_ignoring_missing(client: OpenComputerClient, sandbox_id: str) -> bool:
    try:
        await client.sandboxes.kill(sandbox_id)
    except NotFoundError:
        return False
    return True


async def kill_sandbox_now(credentials: OpenComputerCredentials, sandbox_id: str, *, reason: str) -> bool:
    """Kill a sandbox outside any task run (cleanup paths); finishes even while the caller is cancelled.

    Returns True when this call killed it, False when it was already gone.
    """

    async def kill() -> bool:
        async with credentials.get_client() as client:
            return await kill_ignoring_missing(client, sandbox_id)

    killed = await finish_despite_cancellation(kill(), timeout=KILL_TIMEOUT)
    _after_kill(sandbox_id, reason, killed)
    return killed


def _after_kill(sandbox_id: str, reason: str, killed: bool) -> None:
    report.record("kill", sandbox_id, reason, "killed" if killed else "already gone")
    if killed:
        events.emit_sandbox_event(events.SANDBOX_KILLED, sandbox_id, payload={"reason": reason})
        run_logger().info("Killed sandbox %s (%s)", sandbox_id, reason)


def _origin(template: str, image: Image | None, snapshot: str | None) -> str:
    """What a sandbox starts from, as people name it: `base`, `image 3f2a…` (its cache key), `snapshot x`."""
    if image is not None:
        return f"image {image.cache_key()[:12]}"
    if snapshot:
        return f"snapshot {snapshot}"
    return template


def _create_run_name(parameters: dict[str, Any]) -> str:
    origin = _origin(parameters.get("template", "base"), parameters.get("image"), parameters.get("snapshot"))
    return f"create-sandbox[{origin}]"


# A sandbox from an image may wait for the image to build first.
_BUILD_TIMEOUT = 3600.0


@task(
    name="create_sandbox",
    task_run_name=cast(RunName, _create_run_name),
    tags=[TASK_TAG],
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_if_transient,
)
async def create_sandbox(
    credentials: OpenComputerCredentials,
    template: str = "base",
    *,
    idle_timeout: int = DEFAULT_IDLE_TIMEOUT,
    envs: dict[str, str] | None = None,
    metadata: dict[str, str] | None = None,
    memory_mb: int | None = None,
    tags: dict[str, str] | None = None,
    image: Image | None = None,
    snapshot: str | None = None,
) -> Sandbox:
    """Create a sandbox tagged with this flow run, task run and deployment.

    `idle_timeout` is the rolling idle timeout in seconds after which the service hibernates the sandbox;
    `0` makes it persistent, which only an explicit caller gets. With `image` (built first, or found in the
    service's cache) or `snapshot` (a named, built image) the sandbox starts from it instead of `template`;
    the build's output goes to the run log as it happens, and a failed build raises `BuildFailedError`.
    Inside `with transaction():` the sandbox is killed when the transaction rolls back.
    """
    logger = get_run_logger()
    built = image is not None or snapshot is not None
    origin = _origin(template, image, snapshot)
    async with credentials.get_client() as client:
        # Shielded: once the service has been asked, learn the id even if this task is being cancelled,
        # so the sandbox can be tagged or killed instead of leaking.
        sandbox = await finish_despite_cancellation(
            create_or_find(
                client,
                lambda: client.sandboxes.create(
                    template=template,
                    timeout=idle_timeout,
                    envs=envs,
                    metadata={**(metadata or {}), **ownership_tags()},
                    memory_mb=memory_mb,
                    image=image,
                    snapshot=snapshot,
                    on_build_log=build_log_handler(logger) if built else None,
                ),
            ),
            timeout=_BUILD_TIMEOUT if built else max(credentials.request_timeout * 4, 120.0),
        )
        sandbox = await adopt_new_sandbox(client, credentials, sandbox, tags=tags, idle_timeout=None)
    logger.info("Created sandbox %s from %s (idle timeout %s s)", sandbox.sandbox_id, origin, idle_timeout)
    report.record(
        "sandbox",
        sandbox.sandbox_id,
        origin,
        sandbox.status,
        cleanup=not is_retained(sandbox.tags),
    )
    events.emit_sandbox_event(
        events.SANDBOX_CREATED,
        sandbox.sandbox_id,
        payload={"template": template, "origin": origin, "idle_timeout": idle_timeout},
    )
    return sandbox


create_sandbox.on_rollback(rollback_hook)


@task(
    name="get_sandbox",
    task_run_name=on_sandbox("get-sandbox"),
    tags=[TASK_TAG],
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_if_replayable,
)
async def get_sandbox(credentials: OpenComputerCredentials, sandbox: SandboxRef) -> Sandbox:
    """The sandbox as the service reports it now (status, tags, patch error, ...)."""
    async with credentials.get_client() as client:
        return await client.sandboxes.get(sandbox_id_of(sandbox))


@task(
    name="list_sandboxes",
    task_run_name="list-sandboxes",
    tags=[TASK_TAG],
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_if_replayable,
)
async def list_sandboxes(
    credentials: OpenComputerCredentials, tags: dict[str, str] | None = None
) -> list[Sandbox]:
    """Sandboxes the service lists (running ones), keeping only those carrying every tag in `tags`."""
    async with credentials.get_client() as client:
        sandboxes = await client.sandboxes.list()
    wanted = tags or {}
    return [sb for sb in sandboxes if all(sb.tags.get(key) == value for key, value in wanted.items())]


@task(
    name="kill_sandbox",
    task_run_name=on_sandbox("kill"),
    tags=[TASK_TAG],
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_if_replayable,
)
async def kill_sandbox(credentials: OpenComputerCredentials, sandbox: SandboxRef) -> bool:
    """Kill a sandbox; True when this call killed it, False when it did not exist (nothing to do)."""
    sandbox_id = sandbox_id_of(sandbox)
    async with credentials.get_client() as client:
        killed = await kill_ignoring_missing(client, sandbox_id)
    _after_kill(sandbox_id, "kill_sandbox task", killed)
    return killed


@task(
    name="set_sandbox_timeout",
    task_run_name=on_sandbox("set-timeout", "idle_timeout"),
    tags=[TASK_TAG],
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_if_replayable,
)
async def set_sandbox_timeout(
    credentials: OpenComputerCredentials, sandbox: SandboxRef, idle_timeout: int
) -> None:
    """Set the rolling idle timeout in seconds (`0` = persistent: the sandbox never hibernates on its own)."""
    async with credentials.get_client() as client:
        await client.sandboxes.set_timeout(sandbox_id_of(sandbox), idle_timeout)


@task(
    name="hibernate_sandbox",
    task_run_name=on_sandbox("hibernate"),
    tags=[TASK_TAG],
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_if_replayable,
)
async def hibernate_sandbox(credentials: OpenComputerCredentials, sandbox: SandboxRef) -> Sandbox:
    """Hibernate a running sandbox: processes stop, its disk is kept; any later data call wakes it."""
    async with credentials.get_client() as client:
        hibernated = await client.sandboxes.hibernate(sandbox_id_of(sandbox))
    report.record("hibernate", hibernated.sandbox_id, "", hibernated.status)
    return hibernated


@task(
    name="wake_sandbox",
    task_run_name=on_sandbox("wake"),
    tags=[TASK_TAG],
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_if_replayable,
)
async def wake_sandbox(
    credentials: OpenComputerCredentials, sandbox: SandboxRef, idle_timeout: int | None = DEFAULT_IDLE_TIMEOUT
) -> Sandbox:
    """Wake a hibernated sandbox (waking a running one is a no-op).

    `idle_timeout` applies when the service restores the sandbox from deep hibernation, where an omitted
    value would make it persistent.
    """
    async with credentials.get_client() as client:
        woken = await client.sandboxes.wake(sandbox_id_of(sandbox), timeout=idle_timeout)
    report.record("wake", woken.sandbox_id, "", woken.status)
    return woken
