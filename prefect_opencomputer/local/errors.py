"""The local server's named errors, and how each one reads on the wire: the one place for both.

The backend raises what went wrong (not found, stopped, name taken, ...); `wire_errors` turns any of
them into the service's ``{"error": message, **extra}`` body with the status named here. Every client
mistake is a 4xx, never a 500.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

# How the service's messages carry an error its in-VM agent returned (a gRPC status).
AGENT_ERROR = "rpc error: code = Unknown desc = "


class BackendError(Exception):
    """A request the server will not (or could not) carry out; ``status`` is how the wire says so."""

    status: ClassVar[int] = 500

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None, **extra: object) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra

    def body(self) -> dict[str, object]:
        return {"error": self.message, **self.extra}


# Client mistakes.
class Invalid(BackendError):
    """The request is malformed, or asks for what cannot be (a bad size, a step without args)."""

    status = 400


class Unauthorized(BackendError):
    """No valid API key came with the request."""

    status = 401


class Forbidden(BackendError):
    """The key, a signature or the sandbox's own permissions refuse the request."""

    status = 403


class NotFound(BackendError):
    """No such sandbox, checkpoint, patch, snapshot, file or exec session."""

    status = 404


class Conflict(BackendError):
    """The sandbox's state refuses the change (a memory limit below what its processes hold)."""

    status = 409


class NameTaken(BackendError):
    """A checkpoint or snapshot of that name already exists."""

    status = 409


class Stopped(BackendError):
    """The sandbox has been killed: its data is gone."""

    status = 410


class TooLarge(BackendError):
    """A body or a file is over the server's limit."""

    status = 413


class TooMany(BackendError):
    """Over a count limit, such as the running-sandbox cap."""

    status = 429


# The server's side.
class Failed(BackendError):
    """The operation failed here (the hosted service answers these with a 500 too)."""

    status = 500


class CannotStart(Failed):
    """A command whose program or working directory is missing: the service's 500, before it runs."""


class Unsupported(BackendError):
    """The local server does not do this (yet)."""

    status = 501


class Unreachable(BackendError):
    """The sandbox could not be brought back to answer (a wake that failed)."""

    status = 502


class RetryLater(BackendError):
    """A passing condition: the same request may work in a moment (``Retry-After`` says when)."""

    status = 503


class NoSpace(BackendError):
    """The sandbox's disk is full."""

    status = 507
