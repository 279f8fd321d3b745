"""The credentials block: Prefect's standard block checks, env fallback, and a key that never leaks."""

from __future__ import annotations

import io
import re
import urllib.request
from collections.abc import Iterator
from email.message import Message
from typing import Any

import pytest
from prefect import flow
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites.blocks import BlockStandardTestSuite
from pydantic import SecretStr

import prefect_opencomputer
from prefect_opencomputer.blocks import OpenComputerCredentials, aload_credentials
from prefect_opencomputer.blocks.credentials import LOGO_PATH, LOGO_URL
from prefect_opencomputer.client import ForbiddenError, TransportError, UnauthorizedError
from prefect_opencomputer.tasks import MissingCredentialsError, cleanup_hooks, create_sandbox, list_sandboxes


class _PackagedLogo(urllib.request.BaseHandler):
    """Answers the logo's published URL with the packaged file (the same bytes); this machine has no
    internet, and the suite downloads the logo to check it."""

    handler_order = 100  # before urllib's own HTTPS handler

    def https_open(self, request: urllib.request.Request) -> urllib.response.addinfourl | None:
        if request.full_url != LOGO_URL:
            return None
        headers = Message()
        headers["Content-Type"] = "image/png"
        response = urllib.response.addinfourl(io.BytesIO(LOGO_PATH.read_bytes()), headers, LOGO_URL, 200)
        response.msg = "OK"
        return response


class TestOpenComputerCredentialsStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[Block]:
        return OpenComputerCredentials

    @pytest.fixture(autouse=True)
    def packaged_logo(self) -> Iterator[None]:
        urllib.request.install_opener(urllib.request.build_opener(_PackagedLogo()))
        yield
        urllib.request.install_opener(None)  # type: ignore[arg-type]


def test_the_logo_ships_in_the_package_as_a_square_png() -> None:
    from PIL import Image

    assert LOGO_URL.endswith("/prefect_opencomputer/assets/logo.png")
    with Image.open(LOGO_PATH) as image:
        assert image.format == "PNG" and image.width == image.height


def _code_examples() -> list[str]:
    example = OpenComputerCredentials.__doc__ or ""
    return [
        "\n".join(line.removeprefix(" " * 8) for line in block.splitlines())
        for block in re.findall(r"```python\n(.*?)```", example, re.DOTALL)
    ]


# Prefect's suite wants the placeholder `BLOCK_NAME` in the example; a saved block needs a real name.
EXAMPLE_BLOCK = "example-block"


def _code_example(index: int) -> str:
    return _code_examples()[index].replace('"BLOCK_NAME"', f'"{EXAMPLE_BLOCK}"')


async def _save_block_name(local_server: Any) -> None:
    await OpenComputerCredentials(api_key=SecretStr(local_server.api_key), api_url=local_server.url).save(
        EXAMPLE_BLOCK, overwrite=True
    )


def test_the_block_code_example_runs_in_sync_code(local_server: Any, control: Any) -> None:
    from prefect.utilities.asyncutils import run_coro_as_sync

    run_coro_as_sync(_save_block_name(local_server))
    sync_example = _code_example(0)
    namespace: dict[str, Any] = {}
    exec(compile(sync_example, "block example", "exec"), namespace)
    assert namespace["sandboxes"] == []


async def test_the_block_code_example_runs_in_async_code(local_server: Any, control: Any) -> None:
    await _save_block_name(local_server)
    async_example = _code_example(1)
    body = "\n".join("    " + line for line in async_example.splitlines())
    namespace: dict[str, Any] = {}
    exec(compile(f"async def example():\n{body}\n    return sandboxes\n", "block example", "exec"), namespace)
    assert await namespace["example"]() == []


def test_sync_client_works_from_plain_code_and_inside_a_def_flow(local_server: Any, control: Any) -> None:
    credentials = OpenComputerCredentials(api_key=SecretStr(local_server.api_key), api_url=local_server.url)
    with credentials.get_sync_client() as client:
        sandbox = client.sandboxes.create(timeout=60)
        assert client.exec.run(sandbox.sandbox_id, "echo hi").stdout == "hi\n"

    @flow
    def uses_it() -> list[str]:
        with credentials.get_sync_client() as client:
            ids = [sb.sandbox_id for sb in client.sandboxes.list()]
            client.sandboxes.kill(sandbox.sandbox_id)
            return ids

    assert uses_it() == [sandbox.sandbox_id]


