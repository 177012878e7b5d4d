"""The stream function over a real moto server: real HTTP (uvicorn), a real SSE client (httpx).

Every test reads what a client would read off the wire and checks it against the stored log.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI

from alfred_jobs.domain.models import Event
from alfred_jobs.entry.http.stream_api import create_stream_app
from alfred_jobs.ports import EventLog
from alfred_jobs.service.auth import issue_local_token, issue_stream_token
from alfred_jobs.service.jobs import JobService
from alfred_jobs.service.watch import WatchHub
from alfred_tools.emulator import free_port, stop_processes, wait_http
from tests.integration.helpers import (
    TERMINAL,
    assert_contiguous_single_terminal,
    log_of,
    submit,
    wait_terminal,
)
from tests.support.servers import serve
from tests.support.stack import Stack, wait_until

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "functions" / "stream" / "Dockerfile"


# ---- a counting EventLog, a server in a thread, an SSE client ------------------------------------


class CountingLog:
    """The EventLog port, counting store calls per job (what "reads per watcher" is measured in)."""

    def __init__(self, inner: EventLog) -> None:
        self.inner = inner
        self.reads: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(self, job_id: str) -> None:
        with self._lock:
            self.reads[job_id] += 1

    def append(self, job_id: str, event: Event, expires_at: int) -> None:
        self.inner.append(job_id, event, expires_at)

    def get(self, job_id: str, seq: int, consistent: bool = True) -> Event | None:
        self._count(job_id)
        return self.inner.get(job_id, seq, consistent)

    def read_range(self, job_id: str, first: int, last: int, consistent: bool = True) -> list[Event]:
        self._count(job_id)
        return self.inner.read_range(job_id, first, last, consistent)


@dataclass
class StreamServer:
    url: str
    app: FastAPI
    log: CountingLog
    stack: Stack

    @property
    def hub(self) -> WatchHub:
        hub: WatchHub = self.app.state.stream_hub
        return hub

    def stream_url(self, job_id: str, user: str = "alice", **query: Any) -> str:
        token = issue_stream_token(self.stack.settings, user, job_id)
        params = "".join(f"&{k}={v}" for k, v in query.items())
        return f"{self.url}/api/jobs/{job_id}/stream?token={token}{params}"

    def bearer(self, user: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_local_token(self.stack.settings, user)}"}


@contextmanager
def stream_server(stack: Stack, heartbeat: float = 15.0, max_streams: int | None = None) -> Iterator[StreamServer]:
    log = CountingLog(stack.deps.log)
    deps = replace(stack.deps, log=log)
    if max_streams is not None:  # the per-user and per-token caps (tests/security has their tests)
        deps.settings = stack.settings.model_copy(update={"max_streams_per_user": max_streams,
                                                          "max_streams_per_token": max_streams})
    app = create_stream_app(deps, heartbeat_seconds=heartbeat)
    with serve(app) as url:
        yield StreamServer(url, app, log, stack)


@pytest.fixture
def srv(stack: Stack) -> Iterator[StreamServer]:
    with stream_server(stack) as s:
        yield s


@dataclass
class Frame:
    id: str | None = None
    event: str | None = None
    data: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)
    received: float = 0.0

    @property
    def payload(self) -> dict[str, Any]:
        assert self.data is not None
        value: dict[str, Any] = json.loads(self.data)
        return value


def iter_frames(resp: httpx.Response) -> Iterator[Frame]:
    """Parse an SSE body into frames (blank-line separated), as EventSource would."""
    frame = Frame()
    for line in resp.iter_lines():
        if line == "":
            frame.received = time.time()
            yield frame
            frame = Frame()
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "":
            frame.comments.append(value)
        elif name == "id":
            frame.id = value
        elif name == "event":
            frame.event = value
        elif name == "data":
            frame.data = value if frame.data is None else f"{frame.data}\n{value}"
        elif name == "retry":
            frame.retry = int(value)


def read_stream(url: str, headers: dict[str, str] | None = None, timeout: float = 20.0,
                stop_after: int | None = None) -> tuple[list[Frame], bool]:
    """All frames until the server closes (closed=True) or ``stop_after`` event frames (False)."""
    frames: list[Frame] = []
    with httpx.Client(timeout=httpx.Timeout(timeout)) as client, \
            client.stream("GET", url, headers=headers) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        for frame in iter_frames(resp):
            frames.append(frame)
            if stop_after is not None and len(event_frames(frames)) >= stop_after:
                return frames, False
    return frames, True


def event_frames(frames: list[Frame]) -> list[Frame]:
    return [f for f in frames if f.data is not None]


def seqs(frames: list[Frame]) -> list[int]:
    return [f.payload["seq"] for f in event_frames(frames)]


def check_frames(frames: list[Frame], stored: list[Event]) -> None:
    """Every event frame is the stored event: id = seq, event = type, data = the whole event."""
    by_seq = {e.seq: e for e in stored}
    for f in event_frames(frames):
        ev = by_seq[f.payload["seq"]]
        assert f.payload == ev.public()
        assert f.id == str(ev.seq) and f.event == str(ev.type)


def finished_job(stack: Stack, message: str = "pasta [steps=3]") -> tuple[str, list[Event]]:
    stack.start_worker()
    job = submit(stack, message)
    return job.job_id, wait_terminal(stack, job.job_id)


# ---- replay ------------------------------------------------------------------------------------


@pytest.mark.queue
def test_replay_from_any_cursor_of_a_finished_job_then_close(stack: Stack, srv: StreamServer) -> None:
    # GIVEN a finished job
    job_id, stored = finished_job(stack)
    n = len(stored)
    assert_contiguous_single_terminal(stored)
    # WHEN a client streams from 0, the middle, the last seq and past the end
    for cursor in (0, n // 2, n - 1, n, n + 5):
        t0 = time.monotonic()
        frames, closed = read_stream(srv.stream_url(job_id, after=cursor), timeout=5)
        # THEN it gets exactly cursor+1..N in order and the server closes at once
        assert closed and time.monotonic() - t0 < 3
        assert seqs(frames) == list(range(cursor + 1, n + 1)), cursor
        assert frames[0].retry is not None and frames[0].retry > 0
        check_frames(frames, stored)
    # and Last-Event-ID is a cursor too, taking precedence over ?after=
    frames, closed = read_stream(srv.stream_url(job_id, after=0), headers={"Last-Event-ID": str(n - 2)})
    assert closed and seqs(frames) == [n - 1, n]


@pytest.mark.queue
def test_reconnect_with_last_event_id_has_no_gap_and_no_duplicate(stack: Stack, srv: StreamServer) -> None:
    # GIVEN a job that is running
    job = submit(stack, "stew [steps=6]")
    stack.start_worker(ALFRED_DEMO_STEP_SECONDS="0.15")
    # WHEN a client reads three events, drops the connection mid-job, and reconnects with Last-Event-ID
    first, closed = read_stream(srv.stream_url(job.job_id), stop_after=3)
    assert not closed and len(seqs(first)) == 3
    assert not any(f.event in TERMINAL for f in first), "the job should still be running"
    last_id = event_frames(first)[-1].id
    assert last_id is not None
    rest, closed = read_stream(srv.stream_url(job.job_id), headers={"Last-Event-ID": last_id})
    # THEN the two parts join into 1..N with one terminal event at the end, equal to the store
    assert closed
    stored = log_of(stack, job.job_id)
    assert seqs(first) + seqs(rest) == [e.seq for e in stored]
    assert_contiguous_single_terminal(stored)
    check_frames(first + rest, stored)
    assert [f.event for f in event_frames(rest)].count(stored[-1].type) == 1


@pytest.mark.queue
def test_live_events_arrive_while_the_job_runs_and_one_terminal_ends_it(stack: Stack,
                                                                        srv: StreamServer) -> None:
    # GIVEN a client watching a pending job
    job = submit(stack, "salad [steps=5]")
    result: dict[str, Any] = {}

    def watch() -> None:
        result["frames"], result["closed"] = read_stream(srv.stream_url(job.job_id))

    t = threading.Thread(target=watch)
    t.start()
    wait_until(lambda: (s := srv.hub.stats(job.job_id)) is not None and s.watchers == 1,
               what="the watcher to attach")
    # WHEN a worker runs the job
    stack.start_worker(ALFRED_DEMO_STEP_SECONDS="0.1")
    t.join(30)
    # THEN events arrived live (the first before the last was written), and the stream ended
    # right after exactly one terminal event
    frames: list[Frame] = result["frames"]
    stored = log_of(stack, job.job_id)
    assert result["closed"] and seqs(frames) == [e.seq for e in stored]
    evs = event_frames(frames)
    assert [f.event in TERMINAL for f in evs] == [False] * (len(evs) - 1) + [True]
    written_last = _ts(stored[-1].at)
    assert evs[0].received < written_last
    latencies = sorted(f.received - _ts(f.payload["at"]) for f in evs)
    print(f"checkpoint->client latency p50={latencies[len(latencies) // 2] * 1000:.0f}ms "
          f"max={latencies[-1] * 1000:.0f}ms over {len(latencies)} events")
    assert latencies[len(latencies) // 2] < 0.5


def _ts(iso_at: str) -> float:
    return datetime.fromisoformat(iso_at.replace("Z", "+00:00")).timestamp()


# ---- fan-out -------------------------------------------------------------------------------------


@pytest.fixture
def fanout_srv(stack: Stack) -> Iterator[StreamServer]:
    """Fifty streams of one user (and one stream token) on one job: over the caps, on purpose."""
    with stream_server(stack, max_streams=100) as s:
        yield s


@pytest.mark.queue
def test_fifty_watchers_see_the_same_events_for_the_reads_of_one(stack: Stack, fanout_srv: StreamServer) -> None:
    srv = fanout_srv
    # GIVEN two identical pending jobs: A with 1 watcher, B with 50
    a = submit(stack, "curry [steps=5]")
    b = submit(stack, "curry [steps=5]")
    results: dict[tuple[str, int], list[Frame]] = {}

    def watch(job_id: str, i: int) -> None:
        results[(job_id, i)], _ = read_stream(srv.stream_url(job_id), timeout=30)

    threads = [threading.Thread(target=watch, args=(a.job_id, 0))]
    threads += [threading.Thread(target=watch, args=(b.job_id, i)) for i in range(50)]
    for t in threads:
        t.start()
    wait_until(lambda: (sa := srv.hub.stats(a.job_id)) is not None and sa.watchers == 1
               and (sb := srv.hub.stats(b.job_id)) is not None and sb.watchers == 50,
               what="all watchers to attach")
    # WHEN one worker process runs both at once
    stack.start_worker(concurrency=2, ALFRED_DEMO_STEP_SECONDS="0.1")
    for t in threads:
        t.join(60)
    # THEN all 50 saw the same complete sequence, equal to the store's
    stored_b = log_of(stack, b.job_id)
    assert_contiguous_single_terminal(stored_b)
    seqs_b = {tuple(seqs(results[(b.job_id, i)])) for i in range(50)}
    assert seqs_b == {tuple(e.seq for e in stored_b)}
    for i in range(50):
        check_frames(results[(b.job_id, i)], stored_b)
    assert seqs(results[(a.job_id, 0)]) == [e.seq for e in log_of(stack, a.job_id)]
    # AND the store was read for B about as often as for A (one shared poller, not 50)
    reads_a, reads_b = srv.log.reads[a.job_id], srv.log.reads[b.job_id]
    print(f"store reads: 1 watcher {reads_a}, 50 watchers {reads_b}")
    assert reads_b <= 1.2 * reads_a + 4, (reads_a, reads_b)


# ---- auth and input ----------------------------------------------------------------------------


def _assert_error(resp: httpx.Response, status: int) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}


def test_bad_tokens_and_foreign_jobs_never_get_a_stream(stack: Stack, srv: StreamServer) -> None:
    alice = submit(stack, "tea", user="alice")
    other = submit(stack, "coffee", user="alice")
    s = stack.settings
    now = int(time.time())
    expired = jwt.encode({"sub": "alice", "job": alice.job_id, "typ": "stream", "iat": now - 100,
                          "exp": now - 10}, s.stream_token_secret, algorithm="HS256")
    good = issue_stream_token(s, "alice", alice.job_id)
    head, payload, sig = good.split(".")
    forged_payload = jwt.utils.base64url_encode(json.dumps(
        {"sub": "alice", "job": other.job_id, "typ": "stream", "exp": now + 600}).encode()).decode()
    wrong_key = jwt.encode({"sub": "alice", "job": alice.job_id, "typ": "stream", "exp": now + 600},
                           "not-the-secret-but-long-enough-for-hs256", algorithm="HS256")
    base = f"{srv.url}/api/jobs/{alice.job_id}"
    cases = [
        (f"{base}/stream?token={expired}", {}, 401),
        (f"{base}/stream?token={issue_stream_token(s, 'alice', other.job_id)}", {}, 401),  # wrong job
        (f"{base}/stream?token={issue_stream_token(s, 'bob', alice.job_id)}", {}, 404),  # wrong user
        (f"{base}/stream?token={head}.{payload}.{'B' if sig[0] == 'A' else 'A'}{sig[1:]}", {}, 401),
        (f"{srv.url}/api/jobs/{other.job_id}/stream?token={head}.{forged_payload}.{sig}", {}, 401),
        (f"{base}/stream?token={wrong_key}", {}, 401),
        (f"{base}/stream?token=garbage", {}, 401),
        (f"{base}/stream", {}, 401),  # no identity at all
        (f"{base}/stream", srv.bearer("bob"), 404),  # another user's job
        (f"{base}/stream", {"Authorization": "Bearer nope"}, 401),
        (f"{srv.url}/api/jobs/{'0' * 32}/stream", srv.bearer("alice"), 404),  # unknown job
        (f"{srv.url}/api/jobs/not-a-job/stream", srv.bearer("alice"), 400),
        (f"{base}/stream?after=abc", srv.bearer("alice"), 400),
        (f"{base}/stream?after=-1", srv.bearer("alice"), 400),
        (f"{base}/stream?after=99999999999", srv.bearer("alice"), 400),
        (f"{base}/events?token={expired}", {}, 401),
        (f"{base}/events", srv.bearer("bob"), 404),
        (f"{base}/events?after=-1", srv.bearer("alice"), 400),
        (f"{base}/events?wait=21", srv.bearer("alice"), 400),
        (f"{base}/events?after=x", srv.bearer("alice"), 400),
    ]
    with httpx.Client(timeout=5) as client:
        for url, headers, status in cases:
            with client.stream("GET", url, headers=headers) as resp:
                resp.read()
                _assert_error(resp, status)
        resp = client.get(f"{base}/stream", headers={**srv.bearer("alice"), "Last-Event-ID": "1.5"})
        _assert_error(resp, 400)
    # nothing was left watching
    assert srv.hub.watched_jobs == 0
    # and the good token and a bearer header do get a stream
    frames, _ = read_stream(f"{base}/stream?token={good}", stop_after=0)
    assert frames[0].retry is not None
    frames, _ = read_stream(f"{base}/stream", headers=srv.bearer("alice"), stop_after=0)
    assert frames[0].retry is not None


# ---- heartbeat and disconnect ------------------------------------------------------------------


def test_heartbeat_appears_on_an_idle_stream(stack: Stack) -> None:
    # GIVEN a job nobody works on, and a stream server with a short heartbeat
    job = submit(stack, "idle")
    with stream_server(stack, heartbeat=0.2) as srv, httpx.Client(timeout=5) as client, \
            client.stream("GET", srv.stream_url(job.job_id)) as resp:
        # WHEN a client waits on the stream
        frames = iter_frames(resp)
        first = next(frames)
        assert first.retry is not None
        t0 = time.monotonic()
        beats = [next(frames) for _ in range(3)]
        # THEN comment heartbeats keep coming (and nothing else)
        assert all(f.comments and f.data is None for f in beats)
        assert time.monotonic() - t0 < 3


def test_disconnecting_a_client_stops_its_work(stack: Stack, srv: StreamServer) -> None:
    # GIVEN a client streaming a job that will not end
    job = submit(stack, "never ends")
    with httpx.Client(timeout=5) as client, \
            client.stream("GET", srv.stream_url(job.job_id)) as resp:
        # Keep the frame iterator: an abandoned one is collected at once, and closing it closes
        # the response, i.e. disconnects (on a busy machine the server saw that before the check).
        frames = iter_frames(resp)
        assert next(frames).retry is not None  # the watcher is attached before this frame
        stats = srv.hub.stats(job.job_id)
        assert stats is not None and stats.watchers == 1 and stats.polling
        assert srv.hub.pollers == 1
    # WHEN it disconnects, THEN the watcher and the poller are gone, and reads stop
    wait_until(lambda: srv.hub.stats(job.job_id) is None and srv.hub.pollers == 0, timeout=30,
               what="the watcher and its poller to be released")
    reads = srv.log.reads[job.job_id]
    with httpx.Client(timeout=5) as client:  # a later request is served (the loop is healthy) ...
        assert client.get(f"{srv.url}/healthz").json() == {"ok": True}
    assert srv.log.reads[job.job_id] == reads  # ... and nothing polls that job any more


# ---- long-poll ---------------------------------------------------------------------------------


@pytest.mark.queue
def test_long_poll_returns_at_once_when_events_exist(stack: Stack, srv: StreamServer) -> None:
    job_id, stored = finished_job(stack)
    t0 = time.monotonic()
    body = httpx.get(f"{srv.url}/api/jobs/{job_id}/events?after=0&wait=20", headers=srv.bearer(),
                     timeout=10).json()
    assert time.monotonic() - t0 < 2
    assert body["events"] == [e.public() for e in stored]
    assert body["done"] is True and body["status"] == "complete" and body["next_after"] == len(stored)
    # from the middle, with a stream token instead of a bearer header
    token = issue_stream_token(stack.settings, "alice", job_id)
    body = httpx.get(f"{srv.url}/api/jobs/{job_id}/events?after=2&token={token}", timeout=10).json()
    assert [e["seq"] for e in body["events"]] == list(range(3, len(stored) + 1)) and body["done"]
    # at the end: nothing, done, at once
    body = httpx.get(f"{srv.url}/api/jobs/{job_id}/events?after={len(stored)}&wait=20",
                     headers=srv.bearer(), timeout=5).json()
    assert body == {"events": [], "status": "complete", "done": True, "next_after": len(stored)}


def test_long_poll_waits_and_returns_empty_at_the_deadline(stack: Stack, srv: StreamServer) -> None:
    job = submit(stack, "nobody works on this")
    t0 = time.monotonic()
    body = httpx.get(f"{srv.url}/api/jobs/{job.job_id}/events?after=0&wait=1", headers=srv.bearer(),
                     timeout=10).json()
    elapsed = time.monotonic() - t0
    assert body == {"events": [], "status": "pending", "done": False, "next_after": 0}
    assert 1.0 <= elapsed < 3.0


def test_long_poll_returns_early_when_an_event_lands(stack: Stack, srv: StreamServer) -> None:
    # GIVEN a long-poll waiting up to 15 s on a pending job
    job = submit(stack, "cancel me")
    out: dict[str, Any] = {}

    def poll() -> None:
        t0 = time.monotonic()
        out["body"] = httpx.get(f"{srv.url}/api/jobs/{job.job_id}/events?after=0&wait=15",
                                headers=srv.bearer(), timeout=30).json()
        out["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=poll)
    t.start()
    wait_until(lambda: (s := srv.hub.stats(job.job_id)) is not None and s.watchers == 1,
               what="the long-poll to wait")
    # WHEN an event lands (the job is cancelled: a terminal event at the head of its log)
    _, done = JobService(stack.deps).cancel("alice", job.job_id)
    assert done
    t.join(20)
    # THEN the long-poll returns it well before its deadline
    assert out["elapsed"] < 5
    body = out["body"]
    assert [e["type"] for e in body["events"]] == ["cancelled"]
    assert body["done"] is True and body["status"] == "cancelled" and body["next_after"] == 1


# ---- the container's start command -------------------------------------------------------------


def dockerfile_cmd() -> list[str]:
    """The exec-form CMD of the stream image."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if ln.startswith("CMD ")]
    assert len(lines) == 1, "one CMD line"
    argv = json.loads(lines[0][4:])
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    return argv


