"""The one HTTP connection pool of a client: base URL, auth header, retries and HTTP-to-error translation.

Retry rule: replay a request only when a replay cannot duplicate work. Every request may be retried when it
never reached the service (connect failure) or when the service refused it and said so (`retryable` 429/503).
Any other failure is retried only for requests the caller marks `replayable` (reads, deletes, puts and the
operations the service makes idempotent); the rest surface as `TransportError(ambiguous=True)` so the resource
can reconcile.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import json
import os
import random
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Final

import httpx

from prefect_opencomputer._settings import API_KEY_ENV, API_URL_ENV, DEFAULT_API_URL
from prefect_opencomputer.client._errors import (
    APIError,
    BadRequestError,
    ConflictError,
    ForbiddenError,
    GoneError,
    NotFoundError,
    PaymentRequiredError,
    RateLimitedError,
    ServerError,
    TransportError,
    UnauthorizedError,
)

_REPLAYABLE_METHODS: Final = frozenset({"GET", "HEAD", "PUT", "DELETE"})
# Raised before a single byte of the request left this machine.
_NOT_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)
_STATUS_ERRORS: Final[Mapping[int, type[APIError]]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    402: PaymentRequiredError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    410: GoneError,
    429: RateLimitedError,
}
_RETRYABLE_CODES: Final = frozenset({"worker_unavailable", "sandbox_migrating"})

JsonBody = Mapping[str, object] | list[object]
Content = bytes | AsyncIterable[bytes]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently the client retries; pass a fast one in tests."""

    max_attempts: int = 4
    backoff_initial: float = 0.5
    backoff_max: float = 8.0
    # Upper bound on an honoured Retry-After, so a bad header cannot stall a flow.
    retry_after_max: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt number `attempt + 1` (attempts count from 1)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_max)
        ceiling = min(self.backoff_max, self.backoff_initial * 2.0 ** (attempt - 1))
        # "Equal jitter": never less than half the backoff, so retries still spread out under load.
        return ceiling / 2 + random.uniform(0, ceiling / 2)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context per process: loading the CA bundle costs ~25 ms, every client would pay it."""
    return httpx.create_ssl_context()


def resolve_api_base(api_url: str | None) -> str:
    """The URL every route hangs off: `/api` appended unless already there (as the official SDK does)."""
    url = (api_url or os.environ.get(API_URL_ENV) or DEFAULT_API_URL).rstrip("/")
    return url if url.endswith("/api") else f"{url}/api"


def resolve_api_key(api_key: str | None) -> str:
    return api_key or os.environ.get(API_KEY_ENV, "")


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(moment.timestamp() - time.time(), 0.0)


def error_from_response(
    status_code: int,
    body: bytes,
    headers: Mapping[str, str],
    *,
    method: str | None = None,
    path: str | None = None,
    secret: str = "",
) -> APIError:
    """Translate an error answer: `{"error"}` from handlers, `{"message"}` from the web framework."""
    payload: object = None
    try:
        payload = json.loads(body) if body else None
    except ValueError:
        payload = None
    message = ""
    code: str | None = None
    flagged = False
    if isinstance(payload, dict):
        message = str(payload.get("error") or payload.get("message") or "")
        code = str(payload["code"]) if payload.get("code") else None
        flagged = payload.get("retryable") is True or payload.get("waking") is True
    if not message:
        message = body[:500].decode("utf-8", "replace").strip() or f"HTTP {status_code}"
    if secret:
        message = message.replace(secret, "***")
    retry_after = _retry_after(headers)
    retryable = status_code in (429, 503) and (flagged or code in _RETRYABLE_CODES or retry_after is not None)
    error_class = _STATUS_ERRORS.get(status_code, ServerError if status_code >= 500 else APIError)
    return error_class(
        status_code,
        message,
        code=code,
        retryable=retryable,
        retry_after=retry_after,
        method=method,
        path=path,
    )


class Transport:
    """Owns the keep-alive pool; every request of a client goes through `request`."""

    def __init__(self, *, api_key: str, api_base: str, timeout: float, retry: RetryPolicy) -> None:
        self.api_base = api_base
        self.timeout = timeout
        self.retry = retry
        self._api_key = api_key
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=api_base,
            headers=headers,
            verify=_ssl_context(),
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )

    @property
    def websocket_base(self) -> str:
        if self.api_base.startswith("https://"):
            return "wss://" + self.api_base.removeprefix("https://")
        return "ws://" + self.api_base.removeprefix("http://")

    def auth_headers(self) -> dict[str, str]:
        """Headers for connections this pool does not make (the exec WebSocket)."""
        return {"X-API-Key": self._api_key} if self._api_key else {}

    def scrub(self, text: str) -> str:
        """Remove the API key from text that is about to become an error message."""
        return text.replace(self._api_key, "***") if self._api_key else text

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: JsonBody | None = None,
        params: Mapping[str, str | int] | None = None,
        content: Content | None = None,
        timeout: float | None = None,
        replayable: bool | None = None,
    ) -> httpx.Response:
        """Send one request, retrying as the module docstring says; raise on any error status.

        `replayable` defaults to True for GET, HEAD, PUT and DELETE with a bytes (or no) body.
        """
        # A streamed body can be read only once: once it may have been read, nothing can resend it.
        streamed = content is not None and not isinstance(content, bytes)
        if replayable is None:
            replayable = method in _REPLAYABLE_METHODS and not streamed
        request_timeout = httpx.Timeout(timeout) if timeout is not None else httpx.USE_CLIENT_DEFAULT
        return await self._send(
            method,
            path,
            lambda: self._http.build_request(
                method, path, json=json, params=params, content=content, timeout=request_timeout
            ),
            stream=False,
            resend_after_sent=replayable,
            retry_refusals=not streamed,
        )

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        json: JsonBody | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str | int] | None = None,
        read_timeout: float | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """Send one request whose answer is read as it arrives (a build stream); error statuses raise.

        Retried only when it never reached the service, or when the service refused it as retryable before
        doing anything. `read_timeout` bounds the wait for each chunk, not the whole stream.
        """
        timeout = (
            httpx.Timeout(self.timeout, read=read_timeout)
            if read_timeout is not None
            else httpx.USE_CLIENT_DEFAULT
        )
        response = await self._send(
            method,
            path,
            lambda: self._http.build_request(
                method, path, json=json, params=params, headers=headers, timeout=timeout
            ),
            stream=True,
            resend_after_sent=False,
            retry_refusals=True,
        )
        try:
            yield response
        finally:
            await response.aclose()

    async def _send(
        self,
        method: str,
        path: str,
        build: Callable[[], httpx.Request],
        *,
        stream: bool,
        resend_after_sent: bool,
        retry_refusals: bool,
    ) -> httpx.Response:
        """The retry loop of every request: a fresh request from `build` per attempt, until a success.

        A request that never left is sent again; one that may have reached the service only if
        `resend_after_sent`. A retryable refusal (429, 503, ...) is retried after its delay if
        `retry_refusals`. With `stream` the successful response is returned unread.
        """
        attempt = 0
        while True:
            attempt += 1
            last_attempt = attempt >= self.retry.max_attempts
            try:
                response = await self._http.send(build(), stream=stream)
            except httpx.TransportError as exc:
                sent = not isinstance(exc, _NOT_SENT)
                if last_attempt or (sent and not resend_after_sent):
                    raise self._transport_error(method, path, exc, sent=sent) from exc
                await asyncio.sleep(self.retry.delay(attempt))
                continue
            if response.is_success:
                return response
            body = await self._unread_body(response, method, path) if stream else response.content
            error = error_from_response(
                response.status_code, body, response.headers, method=method, path=path, secret=self._api_key
            )
            if error.retryable and retry_refusals and not last_attempt:
                await asyncio.sleep(self.retry.delay(attempt, error.retry_after))
                continue
            raise error

    async def _unread_body(self, response: httpx.Response, method: str, path: str) -> bytes:
        """The body of a streamed error response, read whole; the response is closed."""
        try:
            return await response.aread()
        except httpx.TransportError as exc:
            raise self._transport_error(method, path, exc, sent=True) from exc
        finally:
            await response.aclose()

    def _transport_error(
        self, method: str, path: str, exc: httpx.TransportError, *, sent: bool
    ) -> TransportError:
        detail = self.scrub(str(exc)) or type(exc).__name__
        effect = "the request may have taken effect" if sent else "the request never reached the service"
        return TransportError(
            f"{method} {self.api_base}{path}: {type(exc).__name__}: {detail} ({effect})",
            ambiguous=sent,
        )

    async def aclose(self) -> None:
        await self._http.aclose()


class RouteGroup:
    """A namespace of the client (`client.sandboxes`, `client.exec`, ...); its routes share one transport."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
