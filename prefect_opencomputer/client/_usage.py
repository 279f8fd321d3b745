"""Usage routes: memory GiB-seconds by sandbox and by tag value, and one sandbox's 1-minute points."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TypedDict, Unpack

from prefect_opencomputer.client._models import SandboxUsage, SandboxUsageItem, UsageBySandbox, UsageByTag
from prefect_opencomputer.client._transport import RouteGroup

# A time bound: an aware datetime, or the string the service reads (an ISO date or RFC3339).
TimeBound = datetime | str


class UsageQuery(TypedDict, total=False):
    """What a usage page asks for: its time window, a tag filter, its order and the page."""

    from_: TimeBound | None
    to: TimeBound | None
    tags: Mapping[str, str] | None
    sort: str | None
    limit: int | None
    cursor: str | None


class Usage(RouteGroup):
    """`client.usage`: what sandboxes consumed, as the service meters it (about a minute behind)."""

    async def by_sandbox(self, **query: Unpack[UsageQuery]) -> UsageBySandbox:
        """One page of sandboxes, largest first (default window: the last 30 days).

        `tags` keeps sandboxes whose tag `key` has one of the comma-separated values (empty: lacks `key`).
        """
        return UsageBySandbox.model_validate(await self._get("/usage", "sandbox", query))

    async def all_by_sandbox(
        self,
        *,
        from_: TimeBound | None = None,
        to: TimeBound | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> list[SandboxUsageItem]:
        """Every matching sandbox, page after page."""
        items: list[SandboxUsageItem] = []
        cursor: str | None = None
        while True:
            page = await self.by_sandbox(from_=from_, to=to, tags=tags, limit=500, cursor=cursor)
            items.extend(page.items)
            if not page.next_cursor or not page.items:
                return items
            cursor = page.next_cursor

    async def by_tag(self, tag_key: str, **query: Unpack[UsageQuery]) -> UsageByTag:
        """One page of the values of `tag_key`, largest first; sandboxes lacking it are `untagged`."""
        return UsageByTag.model_validate(await self._get("/usage", f"tag:{tag_key}", query))

    async def for_sandbox(
        self, sandbox_id: str, *, from_: TimeBound | None = None, to: TimeBound | None = None
    ) -> SandboxUsage:
        """Its 1-minute points and totals (default window: the last hour; at most 30 days)."""
        window: UsageQuery = {"from_": from_, "to": to}
        return SandboxUsage.model_validate(await self._get(f"/sandboxes/{sandbox_id}/usage", None, window))

    async def _get(self, path: str, group_by: str | None, query: UsageQuery) -> object:
        response = await self._transport.request("GET", path, params=_params(group_by, query))
        return response.json()


def _bound(value: TimeBound) -> str:
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError(f"usage time bounds need a time zone: {value!r} has none")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _params(group_by: str | None, query: UsageQuery) -> dict[str, str | int]:
    """The query string of a usage route: unset options are left out, time bounds in UTC, tag filters."""
    params: dict[str, str | int] = {} if group_by is None else {"groupBy": group_by}
    options: Mapping[str, object] = query
    for name, wire in (("from_", "from"), ("to", "to")):
        if isinstance(bound := options.get(name), datetime | str):
            params[wire] = _bound(bound)
    for name in ("sort", "limit", "cursor"):
        if isinstance(value := options.get(name), str | int):
            params[name] = value
    for key, values in (query.get("tags") or {}).items():
        params[f"filter[tag:{key}]"] = values
    return params
