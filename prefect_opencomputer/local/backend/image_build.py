"""Running an image manifest: its steps in order in a throwaway builder sandbox, then its layer checkpointed.

Steps run as the hosted builder runs them: each is one shell command through the normal exec path, as the
``sandbox`` user; package installs go through ``sudo``; ``env`` appends to ``/etc/environment`` and
``/etc/profile.d/osb-image.sh`` (so later plain commands do not see it, login shells and ``sudo`` do);
``workdir`` only creates the directory. Every line a step prints becomes a build log line while the step
runs. A step that fails (or times out) ends the build: the builder and anything half-copied are
removed, and `BuildFailed` names the step and its last output lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prefect_opencomputer.local.backend.image_manifest import BuildStep, ImageManifest
from prefect_opencomputer.local.sandbox.cgroups import Limits
from prefect_opencomputer.local.sandbox.runtime import kill_group

if TYPE_CHECKING:
    from prefect_opencomputer.local.backend.core import SandboxCore

# (step number, step type, message): step 0 is the build's own bookkeeping.
BuildLogger = Callable[[int, str, str], Awaitable[None] | None]

STEP_TIMEOUT_SECONDS = 900.0
# Images build over the base template (every template shares its tree), in a builder of the default size.
BUILD_TEMPLATE = "base"
BUILD_LIMITS = Limits(memory_bytes=4096 * 1024 * 1024, max_processes=4096, cpu_quota_cores=1.0)
_MAX_LINE_CHARS = 4000
_TAIL_LINES = 30
_TAIL_CHARS = 3000
# After a step's process exits, how long its output may take to drain (a background child can hold the pipes).
_PIPE_GRACE_SECONDS = 1.0


class BuildFailed(Exception):
    """A step of the manifest failed; the message names it and carries its last output lines."""

    def __init__(self, message: str, *, step: int = 0, step_type: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.step = step
        self.step_type = step_type


@dataclass(frozen=True)
class BuiltImage:
    """The checkpoint a build left: everything an image gives its sandboxes is in its files."""

    size_bytes: int


async def build_image(
    core: SandboxCore,
    manifest: ImageManifest,
    *,
    builder_id: str,
    checkpoint_id: str,
    log: BuildLogger,
    step_timeout: float = STEP_TIMEOUT_SECONDS,
) -> BuiltImage:
    """Build `manifest` in a new sandbox `builder_id` and copy its layer into checkpoint `checkpoint_id`.

    The builder is destroyed whatever happens; on failure (or cancellation) no checkpoint layer is left.
    """
    total = len(manifest.steps)
    build = _Build(core, builder_id, log, step_timeout)
    snapshotted = False
    try:
        await core.launch_builder(
            builder_id, template=BUILD_TEMPLATE, hostname="builder", limits=BUILD_LIMITS
        )
        await _emit(log, 0, "build", f"Building image with {total} steps")
        for step in manifest.steps:
            await _emit(log, step.number, step.type, f"Step {step.number}/{total}: {step.describe()}")
            await build.run_step(step)
            await _emit(log, step.number, step.type, f"Step {step.number}/{total} completed")
        await _emit(log, total + 1, "checkpoint", "Creating checkpoint...")
        # Stopped first, so the copy sees a quiet layer: no process is still writing into it.
        await core.halt(builder_id)
        snapshotted = True
        size = await core.take_checkpoint(builder_id, checkpoint_id)
    except BaseException:
        if snapshotted:
            with contextlib.suppress(Exception):
                await core.remove_checkpoint(checkpoint_id)
        raise
    finally:
        with contextlib.suppress(Exception):
            await core.remove(builder_id)
    return BuiltImage(size_bytes=size)


def step_command(step: BuildStep) -> str:
    """The shell command the hosted builder runs for a step (``add_file`` and ``add_dir`` write files)."""
    if step.type == "apt_install":
        packages = " ".join(shlex.quote(name) for name in step.packages)
        return (
            "sudo DEBIAN_FRONTEND=noninteractive apt-get update -qq && "
            f"sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {packages}"
        )
    if step.type == "pip_install":
        return "sudo pip install -q " + " ".join(shlex.quote(name) for name in step.packages)
    if step.type == "run":
        return " && ".join(step.commands)
    if step.type == "env":
        lines = []
        for key, value in step.variables.items():
            assignment = shlex.quote(f"{key}={value}")
            export = shlex.quote(f"export {key}={shlex.quote(value)}")
            lines.append(f"echo {assignment} | sudo tee -a /etc/environment >/dev/null")
            lines.append(f"echo {export} | sudo tee -a /etc/profile.d/osb-image.sh >/dev/null")
        return " && ".join(lines) or "true"
    if step.type == "workdir":
        return f"sudo mkdir -p {shlex.quote(step.path)}"
    raise ValueError(f"step {step.number} ({step.type}) writes files, it runs no command")


class _Build:
    """One build's steps, each in the builder sandbox as the hosted builder runs it."""

    def __init__(self, core: SandboxCore, builder_id: str, log: BuildLogger, step_timeout: float) -> None:
        self.core = core
        self.builder_id = builder_id
        self.log = log
        self.step_timeout = step_timeout

    async def run_step(self, step: BuildStep) -> None:
        if step.type in ("add_file", "add_dir"):
            await self._write_files(step)
        else:
            await self._exec(step, ["/bin/bash", "-c", step_command(step)])

    async def _exec(self, step: BuildStep, argv: Sequence[str]) -> None:
        """Run one step's command as the sandbox user, logging each output line as it comes."""
        tail: deque[str] = deque(maxlen=_TAIL_LINES)

        async def line(text: str) -> None:
            tail.append(text)
            await _emit(self.log, step.number, step.type, text)

        process = await self.core.spawn(self.builder_id, argv)
        assert process.stdout is not None and process.stderr is not None
        readers = {
            asyncio.ensure_future(_read_lines(process.stdout, line)),
            asyncio.ensure_future(_read_lines(process.stderr, line)),
        }
        try:
            try:
                async with asyncio.timeout(self.step_timeout):
                    code = await process.wait()
            except TimeoutError:
                kill_group(process.pid)
                await process.wait()
                raise BuildFailed(
                    _failure(step, f"timed out after {self.step_timeout:.0f}s", tail),
                    step=step.number,
                    step_type=step.type,
                ) from None
            # A background process the command started may hold the pipes: take what is there.
            await asyncio.wait(readers, timeout=_PIPE_GRACE_SECONDS)
        except BaseException:
            kill_group(process.pid)
            raise
        finally:
            for reader in readers:
                reader.cancel()
        if code != 0:
            raise BuildFailed(
                _failure(step, f"exited with code {code}", tail), step=step.number, step_type=step.type
            )

    async def _write_files(self, step: BuildStep) -> None:
        files = self.core.file_ops(self.builder_id)
        try:
            for path, content in step.files:
                writer = await files.open_write(path)
                try:
                    await writer.write(content)
                    await writer.close()
                finally:
                    writer.abort()
        except (OSError, ValueError) as error:
            raise BuildFailed(
                _failure(step, f"could not write: {error}", ()), step=step.number, step_type=step.type
            ) from error
        for path, content in step.files:
            await _emit(self.log, step.number, step.type, f"wrote {path} ({len(content)} bytes)")


