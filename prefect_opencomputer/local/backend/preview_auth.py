"""The bearer-token gate on preview URLs: tokens are handed out once and only their hash is kept."""

from __future__ import annotations

import hashlib
import hmac

from prefect_opencomputer.local.backend.records import new_token
from prefect_opencomputer.local.errors import Invalid

SCHEME = "bearer"
MIN_TOKEN_LENGTH = 16


def issue(scheme: str, token: str) -> tuple[str, str]:
    """Validate a ``previewAuth`` request; returns ``(plaintext token, its hash)``."""
    scheme = scheme or SCHEME
    if scheme != SCHEME:
        raise Invalid(f'previewAuth.scheme must be "{SCHEME}" (got "{scheme}")')
    if token in ("", "auto"):
        token = new_token()
    elif len(token) < MIN_TOKEN_LENGTH:
        raise Invalid('previewAuth.token must be omitted, "auto", or a string of at least 16 characters')
    return token, digest(token)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def matches(stored_digest: str, presented: str | None) -> bool:
    """Constant-time check of a presented token against the stored hash."""
    if not presented:
        return False
    return hmac.compare_digest(stored_digest, digest(presented))
