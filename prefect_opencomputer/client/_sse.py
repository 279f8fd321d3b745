"""Server-sent events: the parser, and the build stream the service answers image and snapshot creates with.

A build stream carries `build_log` events (`{"step", "type", "message"}`), `: keepalive` comments every 15 s
while a step is quiet, and ends with one `result` event (what was created) or one `error` event (why not;
the HTTP status stays 200).
"""

from __future__ import annotations

import inspect
import json
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import httpx
from pydantic import ValidationError

from prefect_opencomputer.client._errors import BuildFailedError, TransportError
from prefect_opencomputer.client._models import BuildLog

BuildLogHandler = Callable[[BuildLog], Awaitable[None] | None]

EVENT_STREAM: Final = "text/event-stream"
# The service sends a keepalive comment every 15 s during a build; silence this long means it is gone.
BUILD_STREAM_READ_TIMEOUT: Final = 120.0

# How much of the log a `BuildFailedError` keeps, for the caller to show.
_KEPT_LOG_LINES: Final = 200


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event: its type (`message` when the stream names none) and its data lines, joined."""

    event: str
    data: str


class SSEDecoder:
    """Incremental parser of a `text/event-stream` body, per the WHATWG rules.

    Lines end in CRLF, LF or CR; a blank line dispatches the event; lines starting with `:` are comments;
    one space after a field's colon is dropped; `data` lines accumulate, joined with newlines.
    """

    def __init__(self) -> None:
        self._buffer = ""
        self._event = ""
        self._data: list[str] = []

    def feed(self, text: str) -> list[ServerSentEvent]:
        """Consume a chunk of the body; returns the events it completed."""
        self._buffer += text
        events: list[ServerSentEvent] = []
        while True:
            cut = _line_end(self._buffer)
            if cut is None:
                return events
            end, after = cut
            line, self._buffer = self._buffer[:end], self._buffer[after:]
            event = self._line(line)
            if event is not None:
                events.append(event)

    def close(self) -> list[ServerSentEvent]:
        """End of the body: a final CR still ends its line; an unterminated final event is dropped."""
        # A CR held back in case a LF followed is a complete line end now.
        events = self.feed("\n") if self._buffer.endswith("\r") else []
        self._buffer, self._event, self._data = "", "", []
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = ServerSentEvent(self._event or "message", "\n".join(self._data))
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


def _line_end(buffer: str) -> tuple[int, int] | None:
    """Where the first line of `buffer` ends and the next begins; None until a full line is there."""
    lf, cr = buffer.find("\n"), buffer.find("\r")
    if cr == -1 or (lf != -1 and lf < cr):
        return None if lf == -1 else (lf, lf + 1)
    if cr + 1 == len(buffer):
        return None  # a CR that ends the chunk may be the first half of a CRLF
    return cr, cr + (2 if buffer[cr + 1] == "\n" else 1)


async def iter_events(response: httpx.Response) -> AsyncIterator[ServerSentEvent]:
    """The events of a streamed response, as they arrive."""
    decoder = SSEDecoder()
    async for chunk in response.aiter_text():
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.close():
        yield event


async def read_build_stream(
    response: httpx.Response, on_build_log: BuildLogHandler | None, *, what: str
) -> dict[str, object]:
    """Follow a build stream to its end: hand each log line to `on_build_log`, return the `result` object.

    Raises `BuildFailedError` on an `error` event, and `TransportError` (ambiguous: the service may have
    finished the work) when the stream breaks or ends without a result.
    """
    logs: deque[BuildLog] = deque(maxlen=_KEPT_LOG_LINES)
    try:
        if response.headers.get("content-type", "").startswith("application/json"):
            # A server that does not stream builds answers with the created object directly.
            payload = json.loads(await response.aread())
            if isinstance(payload, dict):
                return payload
            raise TransportError(f"{what}: the answer is not an object", ambiguous=True)
        async for event in iter_events(response):
            if event.event == "build_log":
                entry = _build_log(event.data)
                logs.append(entry)
                if on_build_log is not None:
                    outcome = on_build_log(entry)
                    if inspect.isawaitable(outcome):
                        await outcome
            elif event.event == "error":
                raise BuildFailedError(_error_message(event.data), logs=tuple(logs))
            elif event.event == "result":
                result = json.loads(event.data)
                if not isinstance(result, dict):
                    raise TransportError(f"{what}: the stream's result is not an object", ambiguous=True)
                return result
    except httpx.TransportError as exc:
        raise TransportError(
            f"{what}: the build stream broke: {type(exc).__name__} (the request may have taken effect)",
            ambiguous=True,
        ) from exc
    raise TransportError(f"{what}: the build stream ended without a result", ambiguous=True)


def _build_log(data: str) -> BuildLog:
    try:
        payload = json.loads(data)
    except ValueError:
        return BuildLog(message=data)
    try:
        return BuildLog.model_validate(payload)
    except ValidationError:
        return BuildLog(message=data)


def _error_message(data: str) -> str:
    try:
        payload = json.loads(data)
    except ValueError:
        return data
    if isinstance(payload, dict) and payload.get("error"):
        return str(payload["error"])
    return data
