"""What a user waits for (issue 16): a cancel to land, and the first sign of life of a new job.

Both go through the real path of ``jobs.overhead_scenario``: the job API and the stream in one
uvicorn process (``serve.py``), a real worker process, the moto server.

- ``cancel_p99_ms``: ``POST /api/jobs/{id}/cancel`` sent → the terminal ``cancelled`` frame at an
  SSE client that has watched the job from its start, over N jobs cancelled at random moments
  while they run (thinking, in a step, replying), p99. The chain behind it: the API sets the
  flag on the job record; the worker's lease keeper sees it at its next poll
  (``cancel_poll_seconds``); the runner stops at the next step boundary, or at once inside a
  step that watches ``ctx.cancelled`` (the demo agent's waits do); it writes the ``cancelled``
  event; the stream's poller (50-200 ms cadence) finds it.
- ``first_event_p50_ms``: ``POST /api/chat`` sent → the first event frame at an SSE client that
  connects as soon as the submit answered, p50. Its floor ``submit_floor_ms`` is the same
  requests' own submit round trip (sent → 202 read), p50: what the client waits beyond it is the
  queue hand-off, the worker's start of the attempt and the stream's first poll.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from alfred_tools.benchmarks.common import BenchStack, Frame, Server, Sizes, ms, p50, pct, sse_frames, start_worker
from alfred_tools.benchmarks.jobs import MESSAGE, TERMINAL

# The cancel jobs: think (step/2), 2 steps, reply (step/2): every phase is a few hundred ms wide,
# so random moments land in each, and a job costs ~3 s, not 6.
CANCEL_STEPS = 2
CANCEL_STEP_SECONDS = 1.0
CANCEL_MESSAGE = f"{MESSAGE} [steps={CANCEL_STEPS}]"
# The first-event jobs think for 0.1 s, as an agent's first model call takes a while: with
# zero-length steps the whole job would be in the log by the first poll, and that poll's read of
# all of it (several round trips) would delay the first frame as no real job does.
FIRST_EVENT_STEP_SECONDS = 0.2
FIRST_EVENT_MESSAGE = f"{MESSAGE} [steps=1]"


# ---- following one job's stream on a thread ----------------------------------------------------


@dataclass
class Follower:
    """An SSE client on its own thread, recording every frame of one job until the terminal one."""

    server: Server
    job_id: str
    frames: list[Frame] = field(default_factory=list)
    error: list[BaseException] = field(default_factory=list)
    opened: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Follower:
        threading.Thread(target=self._run, daemon=True, name=f"follow-{self.job_id[:8]}").start()
        if not self.opened.wait(30):
            raise TimeoutError("the stream did not open")
        return self

    def _run(self) -> None:
        url = f"{self.server.base}/api/jobs/{self.job_id}/stream"
        try:
            with httpx.Client() as client:
                for f in sse_frames(client, url, self.server.headers, self.opened.set):
                    self.frames.append(f)
                    if f.type in TERMINAL:
                        return
        except BaseException as exc:  # reported by the caller
            self.error.append(exc)
        finally:
            self.opened.set()
            self.ended.set()

    def terminal(self, timeout: float = 60.0) -> Frame:
        if not self.ended.wait(timeout):
            raise TimeoutError(f"no terminal frame for {self.job_id} within {timeout}s")
        if self.error:
            raise RuntimeError(f"stream of {self.job_id} failed: {self.error[0]!r}")
        if not self.frames or self.frames[-1].type not in TERMINAL:
            raise RuntimeError(f"the stream of {self.job_id} ended without a terminal event")
        return self.frames[-1]

    def phase(self) -> str:
        """Where the job was by the frames seen so far: think, step N, reply (for the report). A
        step may be started by its own event, or by the ``next`` of a plan or a completed step."""
        where = "pending"
        for f in self.frames:
            data = f.data.get("data", {})
            nxt = data.get("next") if isinstance(data.get("next"), dict) else None
            if f.type == "status":
                where = "think"
            elif f.type == "plan" and nxt:
                where = f"step {nxt.get('index')}"
            elif f.type == "step":
                if data.get("status") == "started":
                    where = f"step {data.get('index')}"
                elif nxt:
                    where = f"step {nxt.get('index')}"
            elif f.type == "phase" and data.get("phase") == "reply":
                where = "reply"
        return where


def submit(server: Server, client: httpx.Client, message: str) -> str:
    r = client.post(f"{server.base}/api/chat", json={"message": message}, headers=server.headers, timeout=30)
    r.raise_for_status()
    return str(r.json()["job_id"])


# ---- cancel ----------------------------------------------------------------------------------------


def _one_cancel(server: Server, client: httpx.Client, rnd: random.Random,
                ) -> tuple[float | None, str]:
    """Submit, watch, cancel at a random moment of the run; (seconds to the cancelled frame, or
    None if the job ended first; where the job was when the cancel was sent)."""
    job_id = submit(server, client, CANCEL_MESSAGE)
    follower = Follower(server, job_id).start()
    # The job runs ~3 s from its first event (think 0.5, 2 x 1 s, reply 0.5): cancel anywhere in it.
    deadline = time.monotonic() + 30
    while not follower.frames and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(rnd.uniform(0.0, CANCEL_STEP_SECONDS * (CANCEL_STEPS + 0.9)))
    where = follower.phase()
    t0 = time.perf_counter()
    r = client.post(f"{server.base}/api/jobs/{job_id}/cancel", headers=server.headers, timeout=30)
    if r.status_code == 409:  # it completed first: not a sample
        follower.terminal()
        return None, where
    r.raise_for_status()
    end = follower.terminal()
    if end.type != "cancelled":
        return None, where
    return end.at - t0, where


def cancel_scenario(stack: BenchStack, server: Server, sizes: Sizes, seed: int = 16) -> dict[str, Any]:
    """N jobs cancelled at random moments: cancel sent → ``cancelled`` frame, p50/p99."""
    worker = start_worker(stack, 1, ALFRED_DEMO_STEP_SECONDS=str(CANCEL_STEP_SECONDS))
    rnd = random.Random(seed)
    lat: list[float] = []
    by_phase: dict[str, list[float]] = {}
    missed = 0
    try:
        with httpx.Client() as client:
            _one_cancel(server, client, random.Random(0))  # warm-up: imports, connections
            for _ in range(sizes.cancel_jobs):
                t, where = _one_cancel(server, client, rnd)
                if t is None:
                    missed += 1
                    continue
                lat.append(t)
                by_phase.setdefault(where, []).append(t)
    finally:
        stack.stop(worker.proc)
    return {"cancel_p99_ms": ms(pct(lat, 99)), "cancel_p50_ms": ms(p50(lat)), "cancel_max_ms": ms(max(lat)),
            "cancel_samples": len(lat), "cancel_completed_first": missed,
            "cancel_poll_seconds": stack.settings.cancel_poll_seconds,
            "cancel_p50_ms_by_phase": {k: ms(p50(v)) for k, v in sorted(by_phase.items())}}


# ---- first event -----------------------------------------------------------------------------------


@dataclass
class FirstEvent:
    """One zero-step job's first event, in seconds from the submit being sent."""

    submit: float   # the 202 read
    opened: float   # the stream's response headers read
    written: float  # the worker wrote the first event (its ``at``, wall clock)
    first: float    # its frame parsed at the client


