"""Every test here carries the ``sim`` mark: ./test.sh runs them in a step of their own, after the
other suites (the seed set keeps both cores busy for a few minutes: it would starve the tests that
wait on real processes if it ran beside them)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/sim/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.sim)
