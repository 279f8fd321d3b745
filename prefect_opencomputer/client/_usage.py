"""Usage routes: memory GiB-seconds by sandbox and by tag value, and one sandbox's 1-minute points."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from prefect_opencomputer.client._models import SandboxUsage, SandboxUsageItem, UsageBySandbox, UsageByTag
from prefect_opencomputer.client._transport import Transport

# A time bound: an aware datetime, or the string the service reads (an ISO date or RFC3339).
TimeBound = datetime | str


class Usage:
    """`client.usage`: what sandboxes consumed, as the service meters it (about a minute behind)."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    async def by_sandbox(
        self,
        *,
        from_: TimeBound | None = None,
        to: TimeBound | None = None,
        tags: Mapping[str, str] | None = None,
        sort: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> UsageBySandbox:
        """One page of sandboxes, largest first (default window: the last 30 days).

        `tags` keeps sandboxes whose tag `key` has one of the comma-separated values (empty: lacks `key`).
        """
        params = _params("sandbox", from_, to, tags, sort, limit, cursor)
        response = await self._transport.request("GET", "/usage", params=params)
        return UsageBySandbox.model_validate(response.json())

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

    async def by_tag(
        self,
        tag_key: str,
        *,
        from_: TimeBound | None = None,
        to: TimeBound | None = None,
        tags: Mapping[str, str] | None = None,
        sort: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> UsageByTag:
        """One page of the values of `tag_key`, largest first; sandboxes lacking it are `untagged`."""
        params = _params(f"tag:{tag_key}", from_, to, tags, sort, limit, cursor)
        response = await self._transport.request("GET", "/usage", params=params)
        return UsageByTag.model_validate(response.json())

    async def for_sandbox(
        self, sandbox_id: str, *, from_: TimeBound | None = None, to: TimeBound | None = None
    ) -> SandboxUsage:
        """Its 1-minute points and totals (default window: the last hour; at most 30 days)."""
        params = _params(None, from_, to, None, None, None, None)
        response = await self._transport.request("GET", f"/sandboxes/{sandbox_id}/usage", params=params)
        return SandboxUsage.model_validate(response.json())


def _bound(value: TimeBound) -> str:
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError(f"usage time bounds need a time zone: {value!r} has none")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _params(
    group_by: str | None,
    from_: TimeBound | None,
    to: TimeBound | None,
    tags: Mapping[str, str] | None,
    sort: str | None,
    limit: int | None,
    cursor: str | None,
) -> dict[str, str | int]:
    params: dict[str, str | int] = {}
    if group_by is not None:
        params["groupBy"] = group_by
    if from_ is not None:
        params["from"] = _bound(from_)
    if to is not None:
        params["to"] = _bound(to)
    if sort is not None:
        params["sort"] = sort
    if limit is not None:
        params["limit"] = limit
    if cursor is not None:
        params["cursor"] = cursor
    for key, values in (tags or {}).items():
        params[f"filter[tag:{key}]"] = values
    return params
