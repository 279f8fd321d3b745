"""The ``prefect-opencomputer`` command."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from prefect_opencomputer._settings import (
    API_KEY_ENV,
    API_URL_ENV,
    CREDENTIALS_BLOCK_ENV,
    LOCAL_API_KEY_ENV,
    USD_PER_GB_HOUR_ENV,
)
from prefect_opencomputer.local.config import LocalServerConfig

if TYPE_CHECKING:
    from prefect_opencomputer.client import SandboxUsageItem

app = typer.Typer(
    help="Prefect integration for OpenComputer sandboxes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
local_app = typer.Typer(
    help="The OpenComputer-compatible local server: real sandboxes on this machine.",
    no_args_is_help=True,
)
app.add_typer(local_app, name="local")

# The defaults of `local serve` are the config's (a dataclass keeps each default as a class attribute);
# only the port differs, so that a server started by hand is found at a URL a person can remember.
_SERVE_DEFAULTS = LocalServerConfig
_CREDENTIALS_BLOCK_HELP = (
    f"Name of a saved OpenComputerCredentials block (default: the block named by {CREDENTIALS_BLOCK_ENV}, "
    f"else {API_KEY_ENV} and {API_URL_ENV})."
)


def default_data_dir() -> Path:
    """Where ``local serve`` keeps its state unless told otherwise (XDG data home)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "prefect-opencomputer" / "local"


@local_app.command("serve")
def local_serve(
    host: Annotated[
        str, typer.Option(help="Address to listen on; loopback keeps it private.")
    ] = _SERVE_DEFAULTS.host,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0 = a free one).")] = 8000,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where sandboxes, checkpoints and patches are kept.",
            show_default="~/.local/share/prefect-opencomputer/local",
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar=LOCAL_API_KEY_ENV,
            show_default=False,
            show_envvar=True,
            help=(
                "The key clients must send; generated and printed once when not given. Prefer the "
                "environment variable: a command line is visible to other local users in the process list."
            ),
        ),
    ] = None,
    enable_test_routes: Annotated[
        bool,
        typer.Option(
            "--enable-test-routes", help="Serve the /_test control routes (reset, stats, fault injection)."
        ),
    ] = _SERVE_DEFAULTS.enable_test_routes,
    preview_domain: Annotated[
        str, typer.Option(help="Domain of preview hostnames (default: localhost:<port>).", show_default=False)
    ] = _SERVE_DEFAULTS.preview_domain,
    egress_allow: Annotated[
        list[str] | None,
        typer.Option(
            "--egress-allow",
            help="A network (CIDR) in a special range that sandboxes may reach all the same; repeatable.",
            show_default=False,
        ),
    ] = None,
    no_limits: Annotated[
        bool,
        typer.Option(
            "--no-limits",
            help="Run without per-sandbox cgroups: memoryMB, cpuCount and process caps are not enforced, "
            "and hibernation stops processes instead of freezing them.",
        ),
    ] = False,
    max_running_sandboxes: Annotated[
        int,
        typer.Option(help="Running sandboxes allowed at once; creates past it get 429 (hosted: 50).", min=0),
    ] = _SERVE_DEFAULTS.max_running_sandboxes,
    allow_host_port: Annotated[
        list[int] | None,
        typer.Option(
            "--allow-host-port",
            min=1,
            max=65535,
            help="A port of this host's loopback that sandboxes may reach at host.opencomputer.internal "
            "(a local Prefect API); repeatable. Off by default: read docs/security.md first.",
            show_default=False,
        ),
    ] = None,
    max_disk_mb: Annotated[
        int | None,
        typer.Option(
            min=16,
            help="Cap every sandbox's disk at this many MB, whatever its diskMB (tests fill one quickly).",
            show_default=False,
        ),
    ] = _SERVE_DEFAULTS.max_disk_mb,
    warm_sandboxes: Annotated[
        int,
        typer.Option(
            min=0,
            max=16,
            help="Sandboxes of the default shape kept booted ahead of their create, so such a create "
            "takes one instead of booting (0: none).",
        ),
    ] = _SERVE_DEFAULTS.warm_sandboxes,
) -> None:
    """Serve the OpenComputer API on this machine until Ctrl-C or SIGTERM."""
    import asyncio
    import copy

    from uvicorn.config import LOGGING_CONFIG

    from prefect_opencomputer.local.config import HOST_ALIAS, new_api_key
    from prefect_opencomputer.local.sandbox.host import RuntimeUnavailable
    from prefect_opencomputer.local.serve import LocalServerError, prepare_server

    config = LocalServerConfig(
        data_dir=data_dir or default_data_dir(),
        api_key=api_key or new_api_key(),
        host=host,
        port=port,
        preview_domain=preview_domain,
        enable_test_routes=enable_test_routes,
        limits=not no_limits,
        max_running_sandboxes=max_running_sandboxes,
        egress_allow=tuple(egress_allow or ()),
        max_disk_mb=max_disk_mb,
        allow_host_ports=tuple(allow_host_port or ()),
        warm_sandboxes=warm_sandboxes,
    )
    try:
        prepared = prepare_server(
            config,
            progress=lambda line: typer.echo(line, err=True),
            access_log=True,
            log_config=copy.deepcopy(LOGGING_CONFIG),
        )
        served = prepared.config
        typer.echo(f"OpenComputer local server on {served.url} (data: {served.data_dir})")
        typer.echo(f"  {prepared.host_report}")
        for opened in served.allow_host_ports:
            typer.echo(f"  sandboxes reach this host's 127.0.0.1:{opened} at {HOST_ALIAS}:{opened}")
        typer.echo(f"  export {API_URL_ENV}={served.url}")
        if not api_key:
            # Printed once, here, for the person who started the server; never logged.
            typer.echo(f"  export {API_KEY_ENV}={served.api_key}")
        with asyncio.Runner() as runner:
            runner.run(prepared.serve())
    except (LocalServerError, RuntimeUnavailable) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@local_app.command("build-rootfs")
