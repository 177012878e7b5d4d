"""A history's settings are what validating them from scratch builds."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from alfred_jobs.settings import Settings
from alfred_tools.sim.settings import sim_settings


def _values(running: int, active: int, retention: int) -> dict[str, object]:
    return {"max_running_per_user": running, "max_active_per_user": active, "retention_seconds": retention,
            "input_timeout_seconds": min(86400.0, retention / 2), "agent": "demo", "deployment": "local",
            "auth_mode": "local"}


@pytest.mark.parametrize(("running", "active", "retention"), [(1, 3, 150), (2, 8, 604800), (1, 5, 299), (2, 3, 7)])
def test_the_same_settings_as_validating_them(running: int, active: int, retention: int) -> None:
    values = _values(running, active, retention)
    assert sim_settings(values) == Settings.model_validate(values)


def test_each_history_has_its_own_copy() -> None:
    a, b = sim_settings(_values(1, 3, 150)), sim_settings(_values(1, 3, 150))
    assert a == b and a is not b


def test_the_environment_is_read_again_when_it_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    sim_settings(_values(1, 3, 150))
    monkeypatch.setenv("ALFRED_LEASE_SECONDS", "7.5")
    assert sim_settings(_values(1, 3, 150)).lease_seconds == 7.5


def test_a_value_out_of_bounds_is_refused_as_validating_refuses_it() -> None:
    sim_settings(_values(1, 3, 150))
    with pytest.raises(ValidationError):
        sim_settings(_values(1, 3, 1))  # retention_seconds >= 2
