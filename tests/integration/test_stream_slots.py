"""Issue 26: the per-user stream cap holds across processes, and a killed process's slots come back.

Two stream server processes (``functions/stream/app.py`` under uvicorn, as the image runs it) on
one moto table: one user's streams across both stop at the cap with 429s; SIGKILL one of them
and its slots are free again within one lease period (``ALFRED_STREAM_SLOT_LEASE_SECONDS``, short
here), while the other's stream keeps its slot by renewing it.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from alfred_jobs.domain.models import ChatRequest
from alfred_jobs.service.auth import issue_local_token
from alfred_jobs.service.jobs import JobService
from alfred_tools.emulator import free_port, stop_processes, wait_http
from tests.support.stack import Stack, wait_until

pytestmark = pytest.mark.integration

STREAM_APP_DIR = Path(__file__).resolve().parents[2] / "functions" / "stream"
CAP = 3
LEASE = 2.0  # seconds


@contextmanager
def stream_process(stack: Stack) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """One stream server process on the stack's tables, as the stream image starts it."""
    port = free_port()
    proc = stack.spawn(["-m", "uvicorn", "--app-dir", str(STREAM_APP_DIR), "app:app", "--host", "127.0.0.1",
                        "--port", str(port), "--log-level", "warning"],
                       ALFRED_DEPLOYMENT="local", ALFRED_MAX_STREAMS_PER_USER=str(CAP),
                       ALFRED_STREAM_SLOT_LEASE_SECONDS=str(LEASE), ALFRED_STREAM_HEARTBEAT_SECONDS="0.5")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", proc=proc)
        yield url, proc
    finally:
        stop_processes([proc])


def bearer(stack: Stack, user: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_local_token(stack.settings, user)}"}


@dataclass
class Stream:
    status_code: int
    lines: Iterator[str]  # kept: dropping httpx's line iterator closes its response


def open_stream(stack: ExitStack, client: httpx.Client, url: str, job_id: str, headers: dict[str, str]) -> Stream:
    """An SSE request held open until ``stack`` closes; admitted ones have sent their first line."""
    resp = stack.enter_context(client.stream("GET", f"{url}/api/jobs/{job_id}/stream", headers=headers))
    lines = resp.iter_lines()
    if resp.status_code == 200:
        assert next(lines).startswith("retry:")
    else:
        resp.read()
    held = Stream(resp.status_code, lines)
    stack.callback(lambda: held)  # the iterator lives as long as the request
    return held


def test_one_users_streams_across_two_processes_stop_at_the_cap_and_a_killed_process_frees_its_slots(
        stack: Stack) -> None:
    job = JobService(stack.deps).submit("alice", ChatRequest(message="soup"), None).job.job_id  # stays pending
    slots = stack.deps.stream_slots
    assert slots is not None
    headers = bearer(stack)
    with stream_process(stack) as (a, proc_a), stream_process(stack) as (b, _), \
            httpx.Client(timeout=httpx.Timeout(10.0)) as client, ExitStack() as held:
        assert [open_stream(held, client, u, job, headers).status_code for u in (a, a, b)] == [200, 200, 200]
        assert len(slots.holders("alice")) == CAP
        for u in (a, b):  # each process holds fewer than the cap itself: only the shared slots say no
            for path in ("stream", "events?wait=1"):
                with client.stream("GET", f"{u}/api/jobs/{job}/{path}", headers=headers) as resp:
                    assert resp.status_code == 429, (u, path, slots.holders("alice"))
                    resp.read()
                body = resp.json()
                assert body == {"error": {"code": "too_many_streams", "message": body["error"]["message"]}}
                assert int(resp.headers["retry-after"]) >= 1
        assert len(slots.holders("alice")) == CAP

        # SIGKILL the process holding two of them: nothing gives them back but their leases.
        proc_a.send_signal(signal.SIGKILL)
        proc_a.wait(timeout=10)
        killed = time.monotonic()

        def admitted() -> bool:
            """Open a stream on b; held if admitted (then the event happened), closed if refused."""
            with ExitStack() as attempt:
                if open_stream(attempt, client, b, job, headers).status_code != 200:
                    return False
                held.enter_context(attempt.pop_all())
                return True

        wait_until(admitted, timeout=10 * LEASE, interval=0.05, what="a slot of the killed process")
        freed_after = time.monotonic() - killed
        # Its last renewal was at most a third of a lease before the kill; the slot is free once
        # that lease ends (plus our polling and a request's round trip).
        assert freed_after <= LEASE + 0.5, f"the killed process's slot came back after {freed_after:.2f}s"
        wait_until(admitted, timeout=10 * LEASE, interval=0.05, what="the killed process's other slot")
        assert time.monotonic() - killed <= LEASE + 0.5
        # The cap still holds: b's first stream kept its slot through the lease periods since it
        # opened, by renewing it.
        assert len(slots.holders("alice")) == CAP
        resp = client.get(f"{b}/api/jobs/{job}/stream", headers=headers)
        assert resp.status_code == 429, resp.text
