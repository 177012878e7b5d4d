"""Run the sweeper every ``ALFRED_SWEEP_SECONDS`` (locally; on AWS a schedule invokes it)."""

from __future__ import annotations

import signal
import threading
from typing import Any

from .deps import aws_deps
from .exceptions import StoreError
from .observability import get_logger
from .settings import Settings, get_settings
from .sweeper import Sweeper

log = get_logger()


def run_sweeper(settings: Settings, stop: threading.Event) -> None:
    """Sweep on the configured period until ``stop`` is set."""
    sweeper = Sweeper(aws_deps(settings))
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
