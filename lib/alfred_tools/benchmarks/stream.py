"""The stream function under measurement, served by uvicorn in its own process.

- ``delivery_p50_ms`` / ``delivery_p99_ms``: a checkpoint is written here (``Journal.append``
  returns), an SSE client here receives its frame; the gap between events is drawn at random
  between 20 ms and 1 s (agent steps and reply deltas), so the poller's phase is not locked to
  the writer's.
- ``reconnect_p50_ms``: a client reconnects to a live job with ``Last-Event-ID: k`` (a fresh
  connection, nobody else watching, the job record lagging behind its log as it does mid-job);
  time to the frame ``k+1``.
- ``watcher_read_ratio``: DynamoDB reads/s the stream process makes for one live job with W
  watchers / with 1, counted by botocore handlers in that process, over the same write pattern.
- ``idle_sse_rss_mb``: RSS of a stream-only process holding C idle SSE connections (read from
  /proc); with fewer than the target connections the per-connection growth is scaled up.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from dataclasses import replace
from typing import Any

import httpx

from alfred_jobs.domain.models import Event, EventType, Job, JobStatus
from alfred_jobs.durability.journal import Journal
from alfred_tools.benchmarks.common import USER, BenchStack, Server, Sizes, ms, p50, pct, sse_frames, start_server

READ_OPS = ("dynamodb.GetItem", "dynamodb.BatchGetItem", "dynamodb.Query")


def make_job(stack: BenchStack) -> Job:
    """A job record owned by the bench user (no queue message: nobody runs it but us)."""
    now = time.time()
    job = Job(job_id=uuid.uuid4().hex, user_id=USER, message="bench", conversation_id=uuid.uuid4().hex,
              created_at=now, expires_at=int(now + stack.settings.retention_seconds))
    stack.deps.jobs.create(job)
    return job


class Writer:
    """Writes a job's log the way a worker does (status, steps..., complete), one event at a time."""

    def __init__(self, stack: BenchStack, job: Job) -> None:
        self.journal = Journal(stack.deps.log, stack.settings.retention_seconds)
        self.job = job
        self.head = 0
        self.owner = uuid.uuid4().hex
        self.written: dict[int, float] = {}

    def put(self, type: EventType, data: dict[str, Any]) -> int:
        ev = Event.new(self.head + 1, type, data, attempt=1, writer=self.owner, at=time.time())
        self.journal.append(self.job.job_id, ev, self.job.expires_at)
        self.written[ev.seq] = time.perf_counter()
        self.head = ev.seq
        return ev.seq

    def step(self) -> int:
        i = self.head + 1
        return self.put(EventType.STEP, {"index": i, "total": 1000, "label": f"step {i}", "status": "completed"})


def _stream_url(server: Server, job_id: str) -> str:
    return f"{server.base}/api/jobs/{job_id}/stream"


def delivery_scenario(stack: BenchStack, server: Server, sizes: Sizes, seed: int = 7) -> dict[str, Any]:
    """Checkpoint written → frame received at an SSE client."""
    job = make_job(stack)
    w = Writer(stack, job)
    received: dict[int, float] = {}
    opened = threading.Event()
    failure: list[BaseException] = []

    def read() -> None:
        try:
            with httpx.Client() as client:
                for f in sse_frames(client, _stream_url(server, job.job_id), server.headers, opened.set):
                    received[f.seq] = f.at
                    if f.type in ("complete", "failed", "cancelled"):
                        return
        except BaseException as exc:  # reported below
            failure.append(exc)
            opened.set()

    t = threading.Thread(target=read, daemon=True)
    t.start()
    opened.wait(30)
    rnd = random.Random(seed)
    w.put(EventType.STATUS, {"status": "running"})
    for _ in range(sizes.delivery_events):
        time.sleep(rnd.uniform(0.02, 1.0))
        w.step()
    time.sleep(rnd.uniform(0.02, 1.0))
    w.put(EventType.COMPLETE, {"output": {"reply": "done"}})
    t.join(30)
    if failure:
        raise RuntimeError(f"delivery client failed: {failure[0]!r}")
    lat = [received[s] - w.written[s] for s in w.written if s in received and s > 1]
    return {"delivery_p50_ms": ms(p50(lat)), "delivery_p99_ms": ms(pct(lat, 99)),
            "delivery_samples": len(lat), "delivery_missing": sum(1 for s in w.written if s not in received)}


