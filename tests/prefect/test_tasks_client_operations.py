"""The tasks for the client operations that had none: paths, running commands, tags."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prefect import flow

from prefect_opencomputer.blocks import OpenComputerCredentials
from prefect_opencomputer.client import NotFoundError, OpenComputerClient
from prefect_opencomputer.tasks import (
    TAG_CREATED_BY,
    TAG_FLOW_RUN,
    adelete_file,
    afile_exists,
    aget_sandbox_tags,
    aget_snapshot,
    akill_command,
    alist_commands,
    alist_files,
    alist_tag_keys,
    amake_directory,
    aset_sandbox_tags,
    awrite_file,
    open_sandbox,
)


async def test_path_tasks_make_list_and_remove_directories(credentials: OpenComputerCredentials) -> None:
    @flow
    async def paths() -> dict[str, Any]:
        async with open_sandbox(credentials=credentials) as sandbox:
            await amake_directory(sandbox, "work/data/raw", credentials=credentials)
            await amake_directory(sandbox, "work/data/raw", credentials=credentials)  # exists: fine
            await awrite_file(sandbox, "work/data/notes.txt", "hello", credentials=credentials)
            listed = await alist_files(sandbox, "work/data", credentials=credentials)
            await adelete_file(sandbox, "work/data", credentials=credentials)
            await adelete_file(sandbox, "work/data", credentials=credentials)  # a missing path is fine
            return {
                "listed": {(entry.name, entry.is_dir) for entry in listed},
                "notes_size": next(entry.size for entry in listed if entry.name == "notes.txt"),
                "gone": not await afile_exists(sandbox, "work/data", credentials=credentials),
            }

    out = await paths()
    assert out["listed"] == {("raw", True), ("notes.txt", False)}
    assert out["notes_size"] == 5
    assert out["gone"]


async def test_a_running_command_is_listed_and_killed(
    credentials: OpenComputerCredentials, oc: OpenComputerClient
) -> None:
    @flow
    async def stops_a_sleeper() -> dict[str, Any]:
        async with open_sandbox(credentials=credentials) as sandbox:
            started = await oc.exec.start(sandbox.sandbox_id, "sleep", ["300"])
            before = await alist_commands(sandbox, credentials=credentials)
            await akill_command(sandbox, started.session_id, credentials=credentials)
            for _ in range(50):
                after = await alist_commands(sandbox, credentials=credentials)
                if not any(session.running for session in after):
                    break
                await asyncio.sleep(0.1)
            return {"id": started.session_id, "before": before, "after": after}

    out = await stops_a_sleeper()
    assert [(s.session_id, s.command, s.args, s.running) for s in out["before"]] == [
        (out["id"], "sleep", ["300"], True)
    ]
    assert [(s.session_id, s.running) for s in out["after"]] == [(out["id"], False)]


async def test_set_sandbox_tags_replaces_yours_and_keeps_the_ownership_tags(
    credentials: OpenComputerCredentials,
) -> None:
    @flow
    async def retags() -> dict[str, Any]:
        async with open_sandbox(credentials=credentials, tags={"team": "data", "stage": "draft"}) as sandbox:
            first = await aget_sandbox_tags(sandbox, credentials=credentials)
            returned = await aset_sandbox_tags(sandbox, {"stage": "review"}, credentials=credentials)
            after = await aget_sandbox_tags(sandbox, credentials=credentials)
            keys = await alist_tag_keys(credentials=credentials)
            return {"first": first, "returned": returned, "after": after, "keys": keys}

    out = await retags()
    assert out["first"]["team"] == "data" and TAG_FLOW_RUN in out["first"]
    assert out["returned"] == out["after"]
    assert out["after"]["stage"] == "review" and "team" not in out["after"]
    ownership = {key: value for key, value in out["first"].items() if key.startswith("prefect.")}
    assert ownership and {key: out["after"].get(key) for key in ownership} == ownership
    assert {TAG_CREATED_BY, "stage"} <= {tag.key for tag in out["keys"]}


async def test_get_snapshot_of_an_unknown_name_raises_not_found(credentials: OpenComputerCredentials) -> None:
    @flow
    async def looks_up() -> None:
        await aget_snapshot("no-such-snapshot", credentials=credentials)

    with pytest.raises(NotFoundError):
        await looks_up()
