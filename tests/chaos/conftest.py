"""The chaos suite (marker ``chaos``, declared in pyproject.toml): the fault injector's tests and the
real-process smoke test (docs/testing.md, "Chaos"; the simulator carries chaos at scale).

The proving ground runs on AWS's semantics: every ``stack`` here sits behind the faithful proxy
(stale eventually consistent reads, late TTL, ambiguous writes, throttles, duplicate deliveries),
whatever ``ALFRED_FIDELITY`` says for the rest of the suite.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from alfred_tools.fidelity import FidelityProxy
from tests.support.stack import Stack, make_stack


@pytest.fixture
def stack(faithful: tuple[dict[str, str], FidelityProxy]) -> Iterator[Stack]:
    env, proxy = faithful
    try:
        with make_stack(env) as s:
            yield s
    finally:
        proxy.clear_script()