def reconnect_scenario(stack: BenchStack, server: Server, sizes: Sizes, events: int = 30) -> dict[str, Any]:
    """Last-Event-ID: k on a fresh connection → the frame k+1."""
    job = make_job(stack)
    w = Writer(stack, job)
    w.put(EventType.STATUS, {"status": "running"})
    # The worker projects the record when it opens the attempt; later events are only in the log.
    stack.deps.jobs.save_projection(replace(job, status=JobStatus.RUNNING, last_seq=1), owner=None)
    for _ in range(events - 1):
        w.step()
    rnd = random.Random(11)
    lat: list[float] = []
    server.counts(reset=True)
    for _ in range(sizes.reconnects):
        k = rnd.randint(1, events - 1)
        with httpx.Client() as client:
            t0 = time.perf_counter()
            for f in sse_frames(client, _stream_url(server, job.job_id),
                                {**server.headers, "Last-Event-ID": str(k)}):
                if f.seq != k + 1:
                    raise RuntimeError(f"reconnect after {k} got {f.seq} first")
                lat.append(f.at - t0)
                break
    # The store reads behind each reconnect (auth + the new channel's reads of the log): the
    # channel starts from the record's head, not the client's cursor, so a record lagging its log
    # makes every reconnect re-read the lag (see docs/performance.md, issue 16).
    reads = _reads(server.counts(reset=True))
    return {"reconnect_p50_ms": ms(p50(lat)), "reconnect_p99_ms": ms(pct(lat, 99)),
            "reconnect_reads_per_connect": round(reads / max(1, sizes.reconnects), 2)}


def _reads(counts: dict[str, Any]) -> int:
    return int(sum(counts["calls"].get(op, 0) for op in READ_OPS))


async def _hold_watchers(url: str, headers: dict[str, str], n: int, ready: threading.Event,
                         stop: threading.Event) -> int:
    """Open ``n`` SSE connections, count their frames until ``stop``."""
    frames = [0]

    async def one(client: httpx.AsyncClient, opened: asyncio.Event) -> None:
        async with client.stream("GET", url, headers=headers) as r:
            opened.set()
            async for line in r.aiter_lines():
                if line.startswith("id:"):
                    frames[0] += 1
                if stop.is_set():
                    return

    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60, connect=30)) as client:
        openers = [asyncio.Event() for _ in range(n)]
        tasks = [asyncio.create_task(one(client, ev)) for ev in openers]
        await asyncio.gather(*(asyncio.wait_for(ev.wait(), 60) for ev in openers))
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return frames[0]


def _reads_per_second(stack: BenchStack, server: Server, watchers: int, seconds: float, seed: int,
                      ) -> tuple[float, int]:
    job = make_job(stack)
    w = Writer(stack, job)
    w.put(EventType.STATUS, {"status": "running"})
    ready, stop = threading.Event(), threading.Event()
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(asyncio.run(_hold_watchers(
        _stream_url(server, job.job_id), server.headers, watchers, ready, stop))), daemon=True)
    t.start()
    if not ready.wait(120):
        raise RuntimeError("watchers did not connect")
    time.sleep(0.5)
    server.counts(reset=True)  # connection set-up (auth, first read) is not the steady state
    rnd = random.Random(seed)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        time.sleep(rnd.uniform(0.02, 0.5))
        w.step()
    elapsed = time.perf_counter() - t0
    reads = _reads(server.counts(reset=True))
    stop.set()
    w.put(EventType.COMPLETE, {"output": {"reply": "done"}})
    t.join(30)
    return reads / elapsed, (result[0] if result else 0)