def _epoch(iso: str) -> float:
    """An event's ``at`` (ISO 8601 UTC, millisecond resolution) as epoch seconds."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _one_first_event(server: Server, client: httpx.Client) -> FirstEvent:
    """Submit, connect as soon as it answered, time the first frame; returns once the job ended, so
    the next one finds the worker idle."""
    wall0, t0 = time.time(), time.perf_counter()
    r = client.post(f"{server.base}/api/chat", json={"message": FIRST_EVENT_MESSAGE}, headers=server.headers,
                    timeout=30)
    r.raise_for_status()
    answered = time.perf_counter()
    job_id = r.json()["job_id"]
    first: Frame | None = None
    opened: list[float] = []
    for f in sse_frames(client, f"{server.base}/api/jobs/{job_id}/stream", server.headers,
                        lambda: opened.append(time.perf_counter())):
        first = first or f
        if f.type in TERMINAL:
            break
    if first is None:
        raise RuntimeError("the stream ended without an event")
    return FirstEvent(answered - t0, opened[0] - t0, _epoch(first.data["at"]) - wall0, first.at - t0)


def first_event_scenario(stack: BenchStack, server: Server, sizes: Sizes) -> dict[str, Any]:
    """Submit sent → first frame, and the submit's own round trip in the same requests, p50."""
    worker = start_worker(stack, 1, ALFRED_DEMO_STEP_SECONDS=str(FIRST_EVENT_STEP_SECONDS))
    runs: list[FirstEvent] = []
    try:
        with httpx.Client() as client:
            _one_first_event(server, client)  # warm-up
            for _ in range(sizes.first_event_runs):
                # The worker settles the last job (gate hand-off, message delete) after its
                # terminal event; a user's next job rarely lands within those milliseconds.
                time.sleep(0.3)
                runs.append(_one_first_event(server, client))
    finally:
        stack.stop(worker.proc)
    # Where the wait beyond the submit goes: the hand-off to the worker and its first write, then
    # the stream's poll (one clock: the event's ``at`` and the client are on the same machine).
    return {"first_event_p50_ms": ms(p50([r.first for r in runs])),
            "first_event_p99_ms": ms(pct([r.first for r in runs], 99)),
            "submit_floor_ms": ms(p50([r.submit for r in runs])),
            "first_event_detail": {
                "submit_answered_to_stream_open_ms": ms(p50([r.opened - r.submit for r in runs])),
                "submit_answered_to_written_ms": ms(p50([r.written - r.submit for r in runs])),
                "written_to_frame_ms": ms(p50([r.first - r.written for r in runs]))}}
