"""The descriptions of the parameters most tasks share, written once and filled into each task's `Args:`.

A task's docstring describes the parameters that are its own (a task with none has no `Args:` section);
`opencomputer_task` adds the entries below for the shared ones it leaves out, in the signature's order, so
the Prefect UI and the reference page show every parameter. A task that means something else by one of
these names describes it itself, and that text stays.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Final

SHARED_PARAMETERS: Final = {
    "sandbox": "The sandbox, as its id or its model.",
    "checkpoint": "The checkpoint, as its id or its model.",
    "credentials": "The OpenComputer block; default: the environment.",
}
_SECTIONS: Final = ("Returns:", "Raises:", "Example:")


def with_shared_parameters(function: Callable[..., Any]) -> str | None:
    """`function`'s docstring, with an `Args:` entry for each shared parameter it takes but leaves out."""
    docstring = function.__doc__
    if not docstring:
        return docstring
    parameters = inspect.signature(function).parameters
    lines = docstring.splitlines()
    header = next((index for index, line in enumerate(lines) if line.strip() == "Args:"), None)
    if header is None:
        # No parameter of its own to describe: the section goes before the first other one.
        header = next((index for index, line in enumerate(lines) if line.strip() in _SECTIONS), None)
        if header is None or SHARED_PARAMETERS.keys().isdisjoint(parameters):
            return docstring
        lines[header:header] = [lines[header].replace(lines[header].strip(), "Args:"), ""]
    entry_indent = lines[header][: len(lines[header]) - len(lines[header].lstrip())] + "    "
    end = next((index for index in range(header + 1, len(lines)) if not lines[index].strip()), len(lines))
    # Each described parameter with its lines: the entry's own and any deeper-indented continuation.
    described: dict[str, list[str]] = {}
    for line in lines[header + 1 : end]:
        if line.startswith(entry_indent) and not line.startswith(entry_indent + " "):
            described[line.strip().partition(":")[0]] = [line]
        elif described:
            described[next(reversed(described))].append(line)
    entries: list[str] = []
    for name in parameters:
        if name in described:
            entries.extend(described.pop(name))
        elif name in SHARED_PARAMETERS:
            entries.append(f"{entry_indent}{name}: {SHARED_PARAMETERS[name]}")
    for rest in described.values():
        entries.extend(rest)
    completed = "\n".join([*lines[: header + 1], *entries, *lines[end:]])
    return completed + "\n" if docstring.endswith("\n") else completed
