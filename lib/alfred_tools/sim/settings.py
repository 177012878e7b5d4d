"""A history's ``Settings``, without validating the whole environment for each history.

``Settings.model_validate`` reads and validates every field from every source (the environment,
``.env``): about a tenth of a short history's time. The environment is the same for every history
of a process, so it is validated once; each history then gets its own copy of that, with its own
values validated field by field (pydantic's assignment validation: the same checks and coercion).
"""

from __future__ import annotations

import os
from typing import Any

from alfred_jobs.settings import Settings

_bases: dict[tuple[tuple[str, str], ...], Settings] = {}


def sim_settings(values: dict[str, Any]) -> Settings:
    """What ``Settings.model_validate(values)`` builds (the environment is read again when it changes)."""
    env = tuple(sorted(os.environ.items()))
    base = _bases.get(env)
    if base is None:
        _bases.clear()
        base = _bases[env] = Settings.model_validate(values)
    settings = base.model_copy(deep=True)
    for name, value in values.items():
        Settings.__pydantic_validator__.validate_assignment(settings, name, value)
    return settings
