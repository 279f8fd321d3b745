"""Every environment variable of the integration is named in one module: `prefect_opencomputer._settings`.

Elsewhere the code imports the constant, so renaming a variable or finding its readers is one search. Prose
may mention a name (docstrings); a string the code uses (a lookup, a message, a help text) may not.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from prefect_opencomputer import _settings

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "prefect_opencomputer"
SETTINGS = PACKAGE / "_settings.py"
ENV_NAME = re.compile(r"\b(?:PREFECT_)?OPENCOMPUTER_[A-Z0-9_]*[A-Z0-9]\b")


def _docstrings(tree: ast.Module) -> set[int]:
    """The ids of the docstring nodes: the first string of a module, class or function."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _spelled(source: str) -> list[tuple[int, str]]:
    """(line, name) of every variable name in a string the code uses, docstrings left out."""
    tree = ast.parse(source)
    prose = _docstrings(tree)
    return [
        (node.lineno, name)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose
        for name in ENV_NAME.findall(node.value)
    ]


def test_no_module_but_the_settings_module_spells_an_environment_variable() -> None:
    sources = [path for path in PACKAGE.rglob("*.py") if path != SETTINGS]
    assert len(sources) > 50, "the walk should see the whole package"

    spelled = [
        f"{path.relative_to(PACKAGE)}:{line}: {name}"
        for path in sources
        for line, name in _spelled(path.read_text())
    ]

    assert spelled == [], "import the name from prefect_opencomputer._settings instead:\n" + "\n".join(
        spelled
    )


def test_the_walk_finds_a_name_spelled_in_code() -> None:
    # The check above must be able to fail: a lookup and an f-string are caught, a docstring is not.
    stray = (
        '"""Reads OPENCOMPUTER_API_KEY (prose: allowed)."""\n'
        "import os\n"
        'key = os.environ.get("OPENCOMPUTER_API_KEY")\n'
        'hint = f"set PREFECT_OPENCOMPUTER_ORPHAN_AFTER_SECONDS={key}"\n'
    )
    assert _spelled(stray) == [(3, "OPENCOMPUTER_API_KEY"), (4, "PREFECT_OPENCOMPUTER_ORPHAN_AFTER_SECONDS")]


def test_every_name_in_the_settings_module_is_an_environment_variable_of_ours() -> None:
    names = {
        value for key, value in vars(_settings).items() if key.endswith("_ENV") and isinstance(value, str)
    }
    assert names and all(ENV_NAME.fullmatch(name) for name in names)
    assert len(names) == len([key for key in vars(_settings) if key.endswith("_ENV")]), "one constant a name"


def test_the_readme_lists_every_variable_a_user_sets() -> None:
    readme = (ROOT / "README.md").read_text()
    # The create marker is set inside sandboxes by the integration itself, never by a user.
    names = {value for key, value in vars(_settings).items() if key.endswith("_ENV")} - {
        _settings.CREATE_MARKER_ENV
    }
    missing = sorted(name for name in names if f"| `{name}` |" not in readme)
    assert missing == [], f"add these to the README's table of environment variables: {missing}"
