"""The shapes of ids the API accepts, in one place (the API, the worker and the models use them)."""

from __future__ import annotations

import re

JOB_ID_PATTERN = r"^[0-9a-f]{32}$"  # uuid4 hex, or the first 32 hex digits of sha256(user, key)
CONVERSATION_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
JOB_ID_RE = re.compile(JOB_ID_PATTERN)
CONVERSATION_ID_RE = re.compile(CONVERSATION_ID_PATTERN)
