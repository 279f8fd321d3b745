"""docs/architecture.md stays true: its resource matrix against the routers, the backend and the files."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
PACKAGE = REPOSITORY / "prefect_opencomputer"
PAGE = REPOSITORY / "docs" / "architecture.md"
# Routers that serve no resource of their own (the page names each and says why).
NOT_RESOURCES = {"__init__", "deps", "sockets", "unsupported", "control"}
LAYERS = ("client", "tasks", "routes", "backend")


def _matrix() -> dict[str, dict[str, str]]:
    """The page's resource table: resource -> layer -> cell."""
    rows: dict[str, dict[str, str]] = {}
    text = PAGE.read_text()
    table = text[text.index("| resource | client | tasks | routes | backend |") :].split("\n\n")[0]
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        resource = cells[0].strip("`")
        rows[resource] = dict(zip(LAYERS, cells[1:], strict=True))
    return rows


def _router_modules() -> set[str]:
    return {path.stem for path in (PACKAGE / "local" / "routes").glob("*.py")} - NOT_RESOURCES


def _assigned_in_init(path: Path, class_name: str) -> set[str]:
    """The attributes a class's ``__init__`` assigns on ``self``."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    return {
                        target.attr
                        for statement in ast.walk(item)
                        if isinstance(statement, ast.Assign)
                        for target in statement.targets
                        if isinstance(target, ast.Attribute)
                        and isinstance(target.value, ast.Name)
                        and target.value.id == "self"
                    }
    raise AssertionError(f"no {class_name}.__init__ in {path}")


def test_every_router_is_a_resource_row_of_the_page_and_every_row_a_router() -> None:
    assert set(_matrix()) == _router_modules()


def test_every_resource_is_one_attribute_of_the_backend_and_the_client_named_as_its_modules() -> None:
    backend_attributes = _assigned_in_init(PACKAGE / "local" / "backend" / "service.py", "LocalBackend")
    client_attributes = _assigned_in_init(PACKAGE / "client" / "_client.py", "OpenComputerClient")
    backend_modules = {path.stem for path in (PACKAGE / "local" / "backend").glob("*.py")}
    matrix = _matrix()
    # The backend composes exactly the page's resources (besides its core and its own services).
    assert (backend_attributes & backend_modules) - {"core"} == set(matrix)
    for resource, cells in matrix.items():
        assert cells["backend"] == f"`local/backend/{resource}.py`", resource
        assert cells["routes"] == f"`local/routes/{resource}.py`", resource
        if cells["client"] == f"`client/_{resource}.py`" and resource != "images":
            assert resource in client_attributes, f"client.{resource} is missing"


@pytest.mark.parametrize("layer", LAYERS)
def test_every_cell_names_a_file_that_exists_or_says_why_there_is_none(layer: str) -> None:
    for resource, cells in _matrix().items():
        cell = cells[layer]
        if cell.startswith("—"):
            assert len(cell.removeprefix("—").strip()) > 10, f"{resource}/{layer}: say why there is none"
            continue
        match = re.fullmatch(r"`([\w/]+\.py)`", cell)
        assert match, f"{resource}/{layer}: {cell!r}"
        path = match.group(1)
        assert (PACKAGE / path).is_file(), f"{resource}/{layer}: {path} does not exist"
        stem = Path(path).stem.removeprefix("_")
        assert stem == resource, f"{resource}/{layer}: the module is named {stem}"


def test_only_the_core_holds_the_runtime() -> None:
    """The backend's resources ask the core; none of them reaches the runtime itself."""
    for path in (PACKAGE / "local" / "backend").glob("*.py"):
        if path.stem in ("core", "service"):  # the core holds it; the root hands it to the core
            continue
        tree = ast.parse(path.read_text())
        names = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        names |= {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        assert not names & {"runtime", "_runtime", "Runtime"}, f"{path.name} reaches the runtime"


def _methods(path: Path, class_name: str) -> set[str]:
    """The methods of a class, properties left out (those name a part, they do not act)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return {
                item.name
                for item in node.body
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                and not any(
                    isinstance(decorator, ast.Name) and decorator.id == "property"
                    for decorator in item.decorator_list
                )
            }
    raise AssertionError(f"no {class_name} in {path}")


def test_the_routes_reach_the_backend_one_resource_at_a_time() -> None:
    """``backend.<resource>.<action>``: a router never calls a method of the composition root itself."""
    root_methods = _methods(PACKAGE / "local" / "backend" / "service.py", "LocalBackend")
    assert root_methods, "the walk found no methods: it would prove nothing"
    for path in (PACKAGE / "local" / "routes").glob("*.py"):
        if path.stem == "control":  # the test-only routes reset and count the whole server
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "backend"
            ):
                assert node.attr not in root_methods, f"{path.name}: backend.{node.attr}()"
