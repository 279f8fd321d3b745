"""A logger that works in a flow or task run (logs reach the UI) and in hooks and plain code alike."""

from __future__ import annotations

import logging

from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.logging.loggers import LoggingAdapter, get_logger


def run_logger() -> logging.Logger | LoggingAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("opencomputer")
