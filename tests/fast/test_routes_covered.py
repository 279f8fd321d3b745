"""Every route the app serves has a fast test: a new route without one fails here."""

from __future__ import annotations

import importlib
from pathlib import Path

from prefect_opencomputer.local.app import create_app
from prefect_opencomputer.local.backend.service import LocalBackend
from tests.fast.conftest import fast_config
from tests.fast.coverage import COVERED
from tests.fast.standin import StandinRuntime
from tests.local.test_compatibility_doc import _walk


def test_every_route_has_a_fast_test(tmp_path: Path) -> None:
    for module in sorted(Path(__file__).parent.glob("test_*.py")):
        importlib.import_module(f"tests.fast.{module.stem}")  # each registers what it covers
    config = fast_config(tmp_path)
    served = set(_walk(create_app(LocalBackend(config, StandinRuntime(tmp_path)), config).routes))
    assert sorted(served - COVERED) == [], "routes with no test in tests/fast"
    assert sorted(COVERED - served) == [], "tests/fast names routes the app does not serve"
