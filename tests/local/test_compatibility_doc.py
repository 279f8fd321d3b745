"""docs/compatibility.md stays true: every route the app serves has a row, and every row is a served route."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.routing import BaseRoute

from prefect_opencomputer.local.app import create_app
from prefect_opencomputer.local.backend.service import LocalBackend
from prefect_opencomputer.local.config import LocalServerConfig
from tests.fast.standin import StandinRuntime

DOC = Path(__file__).parent.parent.parent / "docs" / "compatibility.md"
ROW = re.compile(r"^\| (?P<method>[A-Z]+|\*) \| `(?P<path>[^`]+)` \| (?P<status>[^|]+?) \|")
STATUSES = {"same", "differs", "not supported (501)", "local only"}
# A difference big enough to name in the status column itself, e.g. "differs: disk only".
NAMED_DIFFERENCE = re.compile(r"differs: [a-z][a-z ]*")
# How the catch-all 501 routes are registered: every method plus the WebSocket upgrade.
ANY_METHOD = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def _walk(routes: Iterable[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method or "WS", full path) of every route, through included routers of any FastAPI version."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _walk(included.routes, prefix + route.include_context.prefix)  # type: ignore[attr-defined]
        elif isinstance(route, APIRoute):
            methods = set(route.methods)
            for method in ["*"] if methods == ANY_METHOD else sorted(methods):
                yield method, prefix + route.path
        elif isinstance(route, APIWebSocketRoute):
            yield "WS", prefix + route.path


def _served(tmp_path: Path) -> set[tuple[str, str]]:
    config = LocalServerConfig(data_dir=tmp_path, api_key="k", enable_test_routes=True)
    routes = set(_walk(create_app(LocalBackend(config, StandinRuntime(tmp_path)), config).routes))
    # A catch-all's WebSocket twin is covered by its `*` row.
    return {(m, p) for m, p in routes if not (m == "WS" and ("*", p) in routes)}


def _documented() -> dict[tuple[str, str], str]:
    rows = {}
    for line in DOC.read_text().splitlines():
        if match := ROW.match(line):
            key = (match["method"], match["path"])
            assert key not in rows, f"documented twice: {key}"
            rows[key] = match["status"]
    return rows


def test_every_served_route_is_documented_and_every_documented_route_is_served(tmp_path: Path) -> None:
    served, documented = _served(tmp_path), _documented()
    assert sorted(served - documented.keys()) == [], "served but missing from docs/compatibility.md"
    assert sorted(documented.keys() - served) == [], "in docs/compatibility.md but not served"


def test_every_row_has_a_known_status_and_501_rows_are_the_catch_alls(tmp_path: Path) -> None:
    for (method, path), status in _documented().items():
        assert status in STATUSES or NAMED_DIFFERENCE.fullmatch(status), (method, path, status)
        assert (status == "not supported (501)") == (method == "*"), (method, path, status)
        assert (status == "local only") == path.startswith("/_test/"), (method, path, status)
