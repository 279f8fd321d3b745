"""`OpenComputerWorker`: each flow run of a deployment runs in a sandbox of its own.

The sandbox starts from a cached declarative image with Prefect (or a template, snapshot or checkpoint the
pool names), the flow-run command runs in it as an exec session whose output goes to the flow run's logs,
and the sandbox is killed once that process has exited. Before `task_status.started()` a failure raises
(Prefect marks the run Crashed with the message); after it nothing raises: a failure is a non-zero result.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
from typing import TYPE_CHECKING

import anyio.abc
from prefect.client.schemas.objects import StateType
from prefect.exceptions import InfrastructureNotAvailable, InfrastructureNotFound
from prefect.logging.loggers import LoggingAdapter
from prefect.workers.base import BaseWorker, BaseWorkerResult

from prefect_opencomputer._settings import API_KEY_ENV
from prefect_opencomputer.blocks.credentials import LOGO_URL, aload_credentials
from prefect_opencomputer.client import (
    ExecExit,
    ExecOutput,
    ForbiddenError,
    NotFoundError,
    OpenComputerClient,
    OpenComputerError,
    RateLimitedError,
    Sandbox,
    UnauthorizedError,
)
from prefect_opencomputer.tasks import quota
from prefect_opencomputer.tasks.leakproof import finish_despite_cancellation, kill_ignoring_missing
from prefect_opencomputer.tasks.output import CommandOutput, OutputLimits, Stream, build_log_handler
from prefect_opencomputer.tasks.ownership import (
    CREATED_BY,
    TAG_CREATED_BY,
    TAG_DEPLOYMENT,
    TAG_WORKER_FLOW_RUN,
)
from prefect_opencomputer.worker.code import copy_directory_into, local_code_directory, pack_directory
from prefect_opencomputer.worker.configuration import (
    OpenComputerJobConfiguration,
    OpenComputerVariables,
    is_loopback_url,
)

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

# Between the API base and the sandbox id in an infrastructure id; neither contains it at its end.
_ID_SEPARATOR = "|"
# Quota (429) before the start: wait, doubling from the first pause up to the longest, for at most this long.
_QUOTA_FIRST_PAUSE = 2.0
_QUOTA_LONGEST_PAUSE = 60.0
_QUOTA_PATIENCE = 30 * 60.0
# Attachments in a row that fail are retried (the process keeps running) this many times before giving up.
_REATTACH_ATTEMPTS = 20
_KILL_TIMEOUT = 60.0
# On a non-zero exit, this many of the last lines of each stream go to the flow run's logs at ERROR.
_FAILURE_TAIL_LINES = 30
# The exit code reported when the worker lost the flow-run process (it may still have finished).
LOST_EXIT_CODE = -1


class OpenComputerWorkerResult(BaseWorkerResult):
    """The flow-run process's exit code and the infrastructure id of its sandbox."""


def infrastructure_id(api_base: str, sandbox_id: str) -> str:
    """An id that names the endpoint and the sandbox, so no worker kills a namesake on another endpoint."""
    return f"{api_base}{_ID_SEPARATOR}{sandbox_id}"


def parse_infrastructure_id(value: str) -> tuple[str, str]:
    api_base, separator, sandbox_id = value.rpartition(_ID_SEPARATOR)
    if not separator or not api_base or not sandbox_id:
        raise InfrastructureNotAvailable(
            f"{value!r} is not the id of a sandbox started by an opencomputer worker"
        )
    return api_base, sandbox_id


