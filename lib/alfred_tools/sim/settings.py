"""A history's ``Settings``, validated once per distinct shape in a process.

``Settings.model_validate`` reads and validates the whole environment (every field, every
source): about a tenth of a short history's time. Histories draw their limits from a small set
(two ``max_running`` values, six ``max_active``, a few hundred retentions), so each shape is
validated once and every history gets its own copy of it (no history sees another's object).
"""

from __future__ import annotations

import os
from typing import Any

from alfred_jobs.settings import Settings

_cache: dict[tuple[Any, ...], Settings] = {}


def sim_settings(values: dict[str, Any]) -> Settings:
    """``Settings.model_validate(values)``, the same object as that builds, without re-reading
    the environment each time (the environment is part of the key: a change reads it again)."""
    key = (tuple(sorted(values.items())), tuple(sorted(os.environ.items())))
    found = _cache.get(key)
    if found is None:
        if len(_cache) > 4096:
            _cache.clear()
        found = _cache[key] = Settings.model_validate(values)
    return found.model_copy(deep=True)
