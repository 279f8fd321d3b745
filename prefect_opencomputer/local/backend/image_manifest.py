"""Image manifests as clients send them (`{"base", "steps": [{"type", "args"}], "builderMemoryMB"?}`).

Every mistake is a 400 before anything runs, naming the step. The content hash is the official SDK's
`Image.cache_key()`: SHA-256 of the canonical JSON of base and steps (memory is a resource knob, not content).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import posixpath
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from prefect_opencomputer.local.backend import sizing
from prefect_opencomputer.local.errors import BackendError, Invalid

StepType = Literal["apt_install", "pip_install", "run", "env", "workdir", "add_file", "add_dir"]
STEP_TYPES: tuple[StepType, ...] = typing.get_args(StepType)

# Debian package names, optionally with =version, :arch or /release; nothing apt could read as an option.
_APT_PACKAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+.:=~/_-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_BUILDER_MEMORY_MB = 65536


@dataclass(frozen=True)
class BuildStep:
    """One checked step; only the fields of its type are set."""

    number: int  # 1-based, as build logs and errors count them
    type: StepType
    packages: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()
    variables: Mapping[str, str] = field(default_factory=dict)
    path: str = ""
    files: tuple[tuple[str, bytes], ...] = ()  # (absolute path, content) for add_file / add_dir

    def describe(self) -> str:
        """What the step does, in one line of the build log."""
        if self.type == "apt_install":
            return "apt-get install " + " ".join(self.packages)
        if self.type == "pip_install":
            return "pip install " + " ".join(self.packages)
        if self.type == "run":
            text = " && ".join(self.commands)
            return text if len(text) <= 120 else text[:117] + "..."
        if self.type == "env":
            return "set environment variables " + ", ".join(sorted(self.variables))
        if self.type == "workdir":
            return f"set workdir {self.path}"
        if self.type == "add_file":
            return f"add file {self.path}"
        return f"add directory {self.path} ({len(self.files)} files)"


@dataclass(frozen=True)
class ImageManifest:
    """A checked manifest; `raw` is what the client sent, echoed back in image and snapshot records."""

    base: str
    steps: tuple[BuildStep, ...]
    builder_memory_mb: int
    content_hash: str
    raw: Mapping[str, object]


def parse_manifest(raw: object) -> ImageManifest:
    """Check a manifest; raises `BackendError(400)` naming the first thing wrong with it."""
    if not isinstance(raw, dict):
        raise _invalid("the image must be a JSON object")
    base = raw.get("base", "") or sizing.DEFAULT_TEMPLATE
    if not isinstance(base, str) or base not in sizing.TEMPLATES:
        raise _invalid(f"unknown base {base!r} (one of: {', '.join(sorted(sizing.TEMPLATES))})")
    memory = raw.get("builderMemoryMB", 0) or 0
    if not isinstance(memory, int) or isinstance(memory, bool) or not 0 <= memory <= _MAX_BUILDER_MEMORY_MB:
        raise _invalid(f"builderMemoryMB must be a whole number of MB up to {_MAX_BUILDER_MEMORY_MB}")
    raw_steps = raw.get("steps") or []
    if not isinstance(raw_steps, list):
        raise _invalid("steps must be an array")
    steps = tuple(_step(number, entry) for number, entry in enumerate(raw_steps, start=1))
    return ImageManifest(
        base=base,
        steps=steps,
        builder_memory_mb=memory,
        content_hash=content_hash(raw.get("base", ""), raw_steps),
        raw=raw,
    )


def content_hash(base: object, steps: list[object]) -> str:
    """The SDK's `Image.cache_key()`: steps exactly as sent, keys sorted, no whitespace."""
    canonical = json.dumps({"base": base, "steps": steps}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _step(number: int, entry: object) -> BuildStep:
    if not isinstance(entry, dict):
        raise _invalid(f"step {number} must be an object")
    step_type = entry.get("type")
    args = entry.get("args") or {}
    if step_type not in STEP_TYPES:
        raise _invalid(f"step {number}: unknown step type {step_type!r}")
    if not isinstance(args, dict):
        raise _invalid(f"step {number} ({step_type}): args must be an object")
    where = f"step {number} ({step_type})"
    if step_type == "apt_install":
        packages = _strings(args.get("packages"), where, "packages")
        bad = [name for name in packages if not _APT_PACKAGE.match(name)]
        if bad:
            raise _invalid(f"{where}: not a Debian package name: {bad[0]!r}")
        return BuildStep(number, "apt_install", packages=packages)
    if step_type == "pip_install":
        packages = _strings(args.get("packages"), where, "packages")
        bad = [name for name in packages if not name.strip() or name.startswith("-")]
        if bad:
            raise _invalid(f"{where}: not a requirement: {bad[0]!r}")
        return BuildStep(number, "pip_install", packages=packages)
    if step_type == "run":
        return BuildStep(number, "run", commands=_strings(args.get("commands"), where, "commands"))
    if step_type == "env":
        variables = args.get("vars")
        if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
            raise _invalid(f"{where}: vars must be an object of strings")
        bad = [name for name in variables if not _ENV_NAME.match(name)]
        if bad:
            raise _invalid(f"{where}: not a variable name: {bad[0]!r}")
        return BuildStep(number, "env", variables=dict(variables))
    if step_type == "workdir":
        return BuildStep(number, "workdir", path=_absolute(args.get("path"), where))
    if step_type == "add_file":
        path = _absolute(args.get("path"), where)
        encoding = args.get("encoding", "base64")
        if encoding not in ("", "base64"):
            raise _invalid(f"{where}: unsupported encoding {encoding!r}")
        return BuildStep(number, "add_file", path=path, files=((path, _content(args, where)),))
    path = _absolute(args.get("path"), where)
    entries = args.get("files")
    if not isinstance(entries, list):
        raise _invalid(f"{where}: files must be an array")
    files = []
    for index, file_entry in enumerate(entries):
        if not isinstance(file_entry, dict):
            raise _invalid(f"{where}: file {index} must be an object")
        relative = file_entry.get("relativePath")
        files.append((_below(path, relative, f"{where}: file {index}"), _content(file_entry, where)))
    return BuildStep(number, "add_dir", path=path, files=tuple(files))


def _strings(value: object, where: str, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        raise _invalid(f"{where}: {name} must be a non-empty array of strings")
    return tuple(value)


def _absolute(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "\x00" in value:
        raise _invalid(f"{where}: path must be an absolute path")
    return posixpath.normpath(value)


def _below(directory: str, relative: object, where: str) -> str:
    if not isinstance(relative, str) or not relative or relative.startswith("/") or "\x00" in relative:
        raise _invalid(f"{where}: relativePath must be a relative path")
    clean = posixpath.normpath(relative)
    if clean == "." or clean == ".." or clean.startswith("../"):
        raise _invalid(f"{where}: relativePath must stay inside {directory}")
    return posixpath.join(directory, clean)


def _content(args: Mapping[str, object], where: str) -> bytes:
    content = args.get("content")
    if not isinstance(content, str):
        raise _invalid(f"{where}: content must be a base64 string")
    try:
        return base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(f"{where}: content must be valid base64") from None


def _invalid(message: str) -> BackendError:
    return Invalid(f"invalid image manifest: {message}")
