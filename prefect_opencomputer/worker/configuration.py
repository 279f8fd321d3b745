"""What an `opencomputer` work pool lets a deployment choose: its job variables and their configuration."""

from __future__ import annotations

from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import prefect
from prefect.workers.base import BaseJobConfiguration, BaseVariables
from pydantic import Field, JsonValue, model_validator

from prefect_opencomputer._settings import API_KEY_ENV, API_URL_ENV, CREDENTIALS_BLOCK_ENV
from prefect_opencomputer.blocks.credentials import OpenComputerCredentials
from prefect_opencomputer.client import Image
from prefect_opencomputer.local.config import HOST_ALIAS
from prefect_opencomputer.tasks.ownership import DEFAULT_IDLE_TIMEOUT

# Settings that name places on the worker's machine: inside the sandbox Prefect uses its own defaults.
_HOST_ONLY_SETTINGS = ("PREFECT_HOME", "PREFECT_PROFILES_PATH", "PREFECT_LOCAL_STORAGE_PATH")
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "0.0.0.0")
STARTS = ("template", "snapshot", "image", "checkpoint_id")


def _require_one_start(values: object) -> None:
    """Shared by the variables (the pool's form) and the configuration (one flow run)."""
    chosen = [name for name in STARTS if getattr(values, name) is not None]
    if len(chosen) > 1:
        raise ValueError(
            f"choose at most one of template, snapshot, image and checkpoint_id (got {', '.join(chosen)})"
        )


def _image_field() -> Any:
    return Field(
        default=None,
        description=(
            "A declarative image manifest ({'base': template, 'steps': [...]}, as Image.to_dict() gives), "
            "built once and cached by the service; the worker adds Prefect to it. Unset, with no template, "
            "snapshot or checkpoint: an image of the base template with Prefect and pip_packages."
        ),
    )


class OpenComputerVariables(BaseVariables):
    """The job variables of an `opencomputer` work pool, as its form in the UI shows them."""

    credentials: OpenComputerCredentials | None = Field(
        default=None,
        description=(
            f"The OpenComputer credentials block; unset, the worker uses the saved block named by "
            f"{CREDENTIALS_BLOCK_ENV}, else {API_KEY_ENV} and {API_URL_ENV} from its environment."
        ),
    )
    template: str | None = Field(
        default=None,
        description="Start from this template; it must already have Prefect installed.",
    )
    snapshot: str | None = Field(
        default=None, description="Start from this named snapshot; it must already have Prefect installed."
    )
    image: dict[str, JsonValue] | None = _image_field()
    checkpoint_id: str | None = Field(
        default=None,
        description="Fork a prepared checkpoint (a warm start); it must already have Prefect installed.",
    )
    pip_packages: list[str] = Field(
        default_factory=list,
        description="Python packages the default image (or the declared image) installs besides Prefect.",
    )
    memory_mb: int | None = Field(default=None, gt=0, description="Memory of the sandbox in MB.")
    cpu_count: int | None = Field(
        default=None, gt=0, description="CPUs of the sandbox; must match a tier of memory_mb."
    )
    disk_mb: int | None = Field(default=None, gt=0, description="Disk of the sandbox in MB (at least 20480).")
    idle_timeout: int = Field(
        default=DEFAULT_IDLE_TIMEOUT,
        gt=0,
        description="Seconds without activity before the sandbox hibernates (never 0: a lost one must stop).",
    )
    tags: dict[str, str] = Field(
        default_factory=dict, description="Tags for the sandbox, besides those naming the flow run."
    )
    working_dir: str | None = Field(
        default=None, description="Working directory of the flow-run command (default: the sandbox's home)."
    )
    kill_on_exit: bool = Field(
        default=True, description="Kill the sandbox once the flow-run process has exited."
    )
    concurrency_limit: str | None = Field(
        default=None,
        description=(
            "A Prefect global concurrency limit (say opencomputer-sandboxes, made with `prefect gcl create`) "
            "of which the run's sandbox holds one slot from create to kill, shared with the tasks' "
            "concurrency_limit; a limit that does not exist is not waited for."
        ),
    )
    output_lines: int = Field(
        default=500,
        ge=0,
        description=(
            "How many lines of the flow-run process's output go to the flow run's logs; on a non-zero exit "
            "its last lines go there at ERROR whatever this says."
        ),
    )
    prefect_api_url: str | None = Field(
        default=None,
        description=(
            "The Prefect API URL the flow-run process uses; unset: the worker's own, with a loopback "
            f"address replaced by {HOST_ALIAS} when the sandbox runs on a local server."
        ),
    )
    max_code_mb: int = Field(
        default=64,
        gt=0,
        description="The largest local flow directory (MB) the worker copies into the sandbox.",
    )
    lost_worker_grace: int = Field(
        default=60,
        gt=0,
        description=(
            "Seconds the flow-run process outlives a worker that lost it (killed, or cut off for good); "
            "then it is killed, and the next reaper run ends the flow run Crashed and kills the sandbox."
        ),
    )

    @model_validator(mode="after")
    def _at_most_one_start(self) -> Self:
        _require_one_start(self)
        return self

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        schema = super().model_json_schema(*args, **kwargs)
        # Every field of the block is optional, so a block reference ({"$ref": ...}) would also pass as
        # an inline block, and Prefect refuses a value that matches both: an inline block has no "$ref".
        block = schema.get("definitions", {}).get(OpenComputerCredentials.__name__)
        if block is not None:
            block["additionalProperties"] = False
        return schema


