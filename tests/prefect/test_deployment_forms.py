"""What a person sees in the deployment run form: every default, lists included, and a block picker."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect import Flow

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
