"""Test session set-up: one moto server process for the integration tests (or an external target).

Target selection (see docs/testing.md):
- default: a moto server started here, over HTTP;
- ALFRED_TEST_TARGET=external: use the endpoint variables already set (AWS_ENDPOINT_URL,
  AWS_ENDPOINT_URL_DYNAMODB, AWS_ENDPOINT_URL_SQS) — LocalStack, a mixed set-up, or real AWS.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from alfred_jobs.emulator import emulator_env, start_moto_server
from tests.support.stack import Stack, make_stack


@pytest.fixture(scope="session")
def emulator() -> Iterator[dict[str, str]]:
    """Environment pointing at the emulator for the whole session."""
    if os.environ.get("ALFRED_TEST_TARGET") == "external":
        yield {"AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
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