class OpenComputerWorker(
    BaseWorker[OpenComputerJobConfiguration, OpenComputerVariables, OpenComputerWorkerResult]
):
    """Runs each flow run in its own OpenComputer sandbox (the hosted service or a local server)."""

    type = "opencomputer"
    job_configuration = OpenComputerJobConfiguration
    job_configuration_variables = OpenComputerVariables
    _display_name = "OpenComputer"
    _description = (
        "Run each flow run in its own OpenComputer sandbox: a full Linux machine started from a cached "
        "image, a snapshot or a checkpoint, killed when the run ends."
    )
    _documentation_url = (
        "https://github.com/prefect-opencomputer/prefect-opencomputer#an-opencomputer-work-pool"
    )
    _logo_url = LOGO_URL

    async def run(
        self,
        flow_run: FlowRun,
        configuration: OpenComputerJobConfiguration,
        # Prefect annotates an int (a process id); it stores whatever is given as a string.
        task_status: anyio.abc.TaskStatus[str] | None = None,  # type: ignore[override]
    ) -> OpenComputerWorkerResult:
        logger = self.get_flow_run_logger(flow_run)
        credentials = await aload_credentials(credentials=configuration.credentials)
        async with credentials.get_client() as client:
            sandbox = await _start_sandbox(client, configuration, flow_run, logger)
            identifier = infrastructure_id(client.api_base, sandbox.sandbox_id)
            try:
                await self._bring_code(client, sandbox.sandbox_id, flow_run, configuration, logger)
                await self._refuse_if_cancelled(flow_run, sandbox.sandbox_id)
            except BaseException:
                await _kill(client, sandbox.sandbox_id, logger)
                raise
            if task_status is not None:
                task_status.started(identifier)
            # From here on nothing raises: Prefect reads a non-zero status as Crashed.
            try:
                exit_code = await _run_command(client, sandbox.sandbox_id, configuration, logger)
            except Exception as error:
                logger.error("Lost the flow-run process in sandbox %s: %s", sandbox.sandbox_id, error)
                exit_code = LOST_EXIT_CODE
            finally:
                if configuration.kill_on_exit:
                    await _kill(client, sandbox.sandbox_id, logger)
        return OpenComputerWorkerResult(identifier=identifier, status_code=exit_code)

    async def _bring_code(
        self,
        client: OpenComputerClient,
        sandbox_id: str,
        flow_run: FlowRun,
        configuration: OpenComputerJobConfiguration,
        logger: LoggingAdapter,
    ) -> None:
        if flow_run.deployment_id is None:
            return
        deployment = await self.client.read_deployment(flow_run.deployment_id)
        directory = local_code_directory(deployment.pull_steps)
        if directory is None:
            return
        packed = await asyncio.to_thread(
            pack_directory, directory, max_bytes=configuration.max_code_mb * 1024 * 1024
        )
        logger.info(
            "Copying the flow code in %s into sandbox %s (%d KB packed)",
            directory,
            sandbox_id,
            len(packed) // 1024,
        )
        await copy_directory_into(client, sandbox_id, directory, packed)

    async def _refuse_if_cancelled(self, flow_run: FlowRun, sandbox_id: str) -> None:
        """A run cancelled while its sandbox started (an image build takes a while) must not start now."""
        current = await self.client.read_flow_run(flow_run.id)
        state = current.state
        if state is not None and (state.is_final() or state.type == StateType.CANCELLING):
            raise RuntimeError(
                f"the flow run became {state.name} while its sandbox {sandbox_id} started; "
                "the sandbox is killed and the flow does not run"
            )

    async def kill_infrastructure(
        self,
        infrastructure_pid: str,
        configuration: OpenComputerJobConfiguration,
        grace_seconds: int = 30,
    ) -> None:
        """Kill the run's sandbox, running or hibernated; only one on the endpoint this pool talks to."""
        api_base, sandbox_id = parse_infrastructure_id(infrastructure_pid)
        credentials = await aload_credentials(credentials=configuration.credentials)
        async with credentials.get_client() as client:
            if api_base != client.api_base:
                raise InfrastructureNotAvailable(
                    f"sandbox {sandbox_id} runs on {api_base}, but this worker's credentials point at "
                    f"{client.api_base}"
                )
            try:
                sandbox = await client.sandboxes.get(sandbox_id)
            except NotFoundError as error:
                raise InfrastructureNotFound(f"sandbox {sandbox_id} does not exist") from error
            if sandbox.status not in ("running", "hibernated"):
                raise InfrastructureNotFound(f"sandbox {sandbox_id} is already {sandbox.status}")
            if not await kill_ignoring_missing(client, sandbox_id):
                raise InfrastructureNotFound(f"sandbox {sandbox_id} does not exist")