def watcher_reads_scenario(stack: BenchStack, server: Server, sizes: Sizes) -> dict[str, Any]:
    """Store reads/s for one job: W watchers / 1 watcher, same write pattern (same seed)."""
    one, _ = _reads_per_second(stack, server, 1, sizes.watch_seconds, seed=3)
    many, _ = _reads_per_second(stack, server, sizes.watchers, sizes.watch_seconds, seed=3)
    return {"watcher_read_ratio": round(many / one, 3) if one else float("nan"),
            "reads_per_s_1_watcher": round(one, 2), f"reads_per_s_{sizes.watchers}_watchers": round(many, 2),
            "watchers": sizes.watchers}


async def _idle_connections(host: str, port: int, paths: list[str], token: str, n: int,
                            ready: threading.Event, stop: threading.Event) -> None:
    """Open ``n`` raw SSE connections (read the headers and the first chunk), then just hold them."""
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    sem = asyncio.Semaphore(50)

    async def one(i: int) -> None:
        async with sem:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write((f"GET {paths[i % len(paths)]} HTTP/1.1\r\nHost: {host}\r\n"
                          f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n").encode())
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
            if b" 200 " not in head.split(b"\r\n", 1)[0]:
                raise RuntimeError(f"stream refused: {head[:100]!r}")
            await asyncio.wait_for(reader.read(64), 60)  # the retry hint: the stream is live
            conns.append((reader, writer))

    await asyncio.gather(*(one(i) for i in range(n)))
    ready.set()
    while not stop.is_set():
        await asyncio.sleep(0.1)
    for _, writer in conns:
        writer.close()


def idle_rss_scenario(stack: BenchStack, sizes: Sizes) -> dict[str, Any]:
    """RSS of a stream-only process before and while holding idle SSE connections."""
    server = start_server(stack, "stream")
    try:
        # Idle watchers of pending jobs: about 100 connections per job, so the pollers (4 reads/s
        # each while idle) stay few; the memory measured is the connections'.
        jobs = [make_job(stack) for _ in range(max(1, sizes.idle_connections // 100))]
        paths = [f"/api/jobs/{j.job_id}/stream" for j in jobs]
        # Warm up: one connection through every code path, so imports are not counted as load.
        with httpx.Client() as client, client.stream(
                "GET", f"{server.base}{paths[0]}", headers=server.headers, timeout=30) as resp:
            for _ in resp.iter_lines():
                break  # the retry hint: the stream is open
        with httpx.Client() as client:
            client.get(f"{server.base}/healthz")
        time.sleep(1.0)
        base_kib = server.rss_kib()
        ready, stop = threading.Event(), threading.Event()
        host, port = server.base.removeprefix("http://").split(":")
        errors: list[BaseException] = []

        def hold() -> None:
            try:
                asyncio.run(_idle_connections(host, int(port), paths, server.token, sizes.idle_connections,
                                              ready, stop))
            except BaseException as exc:
                errors.append(exc)
                ready.set()

        t = threading.Thread(target=hold, daemon=True)
        t.start()
        ready.wait(300)
        if errors:
            raise RuntimeError(f"idle connections failed: {errors[0]!r}")
        time.sleep(2.0)
        held_kib = server.rss_kib()
        stop.set()
        t.join(30)
    finally:
        stack.stop(server.proc)
    per_conn = (held_kib - base_kib) / sizes.idle_connections
    scaled = base_kib + per_conn * sizes.target_connections
    return {"idle_sse_rss_mb": round(scaled / 1024, 1), "idle_sse_base_rss_mb": round(base_kib / 1024, 1),
            "idle_sse_kib_per_connection": round(per_conn, 1),
            "idle_sse_connections_measured": sizes.idle_connections,
            "idle_sse_rss_measured_mb": round(held_kib / 1024, 1),
            "idle_sse_scaled": sizes.idle_connections != sizes.target_connections}
