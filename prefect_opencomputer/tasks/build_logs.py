"""Image build output in the run log while the service builds: `[build 3 run] compiling the image`."""

from __future__ import annotations

import logging

from prefect.logging.loggers import LoggingAdapter

from prefect_opencomputer.client import BuildLog, BuildLogHandler

# A build that prints without end must not flood the Prefect API; the failure message keeps the tail.
MAX_BUILD_LOG_LINES = 2000


def build_log_handler(logger: logging.Logger | LoggingAdapter) -> BuildLogHandler:
    """A handler for the client's `on_build_log` that logs each line, up to `MAX_BUILD_LOG_LINES`."""
    logged = 0

    def log(line: BuildLog) -> None:
        nonlocal logged
        logged += 1
        if logged <= MAX_BUILD_LOG_LINES:
            logger.info("[build %d %s] %s", line.step, line.type, line.message)
        elif logged == MAX_BUILD_LOG_LINES + 1:
            logger.warning("Further build output is not logged (more than %d lines)", MAX_BUILD_LOG_LINES)

    return log
