"""Every flow run that touched a sandbox publishes its report under a key, saying what became of each."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from prefect import flow
from prefect.context import get_run_context

from prefect_opencomputer.client import OpenComputerClient
from prefect_opencomputer.tasks import (
    create_preview_url,
    create_sandbox,
    hibernate_sandbox,
    open_sandbox,
    run_command,
)


async def test_a_users_flow_publishes_its_report_keyed_with_what_became_of_each_sandbox(
    control: Any, records: Any, oc: OpenComputerClient
) -> None:
    @flow(name="Nightly build")
    def nightly_build() -> dict[str, str]:
        with open_sandbox() as scoped:
            run_command(scoped, "echo built")
        slept = create_sandbox()
        hibernate_sandbox(slept)
        kept = create_sandbox()
        create_preview_url(kept, 8000)
        return {
            "flow_run_id": str(get_run_context().flow_run.id),  # type: ignore[union-attr]
            "scoped": scoped.sandbox_id,
            "slept": slept.sandbox_id,
            "kept": kept.sandbox_id,
        }

    out = await asyncio.to_thread(nightly_build)
    try:
        artifacts = {artifact.key: artifact for artifact in await records.artifacts(out["flow_run_id"])}
    finally:
        for sandbox_id in (out["slept"], out["kept"]):
            await oc.sandboxes.kill(sandbox_id)

    # Filed under the flow's key (the Artifacts page lists it, a version per run), no call needed.
    report = artifacts["opencomputer-nightly-build"]
    assert report.type == "table"
    rows = json.loads(report.data) if isinstance(report.data, str) else report.data
    outcomes = {row["sandbox"]: row["outcome"] for row in rows if row["kind"] == "sandbox"}
    assert outcomes == {out["scoped"]: "killed", out["slept"]: "hibernated", out["kept"]: "left running"}
    assert any(row["kind"] == "command" and row["subject"] == "echo built" for row in rows)
    # The preview URL is a link artifact of its own key.
    link = artifacts[f"preview-{out['kept']}-8000"]
    assert f"{out['kept']}-p8000" in str(link.data) and str(link.data).startswith("[")
