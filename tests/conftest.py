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

# The files that take longest, longest first (measured, docs/testing.md "Time and load"). Under
# pytest-xdist's loadfile a free process takes the next file in collection order, so starting with
# these lets the two processes end together instead of one finishing a long file alone. The order
# of the tests within a file, and of the other files, is unchanged.
SLOW_FILES_FIRST = (
    "tests/integration/test_conversations.py",
    "tests/integration/test_bench_harness.py",
    "tests/integration/test_cli.py",
    "tests/integration/test_devstack.py",
    "tests/browser/test_queue.py",
    "tests/browser/test_screens.py",
    "tests/integration/test_template_env.py",
    "tests/browser/test_conversation.py",
    "tests/browser/test_asking.py",
    "tests/chaos/test_chaos.py",
    "tests/integration/test_guarantees.py",
    "tests/integration/test_faithful.py",
    "tests/integration/test_stream.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable


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
