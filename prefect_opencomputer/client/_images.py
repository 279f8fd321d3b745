"""`Image`: a sandbox environment declared once (packages, commands, env, files), built once, cached.

The manifest (`to_dict()`) and the cache key (`cache_key()`) are byte-for-byte those of the official SDK's
`opencomputer.Image`, so an image declared with either client hits the same cache entry.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, JsonValue


class ImageStep(BaseModel):
    """One build step of a manifest: `{"type": "apt_install", "args": {"packages": [...]}}`."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: str
    args: dict[str, JsonValue] = Field(default_factory=dict)


class Image(BaseModel):
    """A declarative sandbox image: a base plus build steps that run in order, as the sandbox's root.

    Every method returns a new `Image`; the model is immutable, so one image can be shared, passed to a
    Prefect task as a parameter and reused. The service builds it once and caches it by `cache_key()`.

    Example:
        ```python
        image = (
            Image.base()
            .apt_install(["cowsay"])
            .pip_install(["six"])
            .env({"APP_ENV": "ci"})
            .workdir("/home/sandbox/app")
            .add_file("/home/sandbox/app/config.toml", "debug = true\\n")
            .run_commands("python3 -c 'import six'")
        )
        sandbox = await oc.sandboxes.create(image=image, on_build_log=print)
        ```
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    base_image: str = Field(default="base", alias="base", description="The template the build starts from.")
    steps: tuple[ImageStep, ...] = Field(default=(), description="Build steps, run in order.")
    builder_memory_mb: int = Field(
        default=0,
        ge=0,
        alias="builderMemoryMB",
        description="Memory (MB) of the builder sandbox; 0 lets the service choose (not in the cache key).",
    )

    @classmethod
    def base(cls, template: str = "base") -> Image:
        """An image with no steps yet, starting from `template`."""
        return cls(base_image=template)

    @classmethod
    def from_dict(cls, manifest: Mapping[str, object]) -> Image:
        """The image a manifest (as `to_dict()` returns it, or as the service echoes it) describes."""
        return cls.model_validate(manifest)

    def apt_install(self, packages: Sequence[str]) -> Image:
        """Install Debian packages with `apt-get` (package lists are refreshed first)."""
        return self._with("apt_install", {"packages": list(packages)})

    def pip_install(self, packages: Sequence[str]) -> Image:
        """Install Python packages with `pip` (requirement specifiers such as `six==1.16.0` work)."""
        return self._with("pip_install", {"packages": list(packages)})

    def run_commands(self, *commands: str) -> Image:
        """Run shell commands, in order; the build fails at the first one that exits non-zero."""
        return self._with("run", {"commands": list(commands)})

    def env(self, variables: Mapping[str, str]) -> Image:
        """Set environment variables for later steps and for every command in sandboxes of this image."""
        return self._with("env", {"vars": dict(variables)})

    def workdir(self, path: str) -> Image:
        """Create `path` and make it the working directory of later steps and of sandboxes' commands."""
        return self._with("workdir", {"path": path})

    def add_file(self, remote_path: str, content: str | bytes) -> Image:
        """Write a file (text as UTF-8) at an absolute path in the image."""
        return self._with(
            "add_file", {"path": remote_path, "content": _base64(content), "encoding": "base64"}
        )

    def add_local_file(self, local_path: str | os.PathLike[str], remote_path: str) -> Image:
        """Copy a file of this machine into the image (its bytes travel in the manifest)."""
        return self.add_file(remote_path, Path(local_path).read_bytes())

    def add_dir(self, remote_path: str, files: Mapping[str, str | bytes]) -> Image:
        """Write files under a directory; keys are paths relative to `remote_path`."""
        entries: list[JsonValue] = [
            {"relativePath": relative, "content": _base64(content)} for relative, content in files.items()
        ]
        return self._with("add_dir", {"path": remote_path, "files": entries})

    def add_local_dir(self, local_path: str | os.PathLike[str], remote_path: str) -> Image:
        """Copy a directory of this machine, recursively, into the image."""
        root = Path(local_path)
        files: dict[str, str | bytes] = {}
        for directory, _, names in os.walk(root):
            for name in names:
                path = Path(directory, name)
                files[path.relative_to(root).as_posix()] = path.read_bytes()
        return self.add_dir(remote_path, files)

    def builder_memory(self, mb: int) -> Image:
        """Memory (MB) for the build only (heavy `apt`/`pip` steps); size sandboxes with `memory_mb`."""
        return self.model_copy(update={"builder_memory_mb": mb})

    def to_dict(self) -> dict[str, JsonValue]:
        """The manifest the service expects in `image` of a create or snapshot request."""
        manifest: dict[str, JsonValue] = {
            "base": self.base_image,
            "steps": [{"type": step.type, "args": step.args} for step in self.steps],
        }
        if self.builder_memory_mb > 0:
            manifest["builderMemoryMB"] = self.builder_memory_mb
        return manifest

    def cache_key(self) -> str:
        """SHA-256 of the canonical manifest (memory excluded): the service's cache key for this image."""
        content = {"base": self.base_image, "steps": [step.model_dump() for step in self.steps]}
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def _with(self, step_type: str, args: dict[str, JsonValue]) -> Self:
        return self.model_copy(update={"steps": (*self.steps, ImageStep(type=step_type, args=args))})


def _base64(content: str | bytes) -> str:
    raw = content.encode() if isinstance(content, str) else content
    return base64.b64encode(raw).decode()
