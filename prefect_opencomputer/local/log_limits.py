"""Rate limits on the server's logs, so nothing a sandbox does can flood them.

A sandbox can make the server log on demand (refused egress, failed accepts, broken requests). Each
logger and message template gets a token bucket: a burst passes, then about one line per
``refill_seconds``; the next line that passes says how many similar ones were suppressed. A
message's traceback is logged once: later records of the same template go without it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

# Loggers outside our package that a sandbox can drive: asyncio logs failed accepts (EMFILE and
# the like) of every listening socket, uvicorn its connection errors.
_LIMITED_LOGGERS = ("prefect_opencomputer.local", "asyncio", "uvicorn.error")


@dataclass
class _Bucket:
    tokens: float
    updated: float
    suppressed: int = 0
    traced: bool = False


class LogRateLimit(logging.Filter):
    """A token bucket per (logger, message template); see the module docstring."""

    def __init__(self, burst: int = 10, refill_seconds: float = 6.0, max_keys: int = 4096) -> None:
        super().__init__()
        self.burst = burst
        self.refill_seconds = refill_seconds
        self.max_keys = max_keys
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= self.max_keys:
                    self._buckets.clear()  # many distinct templates: start over rather than grow
                bucket = self._buckets[key] = _Bucket(tokens=float(self.burst), updated=now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) / self.refill_seconds)
            bucket.updated = now
            if bucket.tokens < 1:
                bucket.suppressed += 1
                return False
            bucket.tokens -= 1
            suppressed, bucket.suppressed = bucket.suppressed, 0
            if record.exc_info or record.exc_text:
                if bucket.traced:
                    record.exc_info = None
                    record.exc_text = None
                bucket.traced = True
        if suppressed:
            # No "%" in the suffix: the record's own arguments still format the message.
            record.msg = f"{record.msg} ({suppressed} similar messages suppressed)"
        return True


def limit_server_logs(limit: LogRateLimit | None = None) -> LogRateLimit:
    """Install one `LogRateLimit` on the server's loggers and every existing one below ours.

    A logger's filters see only records logged on that very logger, not its children's, so each
    module logger of the package gets the filter (call this once the app's modules are imported).
    Idempotent: a logger that has a `LogRateLimit` keeps it.
    """
    limit = limit or LogRateLimit()
    prefix = _LIMITED_LOGGERS[0] + "."
    names = [*_LIMITED_LOGGERS, *(n for n in logging.root.manager.loggerDict if n.startswith(prefix))]
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, LogRateLimit) for existing in logger.filters):
            logger.addFilter(limit)
    return limit
