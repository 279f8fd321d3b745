"""`SyncOpenComputerClient`: the async client, usable from plain `def` code.

Each namespace (`client.sandboxes`, `client.exec`, ...) lists the async namespace's methods once, as
`blocking(Sandboxes.list)`: the sync method keeps the async one's signature and return type, and runs it on
the package's one sync bridge. `client.sandboxes.list()` returns what `await oc.sandboxes.list()` would.
Streaming calls (exec `attach`/`stream`, build logs) are for the async client.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, Generic, Self, TypeVar, overload

from typing_extensions import ParamSpec

from prefect_opencomputer._sync import run_sync
from prefect_opencomputer.client import (
    Checkpoints,
    Exec,
    Files,
    OpenComputerClient,
    Patches,
    Previews,
    Sandboxes,
    Snapshots,
    Usage,
)

N = TypeVar("N")
P = ParamSpec("P")
R = TypeVar("R")


class _SyncNamespace(Generic[N]):
    def __init__(self, namespace: N) -> None:
        self._namespace = namespace


class blocking(Generic[N, P, R]):
    """A namespace's coroutine method, as a blocking method with the same parameters and result."""

    def __init__(self, method: Callable[Concatenate[N, P], Coroutine[Any, Any, R]]) -> None:
        self._method = method
        self.__doc__ = method.__doc__

    @overload
    def __get__(self, instance: None, owner: type[object]) -> Self: ...

    @overload
    def __get__(self, instance: _SyncNamespace[N], owner: type[object]) -> Callable[P, R]: ...

    def __get__(self, instance: _SyncNamespace[N] | None, owner: type[object]) -> Self | Callable[P, R]:
        if instance is None:
            return self
        namespace = instance._namespace
        method = self._method

        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            return run_sync(method(namespace, *args, **kwargs))

        call.__doc__ = method.__doc__
        return call


class SyncSandboxes(_SyncNamespace[Sandboxes]):
    create = blocking(Sandboxes.create)
    get = blocking(Sandboxes.get)
    list = blocking(Sandboxes.list)
    is_running = blocking(Sandboxes.is_running)
    kill = blocking(Sandboxes.kill)
    set_timeout = blocking(Sandboxes.set_timeout)
    hibernate = blocking(Sandboxes.hibernate)
    wake = blocking(Sandboxes.wake)
    get_tags = blocking(Sandboxes.get_tags)
    set_tags = blocking(Sandboxes.set_tags)
    tag_keys = blocking(Sandboxes.tag_keys)


class SyncExec(_SyncNamespace[Exec]):
    run = blocking(Exec.run)
    run_async = blocking(Exec.run_async)
    result = blocking(Exec.result)
    start = blocking(Exec.start)
    list = blocking(Exec.list)
    kill = blocking(Exec.kill)


class SyncFiles(_SyncNamespace[Files]):
    read = blocking(Files.read)
    read_text = blocking(Files.read_text)
    write = blocking(Files.write)
    list = blocking(Files.list)
    exists = blocking(Files.exists)
    mkdir = blocking(Files.mkdir)
    delete = blocking(Files.delete)
    download_url = blocking(Files.download_url)
    upload_url = blocking(Files.upload_url)


class SyncCheckpoints(_SyncNamespace[Checkpoints]):
    create = blocking(Checkpoints.create)
    list = blocking(Checkpoints.list)
    wait_ready = blocking(Checkpoints.wait_ready)
    restore = blocking(Checkpoints.restore)
    delete = blocking(Checkpoints.delete)
    fork = blocking(Checkpoints.fork)


class SyncPatches(_SyncNamespace[Patches]):
    create = blocking(Patches.create)
    list = blocking(Patches.list)
    delete = blocking(Patches.delete)


class SyncPreviews(_SyncNamespace[Previews]):
    create = blocking(Previews.create)
    list = blocking(Previews.list)
    delete = blocking(Previews.delete)
    rotate_token = blocking(Previews.rotate_token)


class SyncSnapshots(_SyncNamespace[Snapshots]):
    create = blocking(Snapshots.create)
    list = blocking(Snapshots.list)
    get = blocking(Snapshots.get)
    delete = blocking(Snapshots.delete)
    wait_ready = blocking(Snapshots.wait_ready)


class SyncUsage(_SyncNamespace[Usage]):
    by_sandbox = blocking(Usage.by_sandbox)
    all_by_sandbox = blocking(Usage.all_by_sandbox)
    by_tag = blocking(Usage.by_tag)
    for_sandbox = blocking(Usage.for_sandbox)


class SyncOpenComputerClient:
    """`with credentials.get_sync_client() as client: client.sandboxes.list()`: the async client's calls,
    blocking."""

    def __init__(self, make_client: Callable[[], OpenComputerClient]) -> None:
        # Made on the bridge loop: the client's connection pool belongs to the loop that uses it.
        self._client = run_sync(_build(make_client))
        self._closed = False
        self.sandboxes = SyncSandboxes(self._client.sandboxes)
        self.exec = SyncExec(self._client.exec)
        self.files = SyncFiles(self._client.files)
        self.checkpoints = SyncCheckpoints(self._client.checkpoints)
        self.patches = SyncPatches(self._client.patches)
        self.previews = SyncPreviews(self._client.previews)
        self.snapshots = SyncSnapshots(self._client.snapshots)
        self.usage = SyncUsage(self._client.usage)

    @property
    def api_base(self) -> str:
        """The base URL every route hangs off, ending in `/api`."""
        return self._client.api_base

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        run_sync(self._client.aclose())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


async def _build(make_client: Callable[[], OpenComputerClient]) -> OpenComputerClient:
    return make_client()
