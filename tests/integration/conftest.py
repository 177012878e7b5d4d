"""Fixtures the integration tests share (the emulator and ``stack`` are tests/conftest.py's)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from alfred_tools.fidelity import FidelityProxy
from tests.chaos.support import on_the_faithful_proxy
from tests.support.stack import Stack


@pytest.fixture
def faithful_stack(faithful: tuple[dict[str, str], FidelityProxy]) -> Iterator[Stack]:
    """The faithful proxy's stack for real processes.

    Not named ``stack``: that is the plain emulator's, which every other test here keeps. The
    modules that run on this one name it ``stack`` for their tests (test_guarantees, test_timeline).
    Leases of 20 s, not the suite's 2 s: on a busy machine a renewal can be late by seconds, and a
    lapsed lease is a takeover no test here means to make. The tests that are about a lease
    lapsing give that one worker a short lease.
    """
    with on_the_faithful_proxy(faithful, ALFRED_LEASE_SECONDS="20") as s:
        yield s
