"""Opaque, signed pagination cursors: a client can hand one back, never forge or edit one."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from alfred_jobs.exceptions import InvalidInput

MAX_CURSOR_CHARS = 1024


def encode_cursor(secret: str, user_id: str, key: dict[str, Any]) -> str:
    payload = json.dumps(key, separators=(",", ":"), sort_keys=True).encode()
    mac = hmac.new(secret.encode(), user_id.encode() + b"\0" + payload, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac + payload).decode().rstrip("=")


def decode_cursor(secret: str, user_id: str, cursor: str) -> dict[str, Any]:
    """The store key inside a cursor this service issued to this user; ``InvalidInput`` otherwise."""
    if not cursor or len(cursor) > MAX_CURSOR_CHARS:
        raise InvalidInput("malformed cursor", code="invalid_cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (ValueError, TypeError):
        raise InvalidInput("malformed cursor", code="invalid_cursor") from None
    mac, payload = raw[:16], raw[16:]
    want = hmac.new(secret.encode(), user_id.encode() + b"\0" + payload, hashlib.sha256).digest()[:16]
    if len(mac) != 16 or not hmac.compare_digest(mac, want):
        raise InvalidInput("malformed cursor", code="invalid_cursor")
    try:
        key = json.loads(payload)
    except ValueError:
        raise InvalidInput("malformed cursor", code="invalid_cursor") from None
    if not isinstance(key, dict):
        raise InvalidInput("malformed cursor", code="invalid_cursor")
    return key
