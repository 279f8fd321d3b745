"""Checkpoint patch routes: scripts that run, in order, in every sandbox forked from a checkpoint."""

from __future__ import annotations

import builtins

from prefect_opencomputer.client._models import CheckpointPatch
from prefect_opencomputer.client._transport import RouteGroup


class Patches(RouteGroup):
    """`client.patches`: the patch chain of a checkpoint."""

    async def create(self, checkpoint_id: str, script: str, description: str = "") -> CheckpointPatch:
        """Append a bash script to a ready checkpoint's chain; it runs as user `sandbox` on each fork.

        Never replayed once it may have reached the service: a replay would append the script twice.
        """
        response = await self._transport.request(
            "POST",
            f"/sandboxes/checkpoints/{checkpoint_id}/patches",
            json={"script": script, "description": description},
        )
        payload = response.json()
        # The service wraps the created patch, {"patch": {...}}, unlike the list route.
        if isinstance(payload, dict) and isinstance(payload.get("patch"), dict):
            payload = payload["patch"]
        return CheckpointPatch.model_validate(payload)

    async def list(self, checkpoint_id: str) -> builtins.list[CheckpointPatch]:
        """The checkpoint's patches in the order they run (by `sequence`)."""
        response = await self._transport.request("GET", f"/sandboxes/checkpoints/{checkpoint_id}/patches")
        patches = [CheckpointPatch.model_validate(item) for item in response.json() or []]
        return sorted(patches, key=lambda patch: patch.sequence)

    async def delete(self, checkpoint_id: str, patch_id: str) -> None:
        await self._transport.request("DELETE", f"/sandboxes/checkpoints/{checkpoint_id}/patches/{patch_id}")