async def _start_sandbox(
    client: OpenComputerClient,
    configuration: OpenComputerJobConfiguration,
    flow_run: FlowRun,
    logger: LoggingAdapter,
) -> Sandbox:
    """Create or fork the run's sandbox, holding a slot of the pool's concurrency limit if it names one."""
    tags = {
        **configuration.tags,
        TAG_CREATED_BY: CREATED_BY,
        TAG_WORKER_FLOW_RUN: str(flow_run.id),
    }
    if flow_run.deployment_id is not None:
        tags[TAG_DEPLOYMENT] = str(flow_run.deployment_id)
    limit = configuration.concurrency_limit
    # One slot of the pool's limit from create to kill (`_kill` gives it back, as every kill does).
    lease = await quota.take_slot(limit, strict=False) if limit else None
    tags.update(quota.lease_tags(lease))
    try:
        sandbox = await _create_waiting_out_the_quota(client, configuration, logger)
    except BaseException:
        if lease is not None:
            await quota.give_back(lease)
        raise
    if limit:
        quota.bind(sandbox.sandbox_id, lease, limit, strict=False)
    # Tagged at once, so the reaper can tell whose it is if this worker dies from here on.
    try:
        await client.sandboxes.set_tags(sandbox.sandbox_id, tags)
    except BaseException:
        await _kill(client, sandbox.sandbox_id, logger)
        raise
    return sandbox


async def _create_waiting_out_the_quota(
    client: OpenComputerClient, configuration: OpenComputerJobConfiguration, logger: LoggingAdapter
) -> Sandbox:
    """Create or fork, waiting out a full quota; bad credentials raise a clear error."""
    pause = _QUOTA_FIRST_PAUSE
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + _QUOTA_PATIENCE
    while True:
        try:
            sandbox = await _create(client, configuration, logger)
            break
        except (UnauthorizedError, ForbiddenError) as error:
            raise RuntimeError(
                f"the OpenComputer API at {client.api_base} refused the credentials "
                f"(HTTP {error.status_code}): check the API key of the pool's credentials block "
                f"(or {API_KEY_ENV} where the worker runs)"
            ) from None
        except RateLimitedError as error:
            wait = min(max(error.retry_after or pause, 0.5), _QUOTA_LONGEST_PAUSE)
            if loop.time() + wait > give_up_at:
                raise RuntimeError(
                    f"the sandbox quota stayed full for {_QUOTA_PATIENCE / 60:g} minutes: {error.message}"
                ) from None
            logger.warning("Sandbox quota reached (%s); trying again in %.0f s", error.message, wait)
            await asyncio.sleep(wait)
            pause = min(pause * 2, _QUOTA_LONGEST_PAUSE)
    return sandbox


async def _create(
    client: OpenComputerClient,
    configuration: OpenComputerJobConfiguration,
    logger: LoggingAdapter,
) -> Sandbox:
    if configuration.checkpoint_id is not None:
        sandbox = await client.checkpoints.fork(
            configuration.checkpoint_id,
            memory_mb=configuration.memory_mb,
            timeout=configuration.idle_timeout,
        )
        logger.info("Forked sandbox %s from checkpoint %s", sandbox.sandbox_id, configuration.checkpoint_id)
        return sandbox
    image = configuration.start_image()
    sandbox = await client.sandboxes.create(
        template=configuration.template or "base",
        timeout=configuration.idle_timeout,
        memory_mb=configuration.memory_mb,
        cpu_count=configuration.cpu_count,
        disk_mb=configuration.disk_mb,
        image=image,
        snapshot=configuration.snapshot,
        on_build_log=build_log_handler(logger) if image is not None else None,
    )
    start = (
        f"template {configuration.template}"
        if configuration.template
        else f"snapshot {configuration.snapshot}"
        if configuration.snapshot
        else f"image {image.cache_key()[:12]}"
        if image is not None
        else "the base template"
    )
    logger.info("Created sandbox %s from %s", sandbox.sandbox_id, start)
    return sandbox


