"""What a person sees in the deployment run form: every default, lists included, and a block picker."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml
from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL

from prefect_opencomputer.blocks import OpenComputerCredentials

PREFECT = str(Path(sys.executable).with_name("prefect"))
DEPLOYMENTS = Path(__file__).resolve().parents[2] / "deployments" / "prefect.yaml"


def _deployments() -> list[dict[str, Any]]:
    document = yaml.safe_load(DEPLOYMENTS.read_text())
    deployments: list[dict[str, Any]] = document["deployments"]
    return deployments


def _flow(entrypoint: str) -> Flow[..., Any]:
    module, _, name = entrypoint.rpartition(".")
    loaded = getattr(importlib.import_module(module), name)
    assert isinstance(loaded, Flow)
    return loaded


@pytest.mark.parametrize("deployment", _deployments(), ids=lambda deployment: deployment["name"])
def test_every_list_parameter_has_its_default_in_the_form_schema(deployment: dict[str, Any]) -> None:
    schema = _flow(deployment["entrypoint"]).parameters.model_dump()
    for definition in schema.get("definitions", {}).values():
        for name, field in definition.get("properties", {}).items():
            if field.get("type") == "array":
                assert field.get("default"), f"{definition['title']}.{name} shows 'No items' in the form"
    # Nothing in prefect.yaml replaces a model's defaults with a partial value.
    assert "parameters" not in deployment.get("parameters", {})


@pytest.mark.parametrize("deployment", _deployments(), ids=lambda deployment: deployment["name"])
def test_credentials_parameter_is_a_block_picker_besides_the_name(deployment: dict[str, Any]) -> None:
    schema = _flow(deployment["entrypoint"]).parameters.model_dump()
    credentials = schema["properties"]["credentials"]
    assert {"$ref": "#/definitions/OpenComputerCredentials"} in credentials["anyOf"]
    assert schema["definitions"]["OpenComputerCredentials"]["block_type_slug"] == "opencomputer-credentials"
    assert "credentials_block" in schema["properties"]


@pytest.mark.parametrize("deployment", _deployments(), ids=lambda deployment: deployment["name"])
def test_a_runner_can_hand_the_flow_to_its_subprocess(deployment: dict[str, Any]) -> None:
    import cloudpickle

    # `serve` and workers pickle the flow (its function by value, with what it refers to) for the run's
    # process: nothing it reaches may hold a lock or a loop.
    cloudpickle.dumps(_flow(deployment["entrypoint"]))


async def _saved_block_id() -> UUID:
    block_id = await OpenComputerCredentials(api_url="http://127.0.0.1:9").save("picked", overwrite=True)
    assert block_id is not None
    return block_id


@pytest.mark.parametrize("deployment", _deployments(), ids=lambda deployment: deployment["name"])
async def test_a_block_picked_in_the_run_form_passes_prefects_parameter_validation(
    deployment: dict[str, Any],
) -> None:
    # What the UI's block picker sends, validated by the Prefect API as the run form's "Validate
    # parameters" (on by default) asks it to.
    picked = {"credentials": {"$ref": {"block_document_id": str(await _saved_block_id())}}}
    flow = _flow(deployment["entrypoint"])
    async with get_client() as prefect:
        flow_id = await prefect.create_flow(flow)
        deployment_id = await prefect.create_deployment(
            flow_id=flow_id,
            name=f"form-{deployment['name']}",
            entrypoint=deployment["entrypoint"],
            parameter_openapi_schema=flow.parameters.model_dump_for_openapi(),
            enforce_parameter_schema=True,
        )
        flow_run = await prefect.create_flow_run_from_deployment(deployment_id, parameters=picked)
        await prefect.delete_flow_run(flow_run.id)

    assert flow_run.parameters == picked


def test_prefect_deployment_run_with_a_block_reference_in_params_is_accepted() -> None:
    block_id = asyncio.run(_saved_block_id())
    flow = _flow("prefect_opencomputer.flows.lifecycle.sandbox_lifecycle")
    flow_id = asyncio.run(_create_flow(flow))
    asyncio.run(_create_deployment(flow_id, flow))
    params = json.dumps({"credentials": {"$ref": {"block_document_id": str(block_id)}}})

    ran = subprocess.run(
        [PREFECT, "deployment", "run", f"{flow.name}/cli-params", "--params", params],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
    )

    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "Created flow run" in ran.stdout


async def _create_flow(flow: Flow[..., Any]) -> UUID:
    async with get_client() as prefect:
        return await prefect.create_flow(flow)


async def _create_deployment(flow_id: UUID, flow: Flow[..., Any]) -> UUID:
    async with get_client() as prefect:
        return await prefect.create_deployment(
            flow_id=flow_id,
            name="cli-params",
            entrypoint="prefect_opencomputer.flows.lifecycle.sandbox_lifecycle",
            parameter_openapi_schema=flow.parameters.model_dump_for_openapi(),
            enforce_parameter_schema=True,
        )
