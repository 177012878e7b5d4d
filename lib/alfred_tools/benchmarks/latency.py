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

import json
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from alfred_tools.benchmarks.common import BenchStack, Frame, Server, Sizes, ms, p50, pct, sse_frames, start_worker
from alfred_tools.benchmarks.jobs import MESSAGE, TERMINAL
from alfred_tools.emulator import free_udp_port

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


# ---- first token (issue 28) --------------------------------------------------------------------------

# The stand-in model: the demo agent at this step length thinks for half of it (the model's time to
# its first token) and streams a reply over the other half. A plain chat turn: no steps.
FIRST_TOKEN_STEP_SECONDS = 0.4
FIRST_TOKEN_MESSAGE = f"{MESSAGE} [steps=0]"
# The phases of the path, in order: each from the end of the one before (one clock: every process
# is on this machine; the worker's and the stream's times are their botocore handlers' marks).
FIRST_TOKEN_PHASES = (
    "submit",       # POST /api/chat sent → the 202 read
    "pickup",       # → the attempt's first event written (queue hand-off, lease, slot, the put)
    "think",        # → the plan written (the stand-in's think, then the plan's put)
    "reply_start",  # → the first delta's put begins (its ``at``: the reply phase's put is before it)
    "write",        # → the first delta's put returned
    "read",         # → the stream's read returned it
    "frame",        # → its frame parsed at the SSE client
)


@dataclass
class FirstToken:
    """One plain chat turn through the system, and the stand-in called directly beside it."""

    job_id: str
    wall0: float      # POST sent (wall clock)
    submit: float     # seconds from the POST: the 202 read
    first: float      # the first ``delta`` frame parsed
    delta_seq: int
    delta_at: float   # the delta event's ``at`` (wall clock, millisecond resolution)
    direct: float     # the stand-in's own time to first token, called directly in this process


def direct_first_token(message: str = FIRST_TOKEN_MESSAGE, step_seconds: float = FIRST_TOKEN_STEP_SECONDS) -> float:
    """The stand-in model called directly with streaming: seconds to its first reply chunk."""
    from alfred_jobs.adapters.memory import MemoryAgentDataStore
    from alfred_jobs.agents.demo import DemoAgent
    from alfred_jobs.domain.agent import AgentContext
    from alfred_jobs.settings import Settings

    agent = DemoAgent(MemoryAgentDataStore(), Settings(demo_step_seconds=step_seconds))
    ctx = AgentContext(job_id="direct", user_id="bench", conversation_id="direct", message=message, history=[],
                       attempt=1, step_outputs={}, cancelled=lambda: False)
    t0 = time.perf_counter()
    chunks = agent.reply(agent.think(ctx), ctx)
    next(chunks)
    took = time.perf_counter() - t0
    chunks.close()
    return took


def _one_first_token(server: Server, client: httpx.Client) -> FirstToken:
    """The stand-in directly, then the same turn through the system: POST → first ``delta`` frame;
    returns once the job ended, so the next one finds the worker idle."""
    direct = direct_first_token()
    wall0, t0 = time.time(), time.perf_counter()
    r = client.post(f"{server.base}/api/chat", json={"message": FIRST_TOKEN_MESSAGE}, headers=server.headers,
                    timeout=30)
    r.raise_for_status()
    answered = time.perf_counter()
    job_id = str(r.json()["job_id"])
    delta: Frame | None = None
    for f in sse_frames(client, f"{server.base}/api/jobs/{job_id}/stream", server.headers):
        if delta is None and f.type == "delta":
            delta = f
        if f.type in TERMINAL:
            break
    if delta is None:
        raise RuntimeError("the stream ended without a delta")
    return FirstToken(job_id, wall0, answered - t0, delta.at - t0, delta.seq, _epoch(delta.data["at"]), direct)