async def _run_command(
    client: OpenComputerClient,
    sandbox_id: str,
    configuration: OpenComputerJobConfiguration,
    logger: LoggingAdapter,
) -> int:
    """Run the flow-run command as an exec session, forwarding its output, and return its exit code."""
    command = configuration.command or "prefect flow-run execute"
    env = configuration.command_env(local_server=is_loopback_url(client.api_base))
    # A worker that dies takes its runs with it, as Prefect's process worker does; the reaper ends them.
    session = await client.exec.start(
        sandbox_id,
        "sh",
        args=["-c", command],
        envs=env,
        cwd=configuration.working_dir,
        max_run_after_disconnect=configuration.lost_worker_grace,
    )
    logger.info(
        "Started %r in sandbox %s (session %s)", shlex.split(command)[:4], sandbox_id, session.session_id
    )
    output = CommandOutput(logger, OutputLimits(max_lines=configuration.output_lines))
    exit_code: int | None = None
    seen_bytes = {"stdout": 0, "stderr": 0}
    failures = 0  # attachments in a row that delivered nothing: a long run may see many drops
    while failures < _REATTACH_ATTEMPTS:
        replayed = {"stdout": 0, "stderr": 0}
        delivered = False
        try:
            async for event in client.exec.attach(sandbox_id, session.session_id):
                delivered = True
                if isinstance(event, ExecOutput):
                    # A re-attach replays the scrollback: skip what was already forwarded.
                    start = max(seen_bytes[event.stream] - replayed[event.stream], 0)
                    replayed[event.stream] += len(event.data)
                    if start < len(event.data):
                        output.feed(event.stream, event.data[start:])
                        seen_bytes[event.stream] += len(event.data) - start
                elif isinstance(event, ExecExit):
                    exit_code = event.exit_code
        except (OpenComputerError, OSError) as error:
            logger.warning(
                "Lost the output of sandbox %s for a moment (%s); attaching again", sandbox_id, error
            )
        if exit_code is not None and exit_code != LOST_EXIT_CODE:
            break
        # The socket closed without an exit code: ask the session; attach again if it still runs.
        try:
            finished = await _session_exit_code(client, sandbox_id, session.session_id)
        except (OpenComputerError, OSError):
            finished = None
        if finished is not None:
            exit_code = finished
            break
        failures = 0 if delivered else failures + 1
        await asyncio.sleep(1.0)
    output.finish()
    code = LOST_EXIT_CODE if exit_code is None else exit_code
    if code != 0:
        _log_failure_tail(output, logger, code)
    return code


async def _session_exit_code(client: OpenComputerClient, sandbox_id: str, session_id: str) -> int | None:
    """The session's exit code once it has exited; None while it runs. A gone sandbox counts as lost."""
    try:
        sessions = await client.exec.list(sandbox_id)
    except NotFoundError:
        return LOST_EXIT_CODE
    for session in sessions:
        if session.session_id == session_id:
            if session.running:
                return None
            return LOST_EXIT_CODE if session.exit_code is None else session.exit_code
    return LOST_EXIT_CODE


def _log_failure_tail(output: CommandOutput, logger: LoggingAdapter | logging.Logger, exit_code: int) -> None:
    """The last lines before a failure, at ERROR: an import error before the engine starts shows in the UI."""
    logger.error("The flow-run process exited with code %d; its last output:", exit_code)
    streams: tuple[Stream, ...] = ("stderr", "stdout")
    for stream in streams:
        lines = output.text(stream).splitlines()[-_FAILURE_TAIL_LINES:]
        for line in lines:
            logger.error("[%s] %s", stream, line)


async def _kill(client: OpenComputerClient, sandbox_id: str, logger: LoggingAdapter) -> None:
    """Kill the sandbox, even while the worker is being cancelled; a failure is logged, never raised."""
    try:
        await finish_despite_cancellation(kill_ignoring_missing(client, sandbox_id), timeout=_KILL_TIMEOUT)
    except (OpenComputerError, TimeoutError) as error:
        logger.warning("Could not kill sandbox %s: %s (its idle timeout will stop it)", sandbox_id, error)
    else:
        logger.info("Killed sandbox %s", sandbox_id)


__all__ = ["OpenComputerWorker", "OpenComputerWorkerResult", "infrastructure_id", "parse_infrastructure_id"]
