"""Test support: fresh resources per test on the session's emulator, real worker processes.

The stack is the one local stack (``alfred_tools.localstack.LocalStack``, as ``dev`` and the bench
use it): settings and clients built from an explicit environment, nothing written to ``os.environ``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from alfred_tools.localstack import LocalStack, resource_env, wait_until

__all__ = ["FAST", "Stack", "make_stack", "resource_env", "wait_until"]

FAST = {
    "ALFRED_DEMO_STEP_SECONDS": "0.05",
    "ALFRED_LEASE_SECONDS": "2",
    "ALFRED_SWEEP_SECONDS": "0.5",
    "ALFRED_PENDING_GRACE_SECONDS": "2",
    "ALFRED_RETRY_BASE_SECONDS": "1",
    "ALFRED_CANCEL_POLL_SECONDS": "0.1",
}

Stack = LocalStack  # resources of one test on the shared emulator, its clients, ports and processes


@contextmanager
def make_stack(base_env: Mapping[str, str], **overrides: str) -> Iterator[Stack]:
    """Fresh tables and queues (unique names) on the emulator ``base_env`` points at, with the fast
    durability knobs; stops the test's processes on exit. Never starts an emulator of its own."""
    env = {**os.environ, **base_env, **FAST, **resource_env(f"t{uuid.uuid4().hex[:10]}"), **overrides}
    with LocalStack.from_env(env).running(emulator=False) as stack:
        yield stack
