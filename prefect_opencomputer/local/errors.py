"""The wire error of the local server: every client mistake becomes a 4xx JSON body, never a 500."""

from __future__ import annotations

from collections.abc import Mapping


class WireError(Exception):
    """Raised anywhere in the local server to answer ``{"error": message, **extra}`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: object,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra

    def body(self) -> dict[str, object]:
        return {"error": self.message, **self.extra}
