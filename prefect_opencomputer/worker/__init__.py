"""The `opencomputer` work pool type: `prefect worker start --pool P` runs each flow run in a sandbox."""

from prefect_opencomputer.worker.configuration import OpenComputerJobConfiguration, OpenComputerVariables
from prefect_opencomputer.worker.reaping import crash_runs_whose_sandbox_is_gone
from prefect_opencomputer.worker.worker import OpenComputerWorker, OpenComputerWorkerResult

__all__ = [
    "OpenComputerJobConfiguration",
    "OpenComputerVariables",
    "OpenComputerWorker",
    "OpenComputerWorkerResult",
    "crash_runs_whose_sandbox_is_gone",
]
