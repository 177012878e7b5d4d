"""The two back-ends every contract test runs against.

- ``memory``: the fakes of ``alfred_jobs.adapters.memory`` (fresh per test);
- ``aws``: the DynamoDB and SQS adapters on the session's moto server (``emulator``), marked
  ``integration``. ``backend`` shares one set of tables across the suite (each test uses ids of its
  own: creating tables costs half a second to a second); ``due_backend`` shares another set among
  the ``find_due`` tests, which look at the due index of the whole table and so keep to their own
  jobs there; ``fresh_backend`` gets tables and queues of its own, for the tests that need a table
  or queue to themselves (the queue, ``find_due``'s limit).

On an external target (``ALFRED_TEST_TARGET=external``) against real AWS, the index reads of
``list_for_user`` and ``find_due`` are eventually consistent and those tests may see a write late.

Under faithful mode (``ALFRED_FIDELITY``) the AWS leg is skipped: the proxy's stale index reads and
injected ambiguous writes are what tests/integration/test_faithful.py is for, and would make these
exact checks of each call's contract flaky by design.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.contract.support import PENDING_GRACE, Backend, memory_backend
from tests.support.fidelity import fidelity_switch
from tests.support.stack import Stack, make_stack

BACKENDS = [pytest.param("memory", id="memory"),
            pytest.param("aws", id="aws", marks=pytest.mark.integration)]
STACK_ENV = {"ALFRED_PENDING_GRACE_SECONDS": str(PENDING_GRACE)}


def _aws_stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    if fidelity_switch() is not None:
        pytest.skip("contract tests check exact call semantics; faithful mode injects faults on purpose")
    emulator: dict[str, str] = request.getfixturevalue("emulator")
    with make_stack(emulator, **STACK_ENV) as stack:
        yield stack


@pytest.fixture(scope="package")
def shared_stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    yield from _aws_stack(request)


@pytest.fixture(scope="package")
def due_stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    yield from _aws_stack(request)


@pytest.fixture
def own_stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    yield from _aws_stack(request)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        return memory_backend()
    stack: Stack = request.getfixturevalue("shared_stack")
    return Backend("aws", stack.deps, stack)


@pytest.fixture(params=BACKENDS)
def fresh_backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        return memory_backend()
    stack: Stack = request.getfixturevalue("own_stack")
    return Backend("aws", stack.deps, stack)


@pytest.fixture(params=BACKENDS)
def due_backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        return memory_backend()
    stack: Stack = request.getfixturevalue("due_stack")
    return Backend("aws", stack.deps, stack)
