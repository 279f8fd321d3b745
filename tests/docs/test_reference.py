"""The reference page is written from the docstrings, every task documents itself, and the page is current."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from types import ModuleType

import pytest

import prefect_opencomputer.tasks as tasks
from prefect_opencomputer.tasks.factory import SyncAsyncTask

DOCS = Path(__file__).resolve().parents[2] / "docs"
TASKS = [name for name in tasks.__all__ if isinstance(getattr(tasks, name), SyncAsyncTask)]


def _builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_reference", DOCS / "build_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", TASKS)
def test_every_task_documents_args_returns_and_an_example(name: str) -> None:
    task = getattr(tasks, name)
    doc = inspect.getdoc(task.fn) or ""
    for section in ("Args:", "Returns:", "Example:"):
        assert f"\n{section}\n" in f"\n{doc}\n", f"{name} has no {section} section"
    assert getattr(tasks, f"a{name}") is task.aio, f"{name} has its async twin a{name}"


@pytest.mark.parametrize("name", TASKS)
def test_every_task_describes_each_parameter_where_the_prefect_ui_shows_it(name: str) -> None:
    """The shared parameters (sandbox, credentials, ...) are written once and filled into every task."""
    task = getattr(tasks, name)
    for shown in (task.description, task.aio.description):
        args = shown.partition("Args:")[2].partition("\n\n")[0]
        described = {line.strip().partition(":")[0] for line in args.splitlines()}
        taken = set(inspect.signature(task.fn).parameters)
        assert taken <= described, f"{name} does not describe {sorted(taken - described)}"


def test_committed_reference_page_is_up_to_date() -> None:
    committed = (DOCS / "reference.md").read_text()
    assert committed == _builder().render(), (
        "run `python docs/build_reference.py` and commit docs/reference.md"
    )


def test_reference_page_names_every_task_and_its_twin() -> None:
    page = (DOCS / "reference.md").read_text()
    for name in TASKS:
        assert f"### `{name}` / `a{name}`" in page
