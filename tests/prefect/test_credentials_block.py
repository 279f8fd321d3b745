"""The credentials block: Prefect's standard block checks, env fallback, and a key that never leaks."""

from __future__ import annotations

from typing import Any

import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites.blocks import BlockStandardTestSuite
from pydantic import SecretStr

import prefect_opencomputer
from prefect_opencomputer.blocks import OpenComputerCredentials, load_credentials


class TestOpenComputerCredentialsStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[Block]:
        return OpenComputerCredentials


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
    credentials = await load_credentials(None)
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
    loaded = await load_credentials("test-local")
    assert loaded.api_key is not None and loaded.api_key.get_secret_value() == local_server.api_key
    async with get_client() as prefect:
        document = await prefect.read_block_document_by_name(
            "test-local", "opencomputer-credentials", include_secrets=False
        )
    assert local_server.api_key not in str(document.data)
