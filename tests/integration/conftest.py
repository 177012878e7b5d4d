"""Fixtures the integration tests share (the emulator and ``stack`` are tests/conftest.py's)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from alfred_tools.fidelity import FidelityProxy
from tests.chaos.support import allow_receives
from tests.support.stack import Stack, make_stack


@pytest.fixture
def faithful_stack(faithful: tuple[dict[str, str], FidelityProxy]) -> Iterator[Stack]:
    """Fresh tables and queues on the faithful proxy (AWS's semantics), for real processes.

    Not named ``stack``: that is the plain emulator's, which every other test here keeps. The
    modules that run on this one name it ``stack`` for their tests (test_guarantees, test_timeline).
    """
    env, proxy = faithful
    try:
        # Leases of 20 s, not the suite's 2 s: on a busy machine a renewal can be late by seconds,
        # and a lapsed lease is a takeover no test here means to make. The tests that are about a
        # lease lapsing give that one worker a short lease.
        with make_stack(env, ALFRED_LEASE_SECONDS="20") as s:
            # A lost delete (AWS's at-least-once, which the proxy plays) brings a message back after
            # the queue's visibility timeout: 720 s in the template, 3 s here so that the no-op
            # redelivery (the job is over: acked again) happens within a test that waits for the
            # queue to drain. Receives stay well under the raised maxReceiveCount.
            allow_receives(s, 10, visibility_timeout=3)
            yield s
    finally:
        proxy.clear_script()
