"""Sandbox tags: a flat map of short strings, validated like the service does."""

from __future__ import annotations

import json
import re

from prefect_opencomputer.local.errors import Invalid

MAX_TAGS = 50
MAX_KEY_BYTES = 128
MAX_VALUE_BYTES = 256
RESERVED_PREFIX = "oc:"
_KEY = re.compile(r"^[A-Za-z0-9_.\-:]+$")


def parse_tags(body: object) -> dict[str, str]:
    """The tags of a ``PUT /tags`` body (any JSON value); raises 400 `BackendError` when invalid."""
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise Invalid("request body must be a flat { key: string } map")
    tags: dict[str, str] = {}
    for key, value in body.items():
        if not isinstance(value, str):
            raise Invalid(f"tag {_quote(key)}: value must be a string")
        tags[key] = value
    if len(tags) > MAX_TAGS:
        raise Invalid(f"max {MAX_TAGS} tags per sandbox, got {len(tags)}")
    for key in sorted(tags):
        if not 1 <= len(key.encode()) <= MAX_KEY_BYTES:
            raise Invalid(f"tag key {_quote(key)}: length must be 1..{MAX_KEY_BYTES}")
        if not _KEY.match(key):
            raise Invalid(f"tag key {_quote(key)} contains invalid characters")
        if key.startswith(RESERVED_PREFIX):
            raise Invalid(f"tag key prefix {_quote(RESERVED_PREFIX)} is reserved")
        if len(tags[key].encode()) > MAX_VALUE_BYTES:
            raise Invalid(f"tag value for {_quote(key)}: length must be <= {MAX_VALUE_BYTES}")
    return tags


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)
