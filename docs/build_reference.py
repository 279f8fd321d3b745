"""Write `docs/reference.md` from the docstrings of the public tasks, context managers and the block.

Run `python docs/build_reference.py` (or `make docs`) after changing a docstring; a test fails while the
committed page differs from what this writes, so the page stays true.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REFERENCE = Path(__file__).resolve().parent / "reference.md"

# Sections of a Google-style docstring, rendered as Markdown.
_SECTIONS = ("Args", "Returns", "Raises", "Example")

_MODULE_TITLES = {
    "sandboxes": "Sandboxes",
    "exec": "Commands (exec)",
    "files": "Files",
    "checkpoints": "Checkpoints and forks",
    "patches": "Checkpoint patches",
    "previews": "Preview URLs",
    "snapshots": "Snapshots",
    "usage": "Usage",
    "orphans": "Orphans",
    "cleanup": "Cleanup",
    "run_report": "Run report",
}


def _signature(name: str, function: Callable[..., Any]) -> str:
    signature = inspect.signature(function)
    parameters = ", ".join(str(parameter) for parameter in signature.parameters.values())
    shown = re.sub(r"'([^']*)'", r"\1", parameters)
    annotation = signature.return_annotation
    returns = "" if annotation is inspect.Signature.empty else f" -> {str(annotation).strip(chr(39))}"
    return f"{name}({shown}){returns}"


def _markdown(docstring: str) -> str:
    """Summary and prose as they are; `Args:` and the other sections as headed lists and code."""
    lines = inspect.cleandoc(docstring).splitlines()
    out: list[str] = []
    section: str | None = None
    for line in lines:
        header = line.rstrip(":")
        if line.endswith(":") and header in _SECTIONS:
            section = header
            out.extend(["", f"**{section}**", ""])
            continue
        if section is None or section == "Example":
            out.append(line.removeprefix("    ") if section else line)
        elif line.startswith("    ") and not line.startswith("        ") and line.strip():
            name, _, text = line.strip().partition(":")
            out.append(f"- `{name}`: {text.strip()}" if text else f"- {line.strip()}")
        elif line.strip():
            out[-1] += " " + line.strip()
    return "\n".join(out).strip()


def _entries() -> Iterator[tuple[str, str, str, str]]:
    """(module, heading, signature, markdown) for each documented object."""
    import prefect_opencomputer.tasks as tasks
    from prefect_opencomputer.tasks.factory import SyncAsyncTask

    for name in tasks.__all__:
        value = getattr(tasks, name)
        if isinstance(value, SyncAsyncTask):
            function = value.fn
            module = value.fn.__module__.rsplit(".", 1)[-1]
            heading = f"`{name}` / `a{name}`"
        elif inspect.isfunction(value) and not name.startswith("a") and value.__doc__:
            function = value
            module = value.__module__.rsplit(".", 1)[-1]
            heading = f"`{name}`"
        else:
            continue
        yield module, heading, _signature(name, inspect.unwrap(function)), _markdown(function.__doc__ or "")


def render() -> str:
    from prefect_opencomputer import OpenComputerCredentials

    parts = [
        "# Reference",
        "",
        "Written by `python docs/build_reference.py` from the docstrings; do not edit by hand.",
        "",
        "Every task has a sync form (`create_sandbox`: a value in `def` flows, an awaitable in",
        "`async def` code) and an `a`-prefixed async twin (`acreate_sandbox`). Credentials are the keyword",
        "`credentials=` (default: `OPENCOMPUTER_API_KEY` / `OPENCOMPUTER_API_URL`, or the saved block named",
        "by `OPENCOMPUTER_CREDENTIALS_BLOCK`).",
        "",
        "## `OpenComputerCredentials` (block)",
        "",
        _markdown(OpenComputerCredentials.__doc__ or ""),
    ]
    for field_name, field in OpenComputerCredentials.model_fields.items():
        parts.append(f"- `{field_name}`: {field.description}")
    entries = list(_entries())
    for module, title in _MODULE_TITLES.items():
        chosen = [entry for entry in entries if entry[0] == module]
        if not chosen:
            continue
        parts.extend(["", f"## {title}"])
        for _, heading, signature, text in chosen:
            parts.extend(["", f"### {heading}", "", "```python", signature, "```", "", text])
    return "\n".join(parts).rstrip() + "\n"


def main() -> int:
    REFERENCE.write_text(render())
    print(f"wrote {REFERENCE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
