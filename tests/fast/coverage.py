"""Which routes the fast tier exercises: a test names the routes whose success and error shapes it checks."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

Test = TypeVar("Test", bound=Callable[..., object])
COVERED: set[tuple[str, str]] = set()


def covers(*routes: str) -> Callable[[Test], Test]:
    """Mark a test as checking ``"METHOD /path"`` (as the app declares it, ``/api`` included)."""

    def mark(test: Test) -> Test:
        for route in routes:
            method, path = route.split(" ", 1)
            COVERED.add((method, path))
        return test

    return mark


def error_of(body: object) -> str:
    """The message of a JSON error answer, failing the test for any other shape."""
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    return str(body["error"])
