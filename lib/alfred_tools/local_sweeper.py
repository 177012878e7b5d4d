"""Run the sweeper every ``ALFRED_SWEEP_SECONDS`` (locally; on AWS a schedule invokes it)."""

from __future__ import annotations

import signal
import threading
from typing import Any

from alfred_jobs.entry.wiring import get_settings
from alfred_jobs.exceptions import StoreError
from alfred_jobs.observability import get_logger
from alfred_jobs.service.sweeper import Sweeper
from alfred_jobs.settings import Settings
from alfred_tools.clients import tool_deps

log = get_logger()


def run_sweeper(settings: Settings, stop: threading.Event) -> None:
    """Sweep on the configured period until ``stop`` is set."""
    sweeper = Sweeper(tool_deps(settings))
    while not stop.wait(settings.sweep_seconds):
        try:
            sweeper.sweep()
        except StoreError as exc:
            log.warning("sweep failed", extra={"error": str(exc)})


def main() -> None:
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    run_sweeper(get_settings(), stop)


if __name__ == "__main__":
    main()
