"""Waking the stream on the writer (issue 28): after an event is written, a UDP datagram with the
job id goes to the stream process (``Settings.stream_wake_address``), whose poller for that job
reads at once instead of at its next poll (``service/watch.py``, ``WatchHub.wake``).

Best effort by design: the datagram is sent after the put returned, never before, so a wake-up
never announces an event that is not durable; it carries no event, only "read now" (the reader
reads the store as always, strongly consistent after a wake-up); and a datagram that is lost, or a
stream process that is not listening, leaves the poll's own cadence as it was.
"""

from __future__ import annotations

import socket

from alfred_jobs.domain.models import Event
from alfred_jobs.observability import get_logger
from alfred_jobs.ports import EventLog

log = get_logger()


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` → ``(host, port)``."""
    host, _, port = address.rpartition(":")
    return host or "127.0.0.1", int(port)


class WakingEventLog:
    """An ``EventLog`` that sends the job id to ``address`` after each append that landed."""

    def __init__(self, inner: EventLog, address: str) -> None:
        self._inner = inner
        self._address = parse_address(address)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setblocking(False)  # never waits: a full buffer drops the wake-up, not the writer's time

    def append(self, job_id: str, event: Event, expires_at: int) -> None:
        self._inner.append(job_id, event, expires_at)
        try:
            self._sock.sendto(job_id.encode(), self._address)
        except OSError:  # nobody listening, a full buffer: the stream's poll finds the event anyway
            log.debug("wake-up not sent", extra={"job_id": job_id})

    def get(self, job_id: str, seq: int, consistent: bool = True) -> Event | None:
        return self._inner.get(job_id, seq, consistent)

    def read_range(self, job_id: str, first: int, last: int, consistent: bool = True) -> list[Event]:
        return self._inner.read_range(job_id, first, last, consistent)
