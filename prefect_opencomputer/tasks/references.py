"""How tasks take a sandbox or a checkpoint: as its id, or as the model a previous task returned."""

from __future__ import annotations

from typing import TypeAlias

from prefect_opencomputer.client import Checkpoint, Sandbox

SandboxRef: TypeAlias = Sandbox | str
CheckpointRef: TypeAlias = Checkpoint | str


def sandbox_id_of(sandbox: SandboxRef) -> str:
    return sandbox.sandbox_id if isinstance(sandbox, Sandbox) else sandbox


def checkpoint_id_of(checkpoint: CheckpointRef) -> str:
    return checkpoint.id if isinstance(checkpoint, Checkpoint) else checkpoint


def checkpoint_owner_of(checkpoint: CheckpointRef, sandbox: SandboxRef | None) -> str:
    """The id of the sandbox a checkpoint belongs to: the one given, else the one the model carries.

    A checkpoint's id alone does not say its sandbox, and the service addresses checkpoints under it.
    """
    if sandbox is not None:
        return sandbox_id_of(sandbox)
    if isinstance(checkpoint, Checkpoint):
        return checkpoint.sandbox_id
    raise TypeError(
        f"checkpoint {checkpoint!r} is given as an id, which does not say its sandbox: pass the Checkpoint "
        "model a task returned, or the sandbox as sandbox="
    )