def local_build_rootfs(
    template: Annotated[str, typer.Option(help="Template whose root filesystem to build.")] = "default",
) -> None:
    """Build (once) the root filesystem that a template's sandboxes start from, and print where it is."""
    import asyncio

    from prefect_opencomputer.local.sandbox.rootfs import RootfsBuildError, UnknownTemplate, ensure_rootfs

    try:
        path = asyncio.run(ensure_rootfs(template, progress=typer.echo))
    except (RootfsBuildError, UnknownTemplate) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(str(path))


@app.command("demo")
def demo() -> None:
    """Run the example lifecycle flow (on the embedded local server unless credentials are configured)."""
    from prefect_opencomputer.demo import main as run_demo

    raise typer.Exit(run_demo())


@app.command("reap")
def reap(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report orphaned sandboxes, kill none.")] = False,
    credentials_block: Annotated[
        str | None,
        typer.Option(help=_CREDENTIALS_BLOCK_HELP),
    ] = None,
) -> None:
    """Kill sandboxes this integration created whose Prefect flow run has finished or no longer exists, and
    delete the checkpoints of runs that did not complete."""
    import asyncio

    from prefect_opencomputer.flows.reaper import ReaperParameters, reap_orphaned_sandboxes

    report = asyncio.run(
        reap_orphaned_sandboxes(ReaperParameters(dry_run=dry_run), credentials_block=credentials_block)
    )
    if dry_run:
        outcome = f"would kill {len(report.orphans)}, would delete {len(report.checkpoints)} checkpoint(s)"
    else:
        outcome = f"killed {len(report.killed)}, deleted {len(report.deleted_checkpoints)} checkpoint(s)"
    typer.echo(f"examined {report.examined}, kept {report.kept}, {outcome}")
    for orphan in report.orphans:
        typer.echo(f"  {orphan.sandbox_id}  flow run {orphan.flow_run_id}: {orphan.reason}")
    for kept in report.kept_sandboxes:
        typer.echo(f"  kept {kept.sandbox_id}  flow run {kept.flow_run_id}: {kept.reason}")
    for flow_run_id in report.crashed_flow_runs:
        typer.echo(f"  flow run {flow_run_id} marked Crashed: its process is gone")
    for checkpoint in report.checkpoints:
        typer.echo(
            f"  checkpoint {checkpoint.checkpoint_id} of {checkpoint.sandbox_id}  flow run "
            f"{checkpoint.flow_run_id}: {checkpoint.reason}"
        )


