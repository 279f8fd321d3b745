"""The image build engine on its own, driven with a sandbox runtime: no HTTP, no state."""

from __future__ import annotations

import opencomputer
import pytest
from booting import start

from prefect_opencomputer.client import Image
from prefect_opencomputer.local.backend.core import SandboxCore
from prefect_opencomputer.local.backend.image_build import BuildFailed, BuiltImage, build_image
from prefect_opencomputer.local.backend.image_manifest import parse_manifest
from prefect_opencomputer.local.config import LocalServerConfig
from prefect_opencomputer.local.errors import BackendError
from prefect_opencomputer.local.sandbox.runtime import SandboxRuntime

CHECKPOINT = "00000000-0000-4000-8000-00000000cafe"


class BuildLogLines:
    """What a build logged, as (step, type, message) triples."""

    def __init__(self) -> None:
        self.lines: list[tuple[int, str, str]] = []

    def __call__(self, step: int, step_type: str, message: str) -> None:
        self.lines.append((step, step_type, message))

    def messages(self, step: int | None = None) -> list[str]:
        return [message for number, _, message in self.lines if step is None or number == step]


async def build(
    runtime: SandboxRuntime, image: Image, log: BuildLogLines, *, step_timeout: float = 60
) -> BuiltImage:
    # The build reaches the runtime through the backend's core, as the server's builds do.
    core = SandboxCore(LocalServerConfig(data_dir=runtime.root.parent, api_key="k"), runtime)
    return await build_image(
        core,
        parse_manifest(image.to_dict()),
        builder_id="sb-builder1",
        checkpoint_id=CHECKPOINT,
        log=log,
        step_timeout=step_timeout,
    )


async def fork_and_run(runtime: SandboxRuntime, script: str, *, cwd: str | None = None) -> str:
    """Start a sandbox from the built checkpoint and run `script` in it as the sandbox user."""
    await runtime.layers.fork(CHECKPOINT, "sb-fromimg1")
    await start(runtime, "sb-fromimg1")
    result = await runtime.run("sb-fromimg1", ["/bin/bash", "-c", script], cwd=cwd, timeout=30)
    assert result.exit_code == 0, result
    return result.stdout.decode()


@pytest.mark.slow
async def test_steps_run_as_the_hosted_builder_runs_them_and_their_result_is_the_checkpoint(
    runtime: SandboxRuntime,
) -> None:
    image = (
        Image.base()
        .env({"GREETING": "hello"})
        .run_commands("echo step-two sees ${GREETING:-nothing}", "id -un > /tmp/built-by")
        .workdir("/srv/app")
        .run_commands("pwd > /tmp/where-i-ran")
        .add_file("/srv/app/config.toml", "debug = true\n")
        .add_dir("/home/sandbox/data", {"a.txt": "A", "nested/b.txt": b"B"})
    )
    log = BuildLogLines()

    await build(runtime, image, log)

    # env lands in /etc/environment and profile.d, as hosted: a plain later command does not see it.
    assert "step-two sees nothing" in log.messages(step=2)
    steps = [number for number, _, _ in log.lines]
    assert steps == sorted(steps), "steps log in order"
    assert log.lines[-1] == (7, "checkpoint", "Creating checkpoint...")
    assert await runtime.wait_stopped(30)  # a killed sandbox's disk goes in the background
    assert not runtime.layers.sandbox_exists("sb-builder1"), "the builder is gone"

    out = await fork_and_run(
        runtime,
        "cat /tmp/built-by /tmp/where-i-ran /srv/app/config.toml /home/sandbox/data/a.txt "
        "/home/sandbox/data/nested/b.txt; echo; stat -c %U /srv/app /home/sandbox/data/a.txt; "
        "grep GREETING /etc/environment; bash -lc 'echo login shell sees $GREETING'",
    )
    assert out.split() == [
        *("sandbox", "/home/sandbox", "debug", "=", "true", "AB", "root", "root"),
        *("GREETING=hello", "login", "shell", "sees", "hello"),
    ]


