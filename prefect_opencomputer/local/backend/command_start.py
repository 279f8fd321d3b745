"""Why a command cannot start, found before it is spawned, in the words the hosted agent uses.

The hosted agent starts commands with Go's ``os/exec``: a name that is not on its ``PATH`` and a
working directory that does not exist fail the start itself, and the service answers 500 naming
the cause, before any process runs. Our helper would start and exit 127 or 1 instead (a result,
not an error), so the backend looks first and answers as the service does. Go reports a missing
working directory as ``fork/exec <executable>: no such file or directory``: the message names the
executable although the directory is what is missing, as on the service.
"""

from __future__ import annotations

import json
import posixpath
import stat
from typing import Literal

from prefect_opencomputer.local.sandbox.fileops import PathEscapeError, RootedFiles
from prefect_opencomputer.local.sandbox.runtime import BASE_ENV

# The agent looks names up on its own PATH (the base one), not on the command's environment.
AGENT_PATH = BASE_ENV["PATH"]
_ELSEWHERE = -1


def start_error(files: RootedFiles, command: str, cwd: str, search_path: str = AGENT_PATH) -> str | None:
    """Go's error for starting ``command`` in ``cwd`` inside the sandbox, or None when it can start."""
    directory = cwd if cwd.startswith("/") else f"/{cwd}"
    executable, refusal = _look_path(files, command, directory, search_path)
    if refusal is not None:
        return refusal
    missing = _path_problem(files, directory, wanted="directory")
    if missing is not None:
        return f"fork/exec {executable}: {missing}"
    return None


def _look_path(files: RootedFiles, command: str, cwd: str, search_path: str) -> tuple[str, str | None]:
    """``exec.LookPath``: a name with a slash is taken as it is, any other is searched on the PATH."""
    quoted = json.dumps(command)
    if "/" in command:
        problem = _path_problem(files, posixpath.join(cwd, command), wanted="executable")
        if problem is None:
            return command, None
        if problem == "no such file or directory":
            return command, f"exec: {quoted}: stat {command}: {problem}"
        return command, f"exec: {quoted}: {problem}"
    for directory in search_path.split(":"):
        candidate = posixpath.join(directory or ".", command)
        if _path_problem(files, posixpath.join(cwd, candidate), wanted="executable") is None:
            return candidate, None
    return command, f"exec: {quoted}: executable file not found in $PATH"


def _path_problem(files: RootedFiles, path: str, *, wanted: Literal["executable", "directory"]) -> str | None:
    """Go's reason ``path`` cannot serve as the ``wanted`` kind, or None when it can (or lies elsewhere)."""
    mode = _mode(files, path)
    if mode == _ELSEWHERE:
        return None
    if mode is None:
        return "no such file or directory"
    if wanted == "directory":
        return None if stat.S_ISDIR(mode) else "not a directory"
    if stat.S_ISDIR(mode):
        return "is a directory"
    return None if mode & 0o111 else "permission denied"


def _mode(files: RootedFiles, path: str) -> int | None:
    """The mode of what ``path`` names inside the sandbox (links followed inside it), None if nothing.

    `_ELSEWHERE` for a path the server's lookups do not follow (onto another mount such as /run or
    /dev/shm, through /proc): the sandbox's own start then decides.
    """
    try:
        return files.stat(path).st_mode
    except PathEscapeError:
        return _ELSEWHERE
    except OSError:
        return None
