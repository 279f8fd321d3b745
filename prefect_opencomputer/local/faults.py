"""Injected faults: the unreliable network the tests need, on demand, through `/_test/faults`.

A fault matches requests by method and URL path glob and hits the next ``times`` of them (0 = every
one). It can wait, answer an error status (with ``Retry-After``), or drop the TCP connection without
any response; ``when="after"`` lets the operation take effect first and then loses its response, the
ambiguous failure a client must reconcile rather than blindly replay.
"""

from __future__ import annotations

import asyncio
import fnmatch
import itertools
import logging
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prefect_opencomputer.local.protocols import transport_for
from prefect_opencomputer.local.wire_errors import error_response

logger = logging.getLogger("prefect_opencomputer.local")

TEST_ROUTES_PREFIX = "/_test"
# How long a dropped request waits for the server to notice its own abort before returning.
_DISCONNECT_WAIT_SECONDS = 2.0


class FaultSpec(BaseModel):
    """What a fault does; the JSON body of ``POST /_test/faults``."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    method: str = Field("*", description="HTTP method to match, or '*' for any.")
    path: str = Field(description="fnmatch glob on the URL path, e.g. '/api/sandboxes/*'.")
    status: int | None = Field(None, ge=400, le=599, description="Status of the injected response.")
    retry_after: float | None = Field(None, alias="retryAfter", ge=0, description="Retry-After seconds.")
    delay: float = Field(0.0, ge=0, le=600, description="Seconds to wait before acting.")
    drop: bool = Field(False, description="Close the connection without any response.")
    when: Literal["before", "after"] = Field("before", description="Before or after the operation.")
    times: int = Field(1, ge=0, description="How many matching requests it hits; 0 = every one.")
    message: str = Field(
        "injected fault", max_length=1000, description="The injected response's error message."
    )

    @model_validator(mode="after")
    def _does_something(self) -> FaultSpec:
        if self.drop and self.status is not None:
            raise ValueError("a fault either drops the connection or answers a status, not both")
        if not self.drop and self.status is None and self.delay == 0:
            raise ValueError("a fault needs a status, drop or delay")
        return self


@dataclass
class Fault:
    """One registered fault and how many more requests it will hit."""

    id: int
    spec: FaultSpec
    remaining: int  # 0 = unlimited
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        wanted = self.spec.method.upper()
        return (wanted == "*" or wanted == method.upper()) and fnmatch.fnmatchcase(path, self.spec.path)

    def describe(self) -> dict[str, object]:
        return {
            "id": self.id,
            **self.spec.model_dump(by_alias=True, exclude_none=True),
            "remaining": self.remaining,
            "hits": self.hits,
        }


@dataclass
class FaultRegistry:
    """The faults of one server, consulted by `FaultMiddleware` on every API request."""

    faults: list[Fault] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def add(self, spec: FaultSpec) -> Fault:
        fault = Fault(next(self._ids), spec, remaining=spec.times)
        self.faults.append(fault)
        return fault

    def clear(self) -> None:
        self.faults.clear()

    def take(self, method: str, path: str) -> Fault | None:
        """The first fault matching this request, counted as hit (and retired when used up)."""
        for fault in self.faults:
            if fault.matches(method, path):
                fault.hits += 1
                if fault.remaining:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self.faults.remove(fault)
                return fault
        return None


@dataclass
class FaultMiddleware:
    """Applies registered faults to HTTP requests outside the test routes."""

    app: ASGIApp
    registry: FaultRegistry = field(kw_only=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fault = None
        if scope["type"] == "http" and not scope["path"].startswith(TEST_ROUTES_PREFIX):
            fault = self.registry.take(scope["method"], scope["path"])
        if fault is None:
            await self.app(scope, receive, send)
            return
        spec = fault.spec
        if spec.when == "before":

            async def deliver() -> None:
                await self.app(scope, receive, send)

        else:
            # The operation takes effect first; its response is held back, then given or lost.
            held: list[Message] = []

            async def hold(message: Message) -> None:
                held.append(message)

            await self.app(scope, receive, hold)

            async def deliver() -> None:
                for message in held:
                    await send(message)

        await asyncio.sleep(spec.delay)
        if spec.drop:
            await _drop_connection(scope, receive)
        elif spec.status is not None:
            await _fault_response(spec)(scope, receive, send)
        else:
            await deliver()


def _fault_response(spec: FaultSpec) -> ASGIApp:
    assert spec.status is not None
    headers = {}
    if spec.retry_after is not None:
        seconds = spec.retry_after
        headers["Retry-After"] = str(int(seconds)) if seconds == int(seconds) else str(seconds)
    extra = {"retryable": True} if spec.status in (429, 503) else {}
    return error_response(spec.status, spec.message, headers=headers, **extra)


async def _drop_connection(scope: Scope, receive: Receive) -> None:
    transport = transport_for(scope)
    if transport is None:
        # Served by something other than our own server setup: the closest we can do is a 500.
        raise ConnectionAbortedError("injected fault: cannot drop a connection this server does not track")
    transport.abort()
    # Wait until the server sees the disconnect, so it does not try to answer on a dead socket.
    try:
        async with asyncio.timeout(_DISCONNECT_WAIT_SECONDS):
            while (await receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        logger.warning("dropped connection was not reported closed within %ss", _DISCONNECT_WAIT_SECONDS)
