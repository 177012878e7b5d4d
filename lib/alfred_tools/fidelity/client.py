"""Starting a fidelity proxy from Python, and a small client of its control API.

``start_fidelity_proxy`` runs ``python -m alfred_tools.fidelity`` as a child process in front of
a moto server and waits until it answers; the ``FidelityProxy`` it returns stops it and talks to
``/_fidelity/`` (calls, script, held, config, stats). What tests and the local stack use.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import cast

import httpx

from alfred_tools.emulator import free_port, wait_http
from alfred_tools.fidelity.basics import JsonDict
from alfred_tools.fidelity.spec import DEFAULT_PROFILE, FidelitySpec, _setting_text, default_spec_text


@dataclass
class FidelityProxy:
    """A fidelity proxy child process, and small clients of its control API."""

    host: str
    port: int
    proc: subprocess.Popen[bytes]
    upstream: str
    spec: str = DEFAULT_PROFILE  # the spec it was started with (what ``configure(key=None)`` restores)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _url(self, path: str) -> str:
        return f"{self.endpoint}/_fidelity/{path}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def calls(self) -> list[JsonDict]:
        return cast(list[JsonDict], httpx.get(self._url("calls"), timeout=30).raise_for_status().json())

    def reset_calls(self) -> None:
        httpx.post(self._url("calls/reset"), timeout=10).raise_for_status()

    def script(self, rules: list[JsonDict]) -> list[JsonDict]:
        """Add deterministic faults; returns the rules still active."""
        return cast(list[JsonDict], httpx.post(self._url("script"), json=rules, timeout=10).raise_for_status().json())

    def clear_script(self) -> None:
        httpx.delete(self._url("script"), timeout=10).raise_for_status()

    def held(self) -> list[JsonDict]:
        """The calls a ``hold`` rule is holding (or held since the script was last cleared)."""
        return cast(list[JsonDict], httpx.get(self._url("held"), timeout=10).raise_for_status().json())

    def release_held(self) -> None:
        httpx.post(self._url("held/release"), timeout=10).raise_for_status()

    def configure(self, spec: str = "", replace: bool = False, **settings: float | str | None) -> str:
        """Change the spec at run time: ``spec`` clauses, then ``settings`` (``stale_ms=4000``; a
        None value puts back what the proxy was started with), over the current spec or, with
        ``replace``, from scratch. Returns the spec now in force."""
        clauses = [spec] if spec else []
        for name, value in settings.items():
            clauses.append(f"{name}={_setting_text(FidelitySpec.parse(self.spec), name) if value is None else value}")
        out = httpx.post(self._url("config"), json={"spec": ";".join(clauses), "replace": replace}, timeout=10)
        return str(out.raise_for_status().json()["spec"])

    def stats(self) -> JsonDict:
        return cast(JsonDict, httpx.get(self._url("stats"), timeout=10).raise_for_status().json())


def start_fidelity_proxy(upstream: str, spec: str | None = None, host: str = "127.0.0.1",
                         port: int | None = None) -> FidelityProxy:
    """Start ``python -m alfred_tools.fidelity`` in front of ``upstream`` and wait until it answers."""
    text = spec if spec is not None else default_spec_text()
    FidelitySpec.parse(text)  # fail here, not in the child
    port = port or free_port(host)
    proc = subprocess.Popen([sys.executable, "-m", "alfred_tools.fidelity", "--upstream", upstream,
                             "--host", host, "--port", str(port), "--spec", text], stdout=subprocess.DEVNULL)
    proxy = FidelityProxy(host, port, proc, upstream, text)
    try:
        wait_http(proxy._url("health"), proc=proc)
    except Exception:
        proxy.stop()
        raise
    return proxy
