"""Example flows; each is also the entrypoint of a deployment in `deployments/prefect.yaml`."""

from prefect_opencomputer.flows.fan_out import (
    FanOutParameters,
    FanOutReport,
    ForkCommandsFailedError,
    ForkOutcome,
    checkpoint_fan_out,
)
from prefect_opencomputer.flows.golden import (
    GoldenCheckpointParameters,
    GoldenCheckpointReport,
    rebuild_golden_checkpoint,
)
from prefect_opencomputer.flows.lifecycle import LifecycleParameters, LifecycleReport, sandbox_lifecycle
from prefect_opencomputer.flows.reaper import ReaperParameters, ReaperReport, reap_orphaned_sandboxes

__all__ = [
    "FanOutParameters",
    "FanOutReport",
    "ForkCommandsFailedError",
    "ForkOutcome",
    "GoldenCheckpointParameters",
    "GoldenCheckpointReport",
    "LifecycleParameters",
    "LifecycleReport",
    "ReaperParameters",
    "ReaperReport",
    "checkpoint_fan_out",
    "reap_orphaned_sandboxes",
    "rebuild_golden_checkpoint",
    "sandbox_lifecycle",
]
