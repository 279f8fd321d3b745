"""Tasks for a sandbox's life: create, look up, list, idle timeout, hibernate, wake, kill."""

from __future__ import annotations

from typing import Any, cast

from prefect import get_run_logger

from prefect_opencomputer.blocks.credentials import OpenComputerCredentials
from prefect_opencomputer.client import Image, Sandbox, TagKey
from prefect_opencomputer.tasks import events, ownership, quota, run_registry, run_report
from prefect_opencomputer.tasks.factory import opencomputer_task, resolve_credentials, service_client
from prefect_opencomputer.tasks.leakproof import (
    adopt_new_sandbox,
    create_or_find,
    finish_despite_cancellation,
    kill_ignoring_missing,
    record_kill,
    rollback_hook,
    slot_for_create,
    wait_out_full_quota,
)
from prefect_opencomputer.tasks.output import build_log_handler
from prefect_opencomputer.tasks.ownership import DEFAULT_IDLE_TIMEOUT
from prefect_opencomputer.tasks.references import SandboxRef, sandbox_id_of
from prefect_opencomputer.tasks.retries import retry_if_replayable, retry_if_transient
from prefect_opencomputer.tasks.run_names import RunName, on_sandbox


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


@opencomputer_task(
    "create_sandbox",
    run_name=cast(RunName, _create_run_name),
    retry_condition=retry_if_transient,
    on_rollback=rollback_hook,
)
async def create_sandbox(
    template: str = "base",
    *,
    credentials: OpenComputerCredentials | None = None,
    idle_timeout: int = DEFAULT_IDLE_TIMEOUT,
    envs: dict[str, str] | None = None,
    metadata: dict[str, str] | None = None,
    memory_mb: int | None = None,
    tags: dict[str, str] | None = None,
    image: Image | None = None,
    snapshot: str | None = None,
    concurrency_limit: str | None = None,
    concurrency_strict: bool = False,
) -> Sandbox:
    """Create a sandbox tagged with this flow run, task run and deployment.

    With `image` (built first, or found in the service's cache) or `snapshot` (a named, built image) the
    sandbox starts from it instead of `template`; the build's output goes to the run log as it happens.
    Inside `with transaction():` the sandbox is killed when the transaction rolls back. A create whose
    answer is lost is recovered (the sandbox it made is found by this request's marker), never replayed.

    Args:
        template: Template to start from (`base`, `python`, `node`, ...).
        credentials: The OpenComputer block; default: the environment (or the block named by
            `OPENCOMPUTER_CREDENTIALS_BLOCK`).
        idle_timeout: Seconds of inactivity after which the service hibernates the sandbox; `0` makes it
            persistent, which only an explicit caller gets.
        envs: Environment variables for every command in the sandbox.
        metadata: Stored with the sandbox (the service does not return it).
        memory_mb: Memory tier (1024, 4096, 8192 or 16384).
        tags: Tags of your own, besides the ownership tags this task adds.
        image: A declarative image to start from.
        snapshot: The name of a ready snapshot to start from.
        concurrency_limit: A Prefect global concurrency limit (say `opencomputer-sandboxes`, the service's
            running-sandbox quota): waits for one of its slots, held until the sandbox is killed; the
            service's own 429 (other tools share the quota) is then waited out for up to 10 minutes.
        concurrency_strict: Raise `ConcurrencyLimitMissingError` when that limit does not exist, instead
            of creating the sandbox without it.

    Returns:
        The running sandbox, with its tags.

    Raises:
        BuildFailedError: The image did not build.
        ConcurrencyLimitMissingError: `concurrency_strict` and no such concurrency limit.

    Example:
        ```python
        sandbox = create_sandbox("python", idle_timeout=300)
        ```
    """
    credentials = await resolve_credentials(credentials)
    logger = get_run_logger()
    built = image is not None or snapshot is not None
    origin = _origin(template, image, snapshot)
    async with (
        slot_for_create(concurrency_limit, strict=concurrency_strict) as slot,
        credentials.get_client() as client,
    ):
        # Shielded: once the service has been asked, learn the id even if this task is being cancelled,
        # so the sandbox can be tagged or killed instead of leaking. Under a concurrency limit a full
        # quota (429, other tools share it) is waited out, holding the slot.
        sandbox = await wait_out_full_quota(
            lambda: finish_despite_cancellation(
                create_or_find(
                    client,
                    lambda marker: client.sandboxes.create(
                        template=template,
                        timeout=idle_timeout,
                        envs={**(envs or {}), **marker},
                        metadata={**(metadata or {}), **ownership.ownership_tags()},
                        memory_mb=memory_mb,
                        image=image,
                        snapshot=snapshot,
                        on_build_log=build_log_handler(logger) if built else None,
                    ),
                ),
                timeout=_BUILD_TIMEOUT if built else max(credentials.request_timeout * 4, 120.0),
            ),
            patient=concurrency_limit is not None,
        )
        slot.bind(sandbox.sandbox_id)
        sandbox = await adopt_new_sandbox(
            client, credentials, sandbox, tags={**(tags or {}), **slot.tags}, idle_timeout=None
        )
    logger.info("Created sandbox %s from %s (idle timeout %s s)", sandbox.sandbox_id, origin, idle_timeout)
    run_report.record(
        "sandbox",
        sandbox.sandbox_id,
        origin,
        sandbox.status,
        cleanup=not ownership.is_retained(sandbox.tags),
        memory_mb=memory_mb or sandbox.memory_mb,
    )
    events.emit_sandbox_event(
        events.SANDBOX_CREATED,
        sandbox.sandbox_id,
        payload={"template": template, "origin": origin, "idle_timeout": idle_timeout},
    )
    return sandbox