@pytest.mark.slow
async def test_a_failing_step_names_itself_and_its_output_and_leaves_nothing(runtime: SandboxRuntime) -> None:
    image = Image.base().run_commands("echo fine").run_commands("echo about to fail; echo broken >&2; exit 3")
    image = image.run_commands("echo never-runs")
    log = BuildLogLines()

    with pytest.raises(BuildFailed) as caught:
        await build(runtime, image, log)

    message = caught.value.message
    assert caught.value.step == 2 and caught.value.step_type == "run"
    assert message.startswith("step 2 (run: ") and "exited with code 3" in message
    assert "about to fail" in message and "broken" in message
    assert "never-runs" not in "\n".join(log.messages())
    assert await runtime.wait_stopped(30)  # a killed sandbox's disk goes in the background
    assert not runtime.layers.sandbox_exists("sb-builder1")
    assert not runtime.layers.checkpoint_exists(CHECKPOINT)
    assert runtime.running_ids() == []


@pytest.mark.slow
async def test_a_step_that_runs_too_long_is_killed_and_fails_the_build(runtime: SandboxRuntime) -> None:
    image = Image.base().run_commands("echo started; sleep 60")

    with pytest.raises(BuildFailed) as caught:
        await build(runtime, image, BuildLogLines(), step_timeout=1)

    assert "timed out after 1s" in caught.value.message and "started" in caught.value.message
    assert runtime.running_ids() == []


@pytest.mark.slow
async def test_apt_and_pip_packages_install_through_sudo_for_the_sandbox_user(
    runtime: SandboxRuntime,
) -> None:
    image = Image.base().apt_install(["cowsay"]).pip_install(["tomli-w"])
    log = BuildLogLines()

    await build(runtime, image, log)

    assert any("Setting up cowsay" in message for message in log.messages(step=1))
    out = await fork_and_run(
        runtime, "/usr/games/cowsay moo; python3 -c 'import tomli_w; print(tomli_w.dumps({\"ok\": 1}))'"
    )
    assert "< moo >" in out and out.endswith("ok = 1\n\n")


def test_the_content_hash_is_the_official_sdks_cache_key() -> None:
    sdk_image = (
        opencomputer.Image.base()
        .apt_install(["cowsay"])
        .run_commands("echo ü")
        .env({"A": "1"})
        .add_file("/etc/x", "y")
        .builder_memory(2048)
    )
    ours = Image.base().apt_install(["cowsay"]).run_commands("echo ü").env({"A": "1"}).add_file("/etc/x", "y")

    assert ours.builder_memory(2048).to_dict() == sdk_image.to_dict()
    assert parse_manifest(sdk_image.to_dict()).content_hash == sdk_image.cache_key() == ours.cache_key()


@pytest.mark.parametrize(
    ("manifest", "complaint"),
    [
        ({"base": "windows", "steps": []}, "unknown base 'windows'"),
        ({"steps": [{"type": "apt_install", "args": {"packages": ["-oDebug=1"]}}]}, "step 1 (apt_install)"),
        ({"steps": [{"type": "run", "args": {"commands": []}}]}, "commands must be a non-empty array"),
        ({"steps": [{"type": "teleport", "args": {}}]}, "unknown step type 'teleport'"),
        ({"steps": [{"type": "env", "args": {"vars": {"1BAD": "x"}}}]}, "not a variable name: '1BAD'"),
        ({"steps": [{"type": "workdir", "args": {"path": "relative"}}]}, "absolute path"),
        ({"steps": [{"type": "add_file", "args": {"path": "/x", "content": "***"}}]}, "valid base64"),
        (
            {
                "steps": [
                    {"type": "add_dir", "args": {"path": "/d", "files": [{"relativePath": "../../etc/x"}]}}
                ]
            },
            "must stay inside /d",
        ),
        ({"steps": "nope"}, "steps must be an array"),
    ],
)
def test_a_bad_manifest_is_refused_before_anything_runs(manifest: dict[str, object], complaint: str) -> None:
    with pytest.raises(BackendError) as caught:
        parse_manifest(manifest)
    assert caught.value.status == 400
    assert caught.value.message.startswith("invalid image manifest: ") and complaint in caught.value.message
