"""Stream function measurements on a local moto server (see docs/streaming.md).

    python bench/stream_measure.py [--quick] [--json FILE]

- checkpoint → client latency p50/p99: the event's ``at`` (stamped by the worker before its put)
  to the moment the SSE client parsed the frame;
- reconnect → first replayed event p50: a new SSE request to a finished job, from a random cursor,
  until its first event frame;
- RSS of a stream process (the image's start command) holding 1,000 idle SSE connections;
- store reads per second for one job with 1 watcher vs one with 100 (same workload, same time).

``measure(...) -> dict`` is the entry point for ``alfred-jobs bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from alfred_jobs.adapters.aws import AwsClients
from alfred_jobs.domain.models import ChatRequest, Event
from alfred_jobs.durability.journal import Journal
from alfred_jobs.entry.http.stream_api import create_stream_app
from alfred_jobs.entry.wiring import aws_deps
from alfred_jobs.ports import Deps, EventLog
from alfred_jobs.service.auth import issue_stream_token
from alfred_jobs.service.jobs import JobService
from alfred_jobs.settings import Settings
from alfred_tools.bootstrap import create_resources
from alfred_tools.emulator import emulator_env, free_port, start_moto_server, wait_http

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "functions" / "stream" / "Dockerfile"
USER = "bench"


class CountingLog:
    """The EventLog port, counting store calls per job."""

    def __init__(self, inner: EventLog) -> None:
        self.inner = inner
        self.reads: Counter[str] = Counter()
        self._lock = threading.Lock()

    def append(self, job_id: str, event: Event, expires_at: int) -> None:
        self.inner.append(job_id, event, expires_at)

    def get(self, job_id: str, seq: int) -> Event | None:
        with self._lock:
            self.reads[job_id] += 1
        return self.inner.get(job_id, seq)

    def read_range(self, job_id: str, first: int, last: int) -> list[Event]:
        with self._lock:
            self.reads[job_id] += 1
        return self.inner.read_range(job_id, first, last)


@contextmanager
def _stack(step_seconds: float) -> Iterator[tuple[dict[str, str], Deps]]:
    """A moto server with fresh resources; yields the environment for children and the deps."""
    server = start_moto_server()
    prefix = f"b{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **emulator_env(server.endpoint),
           "ALFRED_JOBS_TABLE": f"{prefix}-jobs", "ALFRED_EVENTS_TABLE": f"{prefix}-events",
           "ALFRED_CONVERSATIONS_TABLE": f"{prefix}-conv", "ALFRED_AGENT_DATA_TABLE": f"{prefix}-data",
           "ALFRED_QUEUE_NAME": f"{prefix}-q", "ALFRED_DLQ_NAME": f"{prefix}-dlq",
           "ALFRED_DEMO_STEP_SECONDS": str(step_seconds), "ALFRED_LEASE_SECONDS": "5"}
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        settings = Settings()
        clients = AwsClients(settings)
        create_resources(settings, clients.dynamodb, clients.sqs)
        yield env, aws_deps(settings)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        server.stop()


@contextmanager
def _serve(deps: Deps) -> Iterator[tuple[str, CountingLog]]:
    log = CountingLog(deps.log)
    app = create_stream_app(replace(deps, log=log))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_http(f"http://127.0.0.1:{port}/healthz")
    try:
        yield f"http://127.0.0.1:{port}", log
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def _worker(env: dict[str, str], concurrency: int) -> Iterator[None]:
    proc = subprocess.Popen([sys.executable, "-m", "alfred_tools.local_worker", str(concurrency)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def _ts(at: str) -> float:
    return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()


def _follow(url: str, started: threading.Event | None = None) -> list[tuple[float, dict[str, Any]]]:
    """(receive time, event) for every event frame until the server closes the stream."""
    out: list[tuple[float, dict[str, Any]]] = []
    with httpx.Client(timeout=60) as client, client.stream("GET", url) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if started is not None and line.startswith("retry:"):
                started.set()
            if line.startswith("data:"):
                out.append((time.time(), json.loads(line[5:])))
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _submit(deps: Deps, message: str) -> str:
    return JobService(deps).submit(USER, ChatRequest(message=message), None).job.job_id


def _stream_url(base: str, deps: Deps, job_id: str, after: int = 0) -> str:
    return f"{base}/api/jobs/{job_id}/stream?after={after}&token={issue_stream_token(deps.settings, USER, job_id)}"


def measure_latency(base: str, deps: Deps, env: dict[str, str], jobs: int, steps: int) -> dict[str, Any]:
    """Checkpoint → client latency over ``jobs`` jobs watched live."""
    ids = [_submit(deps, f"bench dish {i} [steps={steps}]") for i in range(jobs)]
    results: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    ready = [threading.Event() for _ in ids]

    def run(i: int, job_id: str) -> None:
        results[job_id] = _follow(_stream_url(base, deps, job_id), ready[i])

    threads = [threading.Thread(target=run, args=(i, j)) for i, j in enumerate(ids)]
    for t in threads:
        t.start()
    for r in ready:
        r.wait(10)
    with _worker(env, concurrency=min(4, jobs)):
        for t in threads:
            t.join(120)
    lat = [(recv - _ts(ev["at"])) * 1000 for frames in results.values() for recv, ev in frames]
    return {"latency_ms_p50": round(_pct(lat, 0.5), 1), "latency_ms_p99": round(_pct(lat, 0.99), 1),
            "latency_samples": len(lat), "finished_jobs": ids}


def measure_reconnect(base: str, deps: Deps, job_id: str, samples: int) -> dict[str, Any]:
    """New request → first replayed event, from random cursors of a finished job."""
    n = len(Journal(deps.log, deps.settings.retention_seconds).read_all(job_id))
    times = []
    with httpx.Client(timeout=10) as client:
        for _ in range(samples):
            url = _stream_url(base, deps, job_id, random.randrange(0, n))
            t0 = time.perf_counter()
            with client.stream("GET", url) as resp:
                for line in resp.iter_lines():
                    if line.startswith("data:"):
                        times.append((time.perf_counter() - t0) * 1000)
                        break
    return {"reconnect_first_event_ms_p50": round(_pct(times, 0.5), 1),
            "reconnect_first_event_ms_p99": round(_pct(times, 0.99), 1)}


def measure_fanout_reads(base: str, log: CountingLog, deps: Deps, env: dict[str, str], watchers: int,
                         steps: int) -> dict[str, Any]:
    """Store reads/s of a job with 1 watcher vs an identical one with ``watchers``, run side by side."""
    one, many = _submit(deps, f"fan one [steps={steps}]"), _submit(deps, f"fan many [steps={steps}]")
    plan = [one] + [many] * watchers
    ready = [threading.Event() for _ in plan]
    done_at: dict[str, float] = {}

    def run(i: int, job_id: str) -> None:
        _follow(_stream_url(base, deps, job_id), ready[i])
        done_at.setdefault(job_id, time.monotonic())

    threads = [threading.Thread(target=run, args=(i, j)) for i, j in enumerate(plan)]
    for t in threads:
        t.start()
    for r in ready:
        r.wait(30)
    before = Counter(log.reads)
    t0 = time.monotonic()
    with _worker(env, concurrency=2):
        for t in threads:
            t.join(120)
    r1 = (log.reads[one] - before[one]) / (done_at[one] - t0)
    rn = (log.reads[many] - before[many]) / (done_at[many] - t0)
    return {"reads_per_s_1_watcher": round(r1, 1), f"reads_per_s_{watchers}_watchers": round(rn, 1),
            "reads_ratio": round(rn / r1, 2) if r1 else None}


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _hold(port: int, paths: list[str]) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """Open one raw HTTP connection per path and read until the SSE ``retry:`` line arrived."""
    conns = []
    for i in range(0, len(paths), 100):
        async def one(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n".encode())
            await writer.drain()
            while b"retry:" not in await reader.readline():
                pass
            return reader, writer
        conns += await asyncio.gather(*(one(p) for p in paths[i:i + 100]))
    return conns


def measure_idle_rss(env: dict[str, str], deps: Deps, connections: int, jobs: int) -> dict[str, Any]:
    """RSS of the image's start command holding ``connections`` idle SSE streams over ``jobs`` jobs."""
    line = next(ln for ln in DOCKERFILE.read_text().splitlines() if ln.startswith("CMD "))
    argv = json.loads(line[4:])
    port = free_port()
    bindir = os.path.dirname(sys.executable)
    child_env = {**env, "PORT": str(port), "PATH": f"{bindir}{os.pathsep}{env.get('PATH', '')}"}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, connections * 2 + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # inherited by the child as well
    proc = subprocess.Popen(argv, cwd=ROOT, env=child_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        ids = [_submit(deps, f"idle {i}") for i in range(jobs)]
        paths = [f"/api/jobs/{ids[i % jobs]}/stream?token={issue_stream_token(deps.settings, USER, ids[i % jobs])}"
                 for i in range(connections)]
        # Warm up (boto3 loads its service models on the first store call), then sample: the
        # image's CMD is ``sh -c "exec uvicorn ..."``, so proc.pid is uvicorn itself.
        token = issue_stream_token(deps.settings, USER, ids[0])
        httpx.get(f"http://127.0.0.1:{port}/api/jobs/{ids[0]}/events?token={token}", timeout=10)
        base_rss = _rss_kb(proc.pid)

        async def run() -> int:
            conns = await _hold(port, paths)
            await asyncio.sleep(2.0)  # let pollers run a few idle rounds before sampling
            rss = _rss_kb(proc.pid)
            for _, w in conns:
                w.close()
            return rss

        rss = asyncio.run(run())
        return {"idle_connections": connections, "idle_jobs": jobs, "rss_mb_warm_server": round(base_rss / 1024, 1),
                f"rss_mb_{connections}_idle_sse": round(rss / 1024, 1)}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def measure(quick: bool = False) -> dict[str, Any]:
    """All stream measurements on a fresh local moto server; returns the numbers."""
    out: dict[str, Any] = {}
    with _stack(step_seconds=0.1) as (env, deps), _serve(deps) as (base, log):
        lat = measure_latency(base, deps, env, jobs=2 if quick else 6, steps=4 if quick else 6)
        out.update({k: v for k, v in lat.items() if k != "finished_jobs"})
        out.update(measure_reconnect(base, deps, lat["finished_jobs"][0], samples=20 if quick else 100))
        out.update(measure_fanout_reads(base, log, deps, env, watchers=100, steps=4 if quick else 8))
        out.update(measure_idle_rss(env, deps, connections=200 if quick else 1000, jobs=20))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    numbers = measure(quick=args.quick)
    for k, v in numbers.items():
        print(f"{k:32} {v}")
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2))


if __name__ == "__main__":
    main()
