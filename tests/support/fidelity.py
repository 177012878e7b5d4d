"""Faithful mode for tests: a moto server with the fidelity proxy in front of it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from alfred_tools.emulator import emulator_env, start_moto_server
from alfred_tools.fidelity import FidelityProxy, start_fidelity_proxy

__all__ = ["FidelityProxy", "faithful_emulator", "fidelity_switch"]

OFF_VALUES = ("", "0", "off", "false", "no")


def fidelity_switch() -> str | None:
    """The spec the whole suite runs under when ``ALFRED_FIDELITY`` is set (``aws``), else None.

    ``ALFRED_FIDELITY=aws`` uses ``$ALFRED_FIDELITY_SPEC`` if set, else the ``aws`` profile; any
    other value is taken as a spec itself (``ALFRED_FIDELITY="aws;seed=3"``).
    """
    value = os.environ.get("ALFRED_FIDELITY", "").strip()
    if value.lower() in OFF_VALUES:
        return None
    if value == "aws":
        return os.environ.get("ALFRED_FIDELITY_SPEC") or "aws"
    return value


@contextmanager
def faithful_emulator(spec: str | None = "aws") -> Iterator[tuple[dict[str, str], FidelityProxy]]:
    """A moto server of its own and a fidelity proxy before it; yields ``(env, proxy)`` where env
    points boto3 (and child processes) at the proxy."""
    server = start_moto_server()
    try:
        proxy = start_fidelity_proxy(server.endpoint, spec)
        try:
            yield emulator_env(proxy.endpoint), proxy
        finally:
            proxy.stop()
    finally:
        server.stop()
