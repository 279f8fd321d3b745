"""After the example flows ran, the OpenComputer API key is nowhere in what Prefect stored."""

from __future__ import annotations

import base64
import pickle
from pathlib import Path
from typing import Any

import cloudpickle  # type: ignore[import-untyped]
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventOccurredFilter
from prefect.filesystems import LocalFileSystem
from prefect.settings import PREFECT_HOME, PREFECT_SERVER_DATABASE_CONNECTION_URL
from prefect.types._datetime import now
from pydantic import SecretStr

from prefect_opencomputer.blocks import OpenComputerCredentials
from prefect_opencomputer.client import Sandbox
from prefect_opencomputer.flows import (
    FanOutParameters,
    LifecycleParameters,
    checkpoint_fan_out,
    reap_orphaned_sandboxes,
    sandbox_lifecycle,
)
from prefect_opencomputer.tasks import create_sandbox, kill_sandbox, open_sandbox, run_command


async def _everything_prefect_stored(since: Any) -> list[str]:
    texts: list[str] = []
    async with get_client() as prefect:
        offset = 0
        while logs := await prefect.read_logs(limit=200, offset=offset):
            texts += [log.message for log in logs]
            offset += len(logs)
        texts += [artifact.model_dump_json() for artifact in await prefect.read_artifacts()]
        texts += [flow_run.model_dump_json() for flow_run in await prefect.read_flow_runs()]
        texts += [task_run.model_dump_json() for task_run in await prefect.read_task_runs()]
        page = await prefect.read_events(EventFilter(occurred=EventOccurredFilter(since=since)), limit=50)
        texts += [event.model_dump_json() for event in page.events]
        while page.next_page:
            page = await prefect.read_events_page(str(page.next_page))
            texts += [event.model_dump_json() for event in page.events]
        texts += [variable.model_dump_json() for variable in await prefect.read_variables()]
        blocks = await prefect.read_block_documents(include_secrets=False)
        texts += [block.model_dump_json() for block in blocks]
    return texts


def _files_under(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()]


async def test_api_key_appears_in_no_log_artifact_event_parameter_or_result(
    local_server: Any, control: Any, credentials: OpenComputerCredentials
) -> None:
    key = local_server.api_key
    since = now("UTC")
    await OpenComputerCredentials(api_key=SecretStr(key), api_url=local_server.url).save(
        "secret-scan", overwrite=True
    )

    # The example flows, with environment credentials and with a saved block.
    assert (await sandbox_lifecycle(return_state=True)).is_completed()
    assert (
        await sandbox_lifecycle(LifecycleParameters(), credentials_block="secret-scan")
    ).sandboxes_left == 0
    assert (await checkpoint_fan_out(FanOutParameters(forks=2), credentials_block="secret-scan")).outcomes
    failed = await sandbox_lifecycle(LifecycleParameters(fork_command="exit 9"), return_state=True)
    assert failed.is_failed()

    # A user flow that takes the block itself as a parameter, logs a command that prints the environment.
    @flow
    async def block_as_parameter(credentials: OpenComputerCredentials) -> str:
        await create_sandbox(credentials=credentials)
        async with open_sandbox(credentials=credentials) as sandbox:
            result = await run_command(sandbox, "env; echo done", credentials=credentials)
        return result.stdout

    await block_as_parameter(credentials)
    await reap_orphaned_sandboxes()
    assert await control.live_sandboxes() == 0

    texts = await _everything_prefect_stored(since)
    # The scan sees what the runs wrote (command output in logs, sandbox ids in events and artifacts).
    assert any("applied by the checkpoint patch" in text for text in texts)
    assert any("opencomputer.sandbox.created" in text for text in texts)
    leaks = [text[:200] for text in texts if key in text]
    assert leaks == []

    # Prefect's own files (results, the database, its home) hold it nowhere in clear text.
    database = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split("///", 1)[1])
    paths = [database, *_files_under(PREFECT_HOME.value())]
    for path in paths:
        if path.exists():
            assert key.encode() not in path.read_bytes(), path


def test_sandbox_tokens_stay_out_of_a_pickled_result_store(
    control: Any, sync_live_sandboxes: Any, tmp_path: Path
) -> None:
    # Prefect's default result serializer is pickle: a flow that returns its sandbox persists it so.
    tokens: list[str] = []
    store = LocalFileSystem(basepath=str(tmp_path / "results"))
    store.save("pickled-results", overwrite=True)

    @flow(persist_result=True, result_storage=store, result_serializer="pickle")
    def returns_its_sandboxes() -> list[Sandbox]:
        sandbox = create_sandbox()
        with OpenComputerCredentials().get_sync_client() as client:
            gated = client.sandboxes.create(timeout=60, preview_auth={"token": "auto"})
            client.sandboxes.kill(gated.sandbox_id)
        assert sandbox.token is not None and gated.preview_auth_token is not None
        tokens.extend([sandbox.token.get_secret_value(), gated.preview_auth_token.get_secret_value()])
        kill_sandbox(sandbox)
        return [sandbox, gated]

    assert returns_its_sandboxes(return_state=True).is_completed()

    written = _files_under(tmp_path / "results")
    assert written, "the flow's result was not persisted"
    for path in written:
        pickled = base64.b64decode(path.read_bytes())  # the pickle serializer's bytes, base64-encoded
        assert not any(token.encode() in pickled for token in tokens), path
        stored = pickle.loads(pickled)
        assert [sandbox.sandbox_id[:3] for sandbox in stored] == ["sb-", "sb-"]
        assert all(sandbox.token is None and sandbox.preview_auth_token is None for sandbox in stored)
        # cloudpickle, which Prefect uses to ship values to other processes, leaves them out too.
        assert not any(token.encode() in cloudpickle.dumps(stored) for token in tokens)
    assert sync_live_sandboxes() == 0