class OpenComputerJobConfiguration(BaseJobConfiguration):
    """One flow run's sandbox: where it starts, its size, and how its process runs."""

    credentials: OpenComputerCredentials | None = Field(default=None)
    template: str | None = Field(default=None)
    snapshot: str | None = Field(default=None)
    image: dict[str, JsonValue] | None = Field(default=None)
    checkpoint_id: str | None = Field(default=None)
    pip_packages: list[str] = Field(default_factory=list)
    memory_mb: int | None = Field(default=None, gt=0)
    cpu_count: int | None = Field(default=None, gt=0)
    disk_mb: int | None = Field(default=None, gt=0)
    idle_timeout: int = Field(default=DEFAULT_IDLE_TIMEOUT, gt=0)
    tags: dict[str, str] = Field(default_factory=dict)
    working_dir: str | None = Field(default=None)
    kill_on_exit: bool = Field(default=True)
    concurrency_limit: str | None = Field(default=None)
    output_lines: int = Field(default=500, ge=0)
    prefect_api_url: str | None = Field(default=None)
    max_code_mb: int = Field(default=64, gt=0)
    lost_worker_grace: int = Field(default=60, gt=0)

    @model_validator(mode="after")
    def _at_most_one_start(self) -> Self:
        _require_one_start(self)
        return self

    def start_image(self) -> Image | None:
        """The image to start from, Prefect added; None when a template, snapshot or checkpoint is named."""
        if self.template is not None or self.snapshot is not None or self.checkpoint_id is not None:
            return None
        image = Image.from_dict(self.image) if self.image is not None else Image.base()
        return image.pip_install([f"prefect=={prefect.__version__}", *self.pip_packages])

    def command_env(self, *, local_server: bool) -> dict[str, str]:
        """The environment of the flow-run command, with the Prefect API URL the sandbox can reach."""
        env = {
            key: value
            for key, value in self.env.items()
            if value is not None and key not in _HOST_ONLY_SETTINGS
        }
        if self.prefect_api_url:
            env["PREFECT_API_URL"] = self.prefect_api_url
        elif local_server and env.get("PREFECT_API_URL"):
            env["PREFECT_API_URL"] = reach_host_loopback(env["PREFECT_API_URL"])
        return env


def is_loopback_url(url: str) -> bool:
    return (urlsplit(url).hostname or "") in _LOOPBACK_HOSTS


def reach_host_loopback(url: str) -> str:
    """`url` with a loopback host replaced by the name a local server's sandbox reaches the host by."""
    parts = urlsplit(url)
    if (parts.hostname or "") not in _LOOPBACK_HOSTS:
        return url
    netloc = HOST_ALIAS if parts.port is None else f"{HOST_ALIAS}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))