async def _read_lines(stream: asyncio.StreamReader, on_line: Callable[[str], Awaitable[None]]) -> None:
    """Hand every line of `stream` to `on_line` (long lines cut, carriage-return progress kept as lines)."""
    pending = b""
    while chunk := await stream.read(65536):
        pending += chunk
        *lines, pending = pending.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        for raw in lines:
            if raw.strip():
                await on_line(_text(raw))
        if len(pending) > _MAX_LINE_CHARS * 4:
            await on_line(_text(pending))
            pending = b""
    if pending.strip():
        await on_line(_text(pending))


def _text(raw: bytes) -> str:
    text = raw.decode(errors="replace").rstrip()
    return text if len(text) <= _MAX_LINE_CHARS else text[:_MAX_LINE_CHARS] + "..."


def _failure(step: BuildStep, what: str, tail: Sequence[str]) -> str:
    output = "\n".join(tail)
    if len(output) > _TAIL_CHARS:
        output = "..." + output[-_TAIL_CHARS:]
    message = f"step {step.number} ({step.type}: {step.describe()}) {what}"
    return f"{message}:\n{output}" if output else message


async def _emit(log: BuildLogger, step: int, step_type: str, message: str) -> None:
    outcome = log(step, step_type, message)
    if outcome is not None:
        await outcome