@pytest.mark.queue
def test_the_image_start_command_serves_a_stream(stack: Stack) -> None:
    # GIVEN the image's start command, run as a process against the emulator
    argv = dockerfile_cmd()
    port = free_port()
    bindir = os.path.dirname(sys.executable)
    # ALFRED_DEPLOYMENT=local: this runs on the public development secrets, which a deployment
    # refuses (test_a_deployment_refuses_the_development_secrets).
    env = {**stack.env, "PORT": str(port), "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
           "ALFRED_DEPLOYMENT": "local"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", timeout=30, proc=proc)
        except Exception:
            proc.kill()
            raise AssertionError(f"{shlex.join(argv)} did not start: "
                                 f"{proc.communicate()[1].decode()[-2000:]}") from None
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"ok": True}
        # WHEN a job runs and a client streams it through that process
        job = submit(stack, "toast [steps=2]")
        stack.start_worker()
        token = issue_stream_token(stack.settings, "alice", job.job_id)
        frames, closed = read_stream(f"http://127.0.0.1:{port}/api/jobs/{job.job_id}/stream?token={token}")
        # THEN it gets the whole log and the stream closes after the terminal event
        stored = log_of(stack, job.job_id)
        assert closed and seqs(frames) == [e.seq for e in stored]
        assert_contiguous_single_terminal(stored)
        check_frames(frames, stored)
    finally:
        stop_processes([proc])
        if proc.stderr:
            proc.stderr.close()


def test_a_deployment_refuses_the_development_secrets(stack: Stack) -> None:
    """The image's plain-uvicorn mode (ECS, App Runner) with no configuration must not start on the
    public secrets from settings.py, whatever the auth mode: tokens forged with them would read
    anyone's events. Issue 17, finding 4."""
    argv = dockerfile_cmd()
    port = free_port()
    bindir = os.path.dirname(sys.executable)
    env = {k: v for k, v in stack.env.items() if k != "ALFRED_DEPLOYMENT"}
    env.update({"PORT": str(port), "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"})
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, timeout=60)
    assert proc.returncode != 0
    assert b"refusing to start on the public development secrets" in proc.stderr