@opencomputer_task("get_sandbox", run_name=on_sandbox("get-sandbox"), retry_condition=retry_if_replayable)
async def get_sandbox(sandbox: SandboxRef, *, credentials: OpenComputerCredentials | None = None) -> Sandbox:
    """The sandbox as the service reports it now.

    Returns:
        Its status, tags and patch error, as the service sends them.

    Example:
        ```python
        status = get_sandbox(sandbox).status
        ```
    """
    async with service_client(credentials) as client:
        return await client.sandboxes.get(sandbox_id_of(sandbox))


@opencomputer_task(
    "sandbox_is_running", run_name=on_sandbox("is-running"), retry_condition=retry_if_replayable
)
async def sandbox_is_running(
    sandbox: SandboxRef, *, credentials: OpenComputerCredentials | None = None
) -> bool:
    """Whether the sandbox is running now (hibernated, stopped or unknown: False).

    Returns:
        True only for a running sandbox.

    Example:
        ```python
        if not sandbox_is_running(sandbox):
            wake_sandbox(sandbox)
        ```
    """
    async with service_client(credentials) as client:
        return await client.sandboxes.is_running(sandbox_id_of(sandbox))


@opencomputer_task("list_sandboxes", run_name="list-sandboxes", retry_condition=retry_if_replayable)
async def list_sandboxes(
    tags: dict[str, str] | None = None, *, credentials: OpenComputerCredentials | None = None
) -> list[Sandbox]:
    """The running sandboxes the service lists, keeping only those carrying every tag in `tags`.

    Args:
        tags: Tags a sandbox must carry (all of them, with these values) to be listed.

    Returns:
        The matching sandboxes.

    Example:
        ```python
        mine = list_sandboxes({"team": "data"})
        ```
    """
    async with service_client(credentials) as client:
        sandboxes = await client.sandboxes.list()
    wanted = tags or {}
    return [sb for sb in sandboxes if all(sb.tags.get(key) == value for key, value in wanted.items())]


