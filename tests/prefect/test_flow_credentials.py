"""Example flows take the credentials block as a parameter; hooks in another process find it by reference."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any
from uuid import uuid4

from prefect.client.schemas.objects import FlowRun
from pydantic import SecretStr

from prefect_opencomputer.blocks import OpenComputerCredentials
from prefect_opencomputer.flows import sandbox_lifecycle
from prefect_opencomputer.tasks.cleanup import credentials_of_run

FLOWS = Path(__file__).resolve().parents[2] / "prefect_opencomputer" / "flows"


async def test_lifecycle_runs_with_a_block_given_as_its_credentials_parameter(
    local_server: Any, control: Any, monkeypatch: Any
) -> None:
    block = OpenComputerCredentials(api_key=SecretStr(local_server.api_key), api_url=local_server.url)
    await block.save("lifecycle-parameter", overwrite=True)
    monkeypatch.delenv("OPENCOMPUTER_API_KEY")  # only the block can reach the server

    report = await sandbox_lifecycle(credentials=await OpenComputerCredentials.aload("lifecycle-parameter"))

    assert report.sandboxes_left == 0 and "applied by the checkpoint patch" in report.fork_output
    assert await control.live_sandboxes() == 0


async def test_a_hook_in_another_process_loads_the_block_a_deployment_run_references(
    local_server: Any,
) -> None:
    block = OpenComputerCredentials(api_key=SecretStr(local_server.api_key), api_url=local_server.url)
    document_id = await block.save("by-reference", overwrite=True)
    # How a deployment run stores a block parameter: a reference, never the key.
    run = FlowRun(
        id=uuid4(),
        flow_id=uuid4(),
        parameters={"credentials": {"$ref": {"block_document_id": str(document_id)}}},
    )

    found = await credentials_of_run(run)

    assert found.api_key is not None and found.api_key.get_secret_value() == local_server.api_key
    assert found.api_url == local_server.url


def test_flows_import_only_the_public_surface() -> None:
    public = {
        "prefect_opencomputer.blocks",
        "prefect_opencomputer.client",
        "prefect_opencomputer.tasks",
        "prefect_opencomputer.worker",
        "prefect_opencomputer.flows.accounting",
    }
    for module in FLOWS.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prefect_opencomputer"):
                assert node.module in public or node.module.startswith("prefect_opencomputer.flows"), (
                    f"{module.name} imports {node.module}"
                )
