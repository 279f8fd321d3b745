"""One precedence for credentials, whoever asks: a block in code, then a block name, then the block named by
the environment, then the environment's key and URL.

Every source is real: saved blocks in the Prefect API, variables in the environment, and the local server
judging the key each source carries. Only the source that should win holds the key the server accepts.
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest
from prefect.client.schemas.objects import FlowRun
from pydantic import SecretStr

from prefect_opencomputer._settings import API_KEY_ENV, API_URL_ENV, CREDENTIALS_BLOCK_ENV
from prefect_opencomputer.blocks import OpenComputerCredentials, aload_credentials, load_credentials
from prefect_opencomputer.client import UnauthorizedError
from prefect_opencomputer.tasks.cleanup import credentials_of_run

WRONG_KEY = "osb_" + "0" * 64
SOURCES = ("code", "name", "environment block", "environment")


async def _accepted(credentials: OpenComputerCredentials) -> bool:
    """Whether the local server accepts the key these credentials send (a real request)."""
    async with credentials.get_client() as client:
        try:
            await client.sandboxes.list()
        except UnauthorizedError:
            return False
    return True


def _block(local_server: Any, key: str) -> OpenComputerCredentials:
    return OpenComputerCredentials(api_key=SecretStr(key), api_url=local_server.url)


@pytest.fixture
async def sources(local_server: Any, control: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Sets up every source with a wrong key; `winner(source)` gives that one the right key and removes
    the sources above it, then returns what to pass to the resolver."""
    await _block(local_server, WRONG_KEY).save("precedence-named", overwrite=True)
    await _block(local_server, WRONG_KEY).save("precedence-from-env", overwrite=True)
    monkeypatch.setenv(CREDENTIALS_BLOCK_ENV, "precedence-from-env")
    monkeypatch.setenv(API_URL_ENV, local_server.url)
    monkeypatch.setenv(API_KEY_ENV, WRONG_KEY)

    async def winner(source: str) -> dict[str, Any]:
        right = local_server.api_key
        arguments: dict[str, Any] = {
            "block_name": "precedence-named",
            "credentials": _block(local_server, WRONG_KEY),
        }
        if source == "code":
            arguments["credentials"] = _block(local_server, right)
            return arguments
        del arguments["credentials"]
        if source == "name":
            await _block(local_server, right).save("precedence-named", overwrite=True)
            return arguments
        del arguments["block_name"]
        if source == "environment block":
            await _block(local_server, right).save("precedence-from-env", overwrite=True)
            return arguments
        monkeypatch.delenv(CREDENTIALS_BLOCK_ENV)
        monkeypatch.setenv(API_KEY_ENV, right)
        return arguments

    return winner


@pytest.mark.parametrize("source", SOURCES)
async def test_the_highest_source_given_wins_over_every_lower_one(sources: Any, source: str) -> None:
    arguments = await sources(source)

    chosen = await aload_credentials(**arguments)

    assert await _accepted(chosen), f"{source} should have won, but a lower source's key was sent"


@pytest.mark.parametrize("source", SOURCES)
async def test_the_sync_twin_resolves_by_the_same_precedence(sources: Any, source: str) -> None:
    arguments = await sources(source)

    chosen = load_credentials(**arguments)

    assert await _accepted(chosen)


async def test_the_lower_sources_really_carry_a_key_the_server_refuses(sources: Any) -> None:
    # Without this, the precedence tests would pass whichever source the resolver picked.
    await sources("environment block")
    assert not await _accepted(await aload_credentials("precedence-named"))
    assert not await _accepted(OpenComputerCredentials())  # the environment's key


async def test_a_saved_block_without_a_key_reads_the_key_from_the_environment(
    local_server: Any, control: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await OpenComputerCredentials(api_url=local_server.url).save("precedence-url-only", overwrite=True)
    monkeypatch.setenv(API_URL_ENV, "http://127.0.0.1:9")  # the block's URL wins over this one
    monkeypatch.setenv(API_KEY_ENV, local_server.api_key)

    chosen = await aload_credentials("precedence-url-only")

    assert chosen.api_key is None
    assert await _accepted(chosen)


async def test_a_hook_in_another_process_reads_a_runs_parameters_in_the_same_order(
    local_server: Any, control: Any
) -> None:
    # A run given both a block (stored as a reference) and a block name: its tasks used the block, so the
    # cleanup hook, which finds the run's credentials from its parameters, must use the block too.
    document_id = await _block(local_server, local_server.api_key).save(
        "precedence-run-block", overwrite=True
    )
    await _block(local_server, WRONG_KEY).save("precedence-run-name", overwrite=True)
    run = FlowRun(
        id=uuid4(),
        flow_id=uuid4(),
        parameters={
            "credentials": {"$ref": {"block_document_id": str(document_id)}},
            "credentials_block": "precedence-run-name",
        },
    )

    assert await _accepted(await credentials_of_run(run))
    assert not await _accepted(await credentials_of_run(run, "precedence-run-name"))