@opencomputer_task("kill_sandbox", run_name=on_sandbox("kill"), retry_condition=retry_if_replayable)
async def kill_sandbox(sandbox: SandboxRef, *, credentials: OpenComputerCredentials | None = None) -> bool:
    """Kill a sandbox (idempotent).

    Returns:
        True when this call killed it, False when it did not exist (nothing to do).

    Example:
        ```python
        kill_sandbox(sandbox)
        ```
    """
    sandbox_id = sandbox_id_of(sandbox)
    async with service_client(credentials) as client:
        killed = await kill_ignoring_missing(client, sandbox_id)
    record_kill(sandbox_id, "kill_sandbox task", killed)
    return killed


@opencomputer_task(
    "set_sandbox_timeout",
    run_name=on_sandbox("set-timeout", "idle_timeout"),
    retry_condition=retry_if_replayable,
)
async def set_sandbox_timeout(
    sandbox: SandboxRef, idle_timeout: int, *, credentials: OpenComputerCredentials | None = None
) -> None:
    """Set the rolling idle timeout of a sandbox.

    Args:
        idle_timeout: Seconds; `0` = persistent (the sandbox never hibernates on its own).

    Returns:
        Nothing; the service applies the timeout from now on (a hibernated sandbox wakes for it).

    Example:
        ```python
        set_sandbox_timeout(sandbox, 3600)
        ```
    """
    async with service_client(credentials) as client:
        await client.sandboxes.set_timeout(sandbox_id_of(sandbox), idle_timeout)


@opencomputer_task("hibernate_sandbox", run_name=on_sandbox("hibernate"), retry_condition=retry_if_replayable)
async def hibernate_sandbox(
    sandbox: SandboxRef, *, credentials: OpenComputerCredentials | None = None
) -> Sandbox:
    """Hibernate a running sandbox: its processes pause with their memory; any later data call wakes it.

    Returns:
        The sandbox, hibernated.

    Example:
        ```python
        hibernate_sandbox(sandbox)
        ```
    """
    async with service_client(credentials) as client:
        hibernated = await client.sandboxes.hibernate(sandbox_id_of(sandbox))
    # A hibernated sandbox does not count against the service's quota: neither does it hold a slot.
    await quota.release_slot_of(hibernated.sandbox_id)
    run_report.record("hibernate", hibernated.sandbox_id, "", hibernated.status)
    return hibernated


@opencomputer_task("wake_sandbox", run_name=on_sandbox("wake"), retry_condition=retry_if_replayable)
async def wake_sandbox(
    sandbox: SandboxRef,
    idle_timeout: int | None = DEFAULT_IDLE_TIMEOUT,
    *,
    credentials: OpenComputerCredentials | None = None,
) -> Sandbox:
    """Wake a hibernated sandbox (waking a running one is a no-op).

    Args:
        idle_timeout: Applies when the service restores the sandbox from deep hibernation, where an
            omitted value would make it persistent.

    Returns:
        The sandbox, running.

    Example:
        ```python
        wake_sandbox(sandbox)
        ```
    """
    credentials = await resolve_credentials(credentials)
    sandbox_id = sandbox_id_of(sandbox)
    # Created under a concurrency limit: running again takes a slot again (given back if the wake fails).
    lease = await quota.retake_slot(sandbox_id)
    try:
        async with credentials.get_client() as client:
            woken = await client.sandboxes.wake(sandbox_id, timeout=idle_timeout)
            if lease is not None:
                current = await client.sandboxes.get_tags(sandbox_id)
                await client.sandboxes.set_tags(sandbox_id, {**current.tags, **quota.lease_tags(lease)})
    except BaseException:
        await finish_despite_cancellation(quota.release_slot_of(sandbox_id), timeout=30.0)
        raise
    run_report.record("wake", woken.sandbox_id, "", woken.status)
    return woken


