"""Output into the run log: a command's lines as they arrive, and an image build's steps.

Bounded three ways, so a loud command cannot flood the Prefect API: each line is cut at `max_line_chars`,
lines are logged at most `lines_per_second` on average (bursts up to `burst_lines`), and at most
`max_lines` lines are logged per command. What is skipped is counted and reported in one line, and the last
`tail_lines` lines are logged at the end whatever the limits skipped: that is where failures are.
"""

from __future__ import annotations

import codecs
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal

from prefect.logging.loggers import LoggingAdapter

from prefect_opencomputer.client import BuildLog, BuildLogHandler

Stream = Literal["stdout", "stderr"]


@dataclass(frozen=True)
class OutputLimits:
    """How much of a command's output reaches the run log and the returned result."""

    max_lines: int = 5000
    max_line_chars: int = 2000
    lines_per_second: float = 50.0
    burst_lines: int = 200
    # Logged at the end if the limits skipped any of them.
    tail_lines: int = 20
    # Per stream, the result keeps the last this many bytes.
    max_result_bytes: int = 1024 * 1024


class _Tail:
    """The last `limit` bytes written, trimmed in batches so appends stay cheap."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buffer = bytearray()
        self.dropped = 0

    def append(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > 2 * self.limit:
            self._trim()

    def _trim(self) -> None:
        excess = len(self.buffer) - self.limit
        if excess > 0:
            del self.buffer[:excess]
            self.dropped += excess

    def text(self) -> str:
        self._trim()
        return self.buffer.decode("utf-8", errors="replace")


class CommandOutput:
    """Collects output chunks of one command; logs complete lines through `logger` (None: log nothing)."""

    def __init__(
        self, logger: logging.Logger | LoggingAdapter | None, limits: OutputLimits | None = None
    ) -> None:
        self.logger = logger
        self.limits = limits or OutputLimits()
        self._tails = {stream: _Tail(self.limits.max_result_bytes) for stream in ("stdout", "stderr")}
        self._decoders = {
            stream: codecs.getincrementaldecoder("utf-8")(errors="replace") for stream in ("stdout", "stderr")
        }
        self._partial: dict[str, str] = {"stdout": "", "stderr": ""}
        self._tokens = float(self.limits.burst_lines)
        self._refilled_at = time.monotonic()
        self.logged_lines = 0
        self.skipped_lines = 0
        self._skipped_unreported = 0
        # The last `tail_lines` lines as (stream, line, was it logged).
        self._recent: deque[tuple[Stream, str, bool]] = deque(maxlen=self.limits.tail_lines)

    def feed(self, stream: Stream, data: bytes) -> None:
        self._tails[stream].append(data)
        if self.logger is None:
            return
        text = self._partial[stream] + self._decoders[stream].decode(data)
        *lines, rest = text.split("\n")
        # A line that never ends still has to show up, in pieces.
        while len(rest) > self.limits.max_line_chars:
            lines.append(rest[: self.limits.max_line_chars])
            rest = rest[self.limits.max_line_chars :]
        self._partial[stream] = rest
        for line in lines:
            self._log(stream, line)

    def finish(self) -> None:
        """Log what is left: unterminated last lines and how many lines were not logged."""
        if self.logger is None:
            return
        streams: tuple[Stream, ...] = ("stdout", "stderr")
        for stream in streams:
            rest = self._partial[stream] + self._decoders[stream].decode(b"", final=True)
            self._partial[stream] = ""
            if rest:
                self._log(stream, rest)
        if self.skipped_lines:
            self.logger.warning(
                "%d output line(s) were not logged (rate or line limit); the result keeps the last %d bytes "
                "of each stream",
                self.skipped_lines,
                self.limits.max_result_bytes,
            )
        unlogged = [(stream, line) for stream, line, logged in self._recent if not logged]
        if unlogged:
            self.logger.info("The last %d line(s) of output:", len(self._recent))
            for stream, line, _ in self._recent:
                self._emit(stream, line)
        self._recent.clear()

    def text(self, stream: Stream) -> str:
        return self._tails[stream].text()

    @property
    def truncated(self) -> bool:
        return any(tail.dropped for tail in self._tails.values())

    def _log(self, stream: Stream, line: str) -> None:
        assert self.logger is not None
        line = line.rstrip("\r")
        if len(line) > self.limits.max_line_chars:
            line = line[: self.limits.max_line_chars] + " …"
        if self.logged_lines >= self.limits.max_lines or not self._take_token():
            self.skipped_lines += 1
            self._skipped_unreported += 1
            self._recent.append((stream, line, False))
            return
        if self._skipped_unreported:
            self.logger.warning("… %d line(s) not logged (output too fast)", self._skipped_unreported)
            self._skipped_unreported = 0
        self.logged_lines += 1
        self._recent.append((stream, line, True))
        self._emit(stream, line)

    def _emit(self, stream: Stream, line: str) -> None:
        assert self.logger is not None
        if stream == "stderr":
            self.logger.info("[stderr] %s", line)
        else:
            self.logger.info("%s", line)

    def _take_token(self) -> bool:
        now = time.monotonic()
        self._tokens = min(
            float(self.limits.burst_lines),
            self._tokens + (now - self._refilled_at) * self.limits.lines_per_second,
        )
        self._refilled_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


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