@app.command("usage")
def usage(
    flow_run: Annotated[
        str | None,
        typer.Option(
            help="A flow run id: the sandboxes it created (tagged prefect.flow_run_id).", show_default=False
        ),
    ] = None,
    day: Annotated[
        str | None,
        typer.Option(
            help="A UTC day, YYYY-MM-DD: every sandbox's usage that day (default: today).", show_default=False
        ),
    ] = None,
    credentials_block: Annotated[
        str | None,
        typer.Option(help=_CREDENTIALS_BLOCK_HELP),
    ] = None,
) -> None:
    """Print a flow run's or a day's sandbox usage as a table: memory GiB-seconds and an estimated cost."""
    import asyncio
    from datetime import UTC, date, timedelta

    from prefect_opencomputer.client import OpenComputerError
    from prefect_opencomputer.tasks.cost import usd_per_gb_hour
    from prefect_opencomputer.tasks.ownership import TAG_FLOW_RUN

    if flow_run is not None and day is not None:
        raise typer.BadParameter("give --flow-run or --day, not both")
    try:
        rate = usd_per_gb_hour()
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    try:
        start = datetime.combine(date.fromisoformat(day), datetime.min.time(), UTC) if day else None
    except ValueError:
        raise typer.BadParameter(f"--day must be a date, YYYY-MM-DD, not {day!r}") from None
    if flow_run is None and start is None:
        start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    end = None if start is None else min(start + timedelta(days=1), datetime.now(UTC))
    tags = {TAG_FLOW_RUN: flow_run} if flow_run else None
    try:
        items = asyncio.run(_usage_items(credentials_block, tags, start, end))
    except OpenComputerError as error:
        typer.echo(f"Could not read usage: {error}", err=True)
        raise typer.Exit(1) from None
    what = f"flow run {flow_run} (last 30 days)" if flow_run else f"{start:%Y-%m-%d} (UTC)"
    _print_usage_table(what, items, rate)


async def _usage_items(
    credentials_block: str | None, tags: dict[str, str] | None, start: datetime | None, end: datetime | None
) -> list[SandboxUsageItem]:
    from prefect_opencomputer.blocks.credentials import aload_credentials

    credentials = await aload_credentials(credentials_block)
    async with credentials.get_client() as client:
        return await client.usage.all_by_sandbox(from_=start, to=end, tags=tags)


def _print_usage_table(what: str, items: list[SandboxUsageItem], rate: float) -> None:
    from rich.console import Console
    from rich.table import Table

    from prefect_opencomputer.tasks.ownership import TAG_FLOW_RUN

    table = Table(title=f"Sandbox usage of {what}", title_justify="left")
    for column in ("sandbox", "status", "flow run"):
        table.add_column(column)
    for column in ("memory GiB-s", "cost USD (estimate)"):
        table.add_column(column, justify="right")
    for item in items:
        table.add_row(
            item.sandbox_id,
            item.status or "",
            item.tags.get(TAG_FLOW_RUN, ""),
            f"{item.memory_gb_seconds:.1f}",
            f"{item.memory_gb_seconds / 3600 * rate:.4f}",
        )
    total = sum(item.memory_gb_seconds for item in items)
    table.add_section()
    table.add_row(f"total: {len(items)}", "", "", f"{total:.1f}", f"{total / 3600 * rate:.4f}")
    console = Console(width=max(120, Console().width))
    console.print(table)
    console.print(
        f"Estimate at ${rate:.3f} per GB-hour ({USD_PER_GB_HOUR_ENV}), as the service meters memory."
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