@opencomputer_task(
    "retain_sandbox", run_name=on_sandbox("retain", "reason"), retry_condition=retry_if_replayable
)
async def retain_sandbox(
    sandbox: SandboxRef, reason: str = "kept", *, credentials: OpenComputerCredentials | None = None
) -> Sandbox:
    """Keep a sandbox beyond its flow run: cleanup hooks and the reaper leave it (and its checkpoints) alone.

    Args:
        reason: The value of its `prefect.retain` tag, for whoever finds it later.

    Returns:
        The sandbox, with its tags.

    Example:
        ```python
        retain_sandbox(sandbox, "holds the golden checkpoint")
        ```
    """
    sandbox_id = sandbox_id_of(sandbox)
    async with service_client(credentials) as client:
        current = await client.sandboxes.get_tags(sandbox_id)
        applied = await client.sandboxes.set_tags(sandbox_id, {**current.tags, ownership.TAG_RETAIN: reason})
        state = await client.sandboxes.get(sandbox_id)
    run_registry.release(sandbox_id)
    run_report.record("retain", sandbox_id, reason, "retained", cleanup=False)
    return state.model_copy(
        update={"tags": applied.tags, "tags_last_updated_at": applied.tags_last_updated_at}
    )


acreate_sandbox = create_sandbox.aio


@opencomputer_task("get_sandbox_tags", run_name=on_sandbox("get-tags"), retry_condition=retry_if_replayable)
async def get_sandbox_tags(
    sandbox: SandboxRef, *, credentials: OpenComputerCredentials | None = None
) -> dict[str, str]:
    """The sandbox's tags as the service holds them now: yours and the ownership tags (`prefect.*`).

    Returns:
        Its tags.

    Example:
        ```python
        team = get_sandbox_tags(sandbox).get("team")
        ```
    """
    async with service_client(credentials) as client:
        return dict((await client.sandboxes.get_tags(sandbox_id_of(sandbox))).tags)


@opencomputer_task("set_sandbox_tags", run_name=on_sandbox("set-tags"), retry_condition=retry_if_replayable)
async def set_sandbox_tags(
    sandbox: SandboxRef, tags: dict[str, str], *, credentials: OpenComputerCredentials | None = None
) -> dict[str, str]:
    """Replace the sandbox's own tags with `tags`, keeping its ownership tags (a full replace: safe to retry).

    The ownership tags (`prefect.*`) are what cleanup hooks and the reaper find the sandbox by, so they stay
    unless `tags` gives one of them a value of its own.

    Args:
        tags: The tags it should carry besides the ownership tags (`{}` removes all of yours).

    Returns:
        All its tags afterwards.

    Example:
        ```python
        set_sandbox_tags(sandbox, {"team": "data", "stage": "review"})
        ```
    """
    sandbox_id = sandbox_id_of(sandbox)
    async with service_client(credentials) as client:
        current = (await client.sandboxes.get_tags(sandbox_id)).tags
        kept = {
            key: value for key, value in current.items() if key.startswith(ownership.OWNERSHIP_TAG_PREFIX)
        }
        return dict((await client.sandboxes.set_tags(sandbox_id, {**kept, **tags})).tags)


@opencomputer_task("list_tag_keys", run_name="list-tag-keys", retry_condition=retry_if_replayable)
async def list_tag_keys(*, credentials: OpenComputerCredentials | None = None) -> list[TagKey]:
    """The tag keys in use across the organization's sandboxes, with how many sandboxes carry each.

    Returns:
        Each key with its sandbox count and its number of distinct values.

    Example:
        ```python
        keys = {tag.key: tag.sandbox_count for tag in list_tag_keys()}
        ```
    """
    async with service_client(credentials) as client:
        return await client.sandboxes.tag_keys()


aget_sandbox = get_sandbox.aio
asandbox_is_running = sandbox_is_running.aio
alist_sandboxes = list_sandboxes.aio
akill_sandbox = kill_sandbox.aio
aset_sandbox_timeout = set_sandbox_timeout.aio
ahibernate_sandbox = hibernate_sandbox.aio
awake_sandbox = wake_sandbox.aio
aretain_sandbox = retain_sandbox.aio
aget_sandbox_tags = get_sandbox_tags.aio
aset_sandbox_tags = set_sandbox_tags.aio
alist_tag_keys = list_tag_keys.aio
