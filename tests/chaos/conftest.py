"""Markers of the chaos suite (registered here so the suite runs without pyproject changes)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: fault injection and chaos under load (real processes)")
    config.addinivalue_line("markers", "chaos_long: the long chaos run (200 jobs, 50 watchers); "
                                       "run with -m chaos_long")
