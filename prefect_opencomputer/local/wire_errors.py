"""How every failure looks on the wire: the control plane's JSON error shapes, never a 422 or an HTML page."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prefect_opencomputer.local.errors import BackendError

logger = logging.getLogger("prefect_opencomputer.local")

# The service's router answers these itself, with Echo's `{"message": ...}` shape.
_ROUTER_MESSAGES = {404: "Not Found", 405: "Method Not Allowed"}


def error_response(
    status: int, message: str, *, headers: Mapping[str, str] | None = None, **extra: object
) -> JSONResponse:
    """A ``{"error": message, **extra}`` response, the envelope of almost every service error."""
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception a request can raise to the service's error shapes."""
    app.add_exception_handler(BackendError, _backend_error)
    app.add_exception_handler(HTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation_error)
    # Not an `Exception` handler: Starlette re-raises after those answer, and uvicorn then drops the
    # keep-alive connection. Innermost user middleware, so it sees a route's failure first.
    app.add_middleware(UnexpectedErrorMiddleware)


async def _backend_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BackendError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code in _ROUTER_MESSAGES:
        return JSONResponse(
            {"message": _ROUTER_MESSAGES[exc.status_code]}, status_code=exc.status_code, headers=headers
        )
    return error_response(exc.status_code, str(exc.detail), headers=headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(400, describe_validation_errors(exc.errors()))


class UnexpectedErrorMiddleware:
    """A bug, not a client mistake: logged with its traceback, answered 500, and not raised further.

    Once a response has started nothing can be answered; the request just ends (uvicorn closes the
    connection of an incomplete response, as it must).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except Exception:
            logger.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await error_response(500, "internal error")(scope, receive, send)


def describe_validation_errors(errors: Sequence[Any]) -> str:
    """One readable line for pydantic's error list, e.g. ``invalid request body: timeout: ...``."""
    in_body = any(_location(error)[:1] == ("body",) for error in errors)
    parts = []
    for error in errors[:3]:
        location = [str(part) for part in _location(error) if part not in ("body", "query", "path", "header")]
        message = str(error.get("msg", "invalid value"))
        if error.get("type") == "json_invalid":
            detail = error.get("ctx", {}).get("error")
            message = f"malformed JSON: {detail}" if detail else "malformed JSON"
            location = []
        elif error.get("type") == "missing" and not location:
            message = "a JSON body is required"
        parts.append(f"{'.'.join(location)}: {message}" if location else message)
    prefix = "invalid request body" if in_body else "invalid request"
    return f"{prefix}: {'; '.join(parts)}"


def _location(error: Any) -> tuple[object, ...]:
    return tuple(error.get("loc", ()))