async def test_tasks_default_to_the_block_named_in_the_environment(
    local_server: Any, control: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await OpenComputerCredentials(api_key=SecretStr(local_server.api_key), api_url=local_server.url).save(
        "from-env", overwrite=True
    )
    monkeypatch.setenv("OPENCOMPUTER_API_KEY", "wrong-key")
    monkeypatch.setenv("OPENCOMPUTER_CREDENTIALS_BLOCK", "from-env")

    @flow
    async def lists() -> int:
        return len(await list_sandboxes())

    assert await lists() == 0


@pytest.mark.parametrize("key", [None, "wrong-key"], ids=["no-key", "wrong-key"])
async def test_a_refused_key_says_how_to_give_one(
    local_server: Any, control: Any, monkeypatch: pytest.MonkeyPatch, key: str | None
) -> None:
    if key is None:
        monkeypatch.delenv("OPENCOMPUTER_API_KEY")
    else:
        monkeypatch.setenv("OPENCOMPUTER_API_KEY", key)

    @flow
    async def lists() -> None:
        await list_sandboxes()

    state = await lists(return_state=True)
    with pytest.raises((UnauthorizedError, ForbiddenError)) as caught:
        await state.aresult()
    message = str(caught.value)
    assert "OPENCOMPUTER_API_KEY" in message
    if key is None:
        assert "credentials=" in message
    else:  # a key was given: which URL refused it
        assert f"the API key was refused by {local_server.url}/api" in message


async def test_with_no_key_and_no_url_a_task_fails_at_once_and_says_where_to_give_them(
    control: Any, records: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OPENCOMPUTER_API_KEY", "OPENCOMPUTER_API_URL", "OPENCOMPUTER_CREDENTIALS_BLOCK"):
        monkeypatch.delenv(name, raising=False)

    @flow(**cleanup_hooks())
    async def no_credentials() -> None:
        await create_sandbox()

    state = await no_credentials(return_state=True)

    with pytest.raises(MissingCredentialsError) as caught:
        await state.aresult()
    message = str(caught.value)
    for named in ("OPENCOMPUTER_API_KEY", "OPENCOMPUTER_API_URL", "credentials=", "local serve"):
        assert named in message
    logs = await records.wait_for_log(state.state_details.flow_run_id, "Finished in state Failed")
    # No retries of a request that cannot work, and the cleanup hook adds no error of its own.
    assert not any("Retrying" in line or "AwaitingRetry" in line for line in logs)
    assert not any("while running hook" in line for line in logs)


async def test_an_unreachable_url_is_named_and_the_cleanup_hook_adds_no_error(
    control: Any, records: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENCOMPUTER_API_URL", "http://127.0.0.1:9")  # nothing listens on the discard port

    @flow(**cleanup_hooks())
    async def unreachable() -> None:
        await list_sandboxes.with_options(retries=0)()

    state = await unreachable(return_state=True)

    with pytest.raises(TransportError, match=r"http://127\.0\.0\.1:9/api/sandboxes"):
        await state.aresult()
    logs = await records.wait_for_log(state.state_details.flow_run_id, "Could not clean up")
    assert any("Could not clean up" in line and "127.0.0.1:9" in line for line in logs)
    assert not any("while running hook" in line for line in logs)


def test_block_is_visible_at_the_package_top_level_for_block_register() -> None:
    assert prefect_opencomputer.OpenComputerCredentials is OpenComputerCredentials
    assert "OpenComputerCredentials" in dir(prefect_opencomputer)
    assert OpenComputerCredentials.get_block_type_slug() == "opencomputer-credentials"


async def test_client_from_explicit_fields_talks_to_the_server(local_server: Any) -> None:
    credentials = OpenComputerCredentials(api_key=SecretStr(local_server.api_key), api_url=local_server.url)
    async with credentials.get_client() as client:
        assert client.api_base == local_server.api_url
        assert isinstance(await client.sandboxes.list(), list)


async def test_unset_fields_fall_back_to_the_environment(
    local_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENCOMPUTER_API_URL", local_server.url)
    monkeypatch.setenv("OPENCOMPUTER_API_KEY", local_server.api_key)
    credentials = await aload_credentials(None)
    assert credentials.api_key is None and credentials.api_url is None
    async with credentials.get_client() as client:
        assert isinstance(await client.sandboxes.list(), list)


def test_api_key_is_hidden_from_repr_and_dumps() -> None:
    secret = "osb_" + "ab" * 32
    credentials = OpenComputerCredentials(api_key=SecretStr(secret))
    assert secret not in repr(credentials)
    assert secret not in str(credentials.model_dump())
    assert secret not in credentials.model_dump_json()


async def test_saved_block_loads_by_name_and_the_stored_document_masks_the_key(local_server: Any) -> None:
    from prefect.client.orchestration import get_client

    await OpenComputerCredentials(api_key=SecretStr(local_server.api_key), api_url=local_server.url).save(
        "test-local", overwrite=True
    )
    loaded = await aload_credentials("test-local")
    assert loaded.api_key is not None and loaded.api_key.get_secret_value() == local_server.api_key
    async with get_client() as prefect:
        document = await prefect.read_block_document_by_name(
            "test-local", "opencomputer-credentials", include_secrets=False
        )
    assert local_server.api_key not in str(document.data)