def first_token_phases(run: FirstToken, written: dict[str, dict[str, Any]],
                       read: dict[str, dict[str, Any]]) -> dict[str, float] | None:
    """One run's path split into ``FIRST_TOKEN_PHASES`` (seconds), from the worker's marks (``written``)
    and the stream process's (``read``); None if a mark is missing."""
    def mark(marks: dict[str, dict[str, Any]], seq: int, what: str) -> float | None:
        value = marks.get(f"{run.job_id}#{seq}", {}).get(what)
        return float(value) if value is not None else None

    plan_seq = next((int(k.rsplit("#", 1)[1]) for k, v in written.items()
                     if k.startswith(f"{run.job_id}#") and v.get("type") == "plan"), None)
    times = [run.wall0, run.wall0 + run.submit, mark(written, 1, "written"),
             mark(written, plan_seq, "written") if plan_seq else None, run.delta_at,
             mark(written, run.delta_seq, "written"), mark(read, run.delta_seq, "read"), run.wall0 + run.first]
    if any(t is None for t in times):
        return None
    ts = [float(t) for t in times if t is not None]
    return {name: ts[i + 1] - ts[i] for i, name in enumerate(FIRST_TOKEN_PHASES)}


def _first_token_summary(runs: list[FirstToken], written: dict[str, dict[str, Any]],
                         read: dict[str, dict[str, Any]], woken: bool) -> dict[str, Any]:
    over = [r.first - r.direct for r in runs]
    phases = [p for p in (first_token_phases(r, written, read) for r in runs) if p is not None]
    return {"p50_ms": ms(p50(over)), "p99_ms": ms(pct(over, 99)),
            "through_system_p50_ms": ms(p50([r.first for r in runs])),
            "direct_p50_ms": ms(p50([r.direct for r in runs])),
            "runs": len(runs), "stand_in": f"demo agent, think {FIRST_TOKEN_STEP_SECONDS / 2:g} s, "
                                           f"reply {FIRST_TOKEN_STEP_SECONDS / 2:g} s, no steps",
            "phases_p50_ms": {name: ms(p50([p[name] for p in phases])) for name in FIRST_TOKEN_PHASES},
            "phases_p99_ms": {name: ms(pct([p[name] for p in phases], 99)) for name in FIRST_TOKEN_PHASES},
            "phased_runs": len(phases), "stream_woken_by_writer": woken}


def first_token_scenario(stack: BenchStack, sizes: Sizes) -> dict[str, Any]:
    """A plain chat turn: POST → first reply ``delta`` at an SSE client, minus the stand-in's own time
    to first token (called directly before each turn); p50/p99, and the path by phase.

    Two stream processes on the same tables and the one worker, taken in turn: one woken by the
    worker after each event it writes (as ``alfred-jobs dev`` runs: the keys), one on its poll
    alone (as the Lambda stream runs: ``first_token_polled``). The worker's wake-ups for the jobs
    of the second reach the first, which watches none of them.
    """
    from alfred_tools.benchmarks.common import start_server

    wake = {"ALFRED_STREAM_WAKE_ADDRESS": f"127.0.0.1:{free_udp_port()}"}
    woken = start_server(stack, "dev", ALFRED_BENCH_MARKS="1", **wake)
    polled = start_server(stack, "dev", ALFRED_BENCH_MARKS="1")
    worker = start_worker(stack, 1, ALFRED_DEMO_STEP_SECONDS=str(FIRST_TOKEN_STEP_SECONDS), ALFRED_BENCH_MARKS="1",
                          **wake)
    runs: dict[bool, list[FirstToken]] = {True: [], False: []}
    try:
        with httpx.Client() as client:
            _one_first_token(woken, client)  # warm-up: imports, connections
            _one_first_token(polled, client)
            for i in range(2 * sizes.first_token_runs):
                time.sleep(0.3)  # as in first_event_scenario: a user's next turn is not within ms of the last
                runs[i % 2 == 0].append(_one_first_token(woken if i % 2 == 0 else polled, client))
        worker_counts = worker.counts()
        written = worker_counts.get("marks", {})
        read = {**polled.counts().get("marks", {}), **woken.counts().get("marks", {})}
        if os.environ.get("ALFRED_BENCH_TIMELINE"):  # the worker's calls of the last run, for a profile
            last = runs[True][-1] if runs[True] else None
            print(json.dumps({"run": last.__dict__ if last else None, "worker": worker_counts.get("timeline", [])[-40:],
                              "marks": {k: v for k, v in written.items() if last and k.startswith(last.job_id)}}),
                  file=sys.stderr)
    finally:
        stack.stop(worker.proc, woken.proc, polled.proc)
    detail = _first_token_summary(runs[True], written, read, woken=True)
    return {"first_token_overhead_p50_ms": detail.pop("p50_ms"), "first_token_overhead_p99_ms": detail.pop("p99_ms"),
            "first_token_detail": detail,
            "first_token_polled": _first_token_summary(runs[False], written, read, woken=False)}
