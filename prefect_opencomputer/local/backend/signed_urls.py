"""Signed file URLs: anyone holding one may download or upload one path until it expires.

The signature is HMAC-SHA256 over the same canonical string the service signs, keyed with a
secret this server generates once and keeps in its state (so URLs survive a restart).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import time
from typing import Literal

from prefect_opencomputer.local.errors import Forbidden, Invalid

Operation = Literal["download", "upload"]
DEFAULT_EXPIRY_SECONDS = 3600
MAX_EXPIRY_SECONDS = 86400


class UrlSigner:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def __repr__(self) -> str:
        return "UrlSigner(secret='***')"

    def sign(self, sandbox_id: str, path: str, operation: Operation, expires: int) -> str:
        payload = f"opensandbox-signed-url\n{sandbox_id}\n{path}\n{operation}\n{expires}"
        return hmac.new(self._secret, payload.encode(), hashlib.sha256).hexdigest()

    def verify(self, sandbox_id: str, path: str, operation: Operation, expires: str, signature: str) -> None:
        """Raise a 400/403 `BackendError` unless the URL is complete, unexpired and genuine."""
        if not path or not expires or not signature:
            raise Invalid("path, expires, and signature are required")
        try:
            expires_at = int(expires)
        except ValueError:
            raise Invalid(f"invalid expiration: cannot parse {expires!r} as an integer") from None
        if time.time() > expires_at:
            raise Forbidden("signed URL expired")
        try:
            presented = binascii.unhexlify(signature)
        except (binascii.Error, ValueError):
            raise Forbidden("invalid signature encoding") from None
        expected = bytes.fromhex(self.sign(sandbox_id, path, operation, expires_at))
        if not hmac.compare_digest(presented, expected):
            raise Forbidden("invalid signature")


def expiry_seconds(requested: int) -> int:
    """``expiresIn`` as the service applies it: unset means an hour, at most a day."""
    if requested <= 0:
        return DEFAULT_EXPIRY_SECONDS
    return min(requested, MAX_EXPIRY_SECONDS)
