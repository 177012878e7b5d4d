"""Test session set-up: one moto server process for the integration tests (or an external target).

Target selection (see docs/testing.md):
- default: a moto server started here, over HTTP;
- ALFRED_TEST_TARGET=external: use the endpoint variables already set (AWS_ENDPOINT_URL,
  AWS_ENDPOINT_URL_DYNAMODB, AWS_ENDPOINT_URL_SQS) — LocalStack, a mixed set-up, or real AWS.

Faithful mode (alfred_tools.fidelity): ALFRED_FIDELITY=aws puts the fidelity proxy with the ``aws``
profile (or $ALFRED_FIDELITY_SPEC) in front of the session's moto server, for the whole suite.
The ``faithful`` fixture is such a pair on a moto server of its own, whatever the switch says.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from alfred_tools.emulator import emulator_env, start_moto_server
from alfred_tools.fidelity import FidelityProxy
from tests.support.fidelity import faithful_emulator, fidelity_switch
from tests.support.stack import Stack, make_stack


@pytest.fixture(scope="session")
def emulator() -> Iterator[dict[str, str]]:
    """Environment pointing at the emulator for the whole session."""
    if os.environ.get("ALFRED_TEST_TARGET") == "external":
        yield {"AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
        return
    spec = fidelity_switch()
    if spec is not None:
        with faithful_emulator(spec) as (env, _proxy):
            yield env
        return
    server = start_moto_server()
    try:
        yield emulator_env(server.endpoint)
    finally:
        server.stop()


@pytest.fixture
def stack(emulator: dict[str, str]) -> Iterator[Stack]:
    """Fresh tables and queues for one test on the shared emulator."""
    with make_stack(emulator) as s:
        yield s


@pytest.fixture(scope="session")
def faithful() -> Iterator[tuple[dict[str, str], FidelityProxy]]:
    """``(env, proxy)``: a fidelity proxy (``aws`` profile, or $ALFRED_FIDELITY_SPEC) before a moto
    server of its own, for the whole session; the test's inspection clients use access key
    ``inspector`` (exempt from injected faults)."""
    with faithful_emulator(None) as pair:
        yield pair
