"""What the scenarios share: sizes, statistics, the local stack, child processes, an SSE client."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from alfred_jobs.service.auth import issue_local_token
from alfred_tools.emulator import free_port, wait_http
from alfred_tools.localstack import LocalStack, resource_env

USER = "bench"


@dataclass(frozen=True)
class Sizes:
    """How much of each scenario to run (``full``, ``quick``, or ``tiny`` for the harness test)."""

    name: str
    samples: int = 200            # storage micro-benchmarks, per side
    growth_events: int = 10_000   # events stored before the "grown" checkpoint measurement
    delivery_events: int = 60
    reconnects: int = 40
    watchers: int = 100
    watch_seconds: float = 6.0
    idle_connections: int = 1000
    target_connections: int = 1000
    step_seconds: float = 1.0     # the overhead scenario's step length
    overhead_runs: int = 3
    zero_step_runs: int = 15
    throughput_jobs: int = 60
    workers: int = 2
    celery_zero_runs: int = 8
    celery_overhead_runs: int = 2
    celery_default_runs: int = 3  # the peer with the SQS transport's default 1 s polling
    # issue 16, what a user waits for (benchmarks/latency.py, coldstart.py)
    cancel_jobs: int = 30         # jobs cancelled at a random moment (~3 s each)
    first_event_runs: int = 20    # zero-step jobs: submit → first frame
    cold_starts: int = 5          # fresh submit-function processes
    first_token_runs: int = 40    # issue 28: plain chat turns, POST → first reply delta


FULL = Sizes("full")
QUICK = Sizes("quick", samples=120, delivery_events=40, reconnects=25, watch_seconds=4.0,
              idle_connections=200, overhead_runs=2, zero_step_runs=10, throughput_jobs=40,
              celery_zero_runs=5, celery_overhead_runs=1, celery_default_runs=2)
TINY = Sizes("tiny", samples=15, growth_events=300, delivery_events=8, reconnects=5, watchers=10,
             watch_seconds=1.5, idle_connections=20, step_seconds=0.2, overhead_runs=1, zero_step_runs=2,
             throughput_jobs=6, workers=1, celery_zero_runs=1, celery_overhead_runs=1,
             celery_default_runs=1)
# Issue 16's sizes, set apart so the lines above stay as they were.
QUICK = replace(QUICK, cancel_jobs=15, first_event_runs=10, cold_starts=5, first_token_runs=15)
TINY = replace(TINY, cancel_jobs=2, first_event_runs=2, cold_starts=1, first_token_runs=2)


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank on the sorted values; nan when empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q / 100 * (len(s) - 1))))
    return s[k]


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux ``/proc``; NaN elsewhere): what
    the cost model's CPU stretch needs (a Lambda's CPU share is proportional to its memory)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    # after the command's ")": state is field 3, utime 14 and stime 15 (1-based, proc(5))
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(a: Callable[[], Any], b: Callable[[], Any], n: int, warmup: int = 5,
                ) -> tuple[list[float], list[float]]:
    """Time ``a`` and ``b`` alternately ``n`` times each (after a warm-up): the same noise hits both."""
    for _ in range(warmup):
        a()
        b()
    ta: list[float] = []
    tb: list[float] = []
    for i in range(n):
        first, second = (a, b) if i % 2 == 0 else (b, a)
        t1 = timed(first)
        t2 = timed(second)
        ta.append(t1 if first is a else t2)
        tb.append(t2 if first is a else t1)
    return ta, tb


# ---- the local stack ---------------------------------------------------------------------------


@dataclass(eq=False)
class BenchStack(LocalStack):
    """One scenario's resources on the emulator: the one local stack (``alfred_tools.localstack``),
    children quiet unless ``ALFRED_BENCH_VERBOSE``, and a directory for the children's files."""

    tmp: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))


@contextmanager
def bench_stack(endpoint_env: Mapping[str, str], tmp: Path, **overrides: str) -> Iterator[BenchStack]:
    """Fresh tables and queues (from template.yaml) for one scenario; stops its children on exit."""
    prefix = f"b{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **endpoint_env, **resource_env(prefix), "ALFRED_LEASE_SECONDS": "30",
           "ALFRED_LOG_LEVEL": "WARNING", "POWERTOOLS_LOG_LEVEL": "WARNING", **overrides}
    verbose = bool(os.environ.get("ALFRED_BENCH_VERBOSE"))
    stack = BenchStack.from_env(env, tmp=tmp, child_stdout=subprocess.DEVNULL,
                                child_stderr=None if verbose else subprocess.DEVNULL)
    with stack.running(emulator=False):
        yield stack


# ---- the server process -----------------------------------------------------------------------


@dataclass
class Server:
    """``alfred_tools.benchmarks.serve`` running in a child process."""

    base: str
    proc: subprocess.Popen[bytes]
    token: str

    def counts(self, reset: bool = False) -> dict[str, Any]:
        r = httpx.get(f"{self.base}/bench/counts", params={"reset": "true" if reset else "false"}, timeout=10)
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    def rss_kib(self) -> int:
        from alfred_tools.benchmarks.serve import rss_kib

        return rss_kib(self.proc.pid)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def start_server(stack: BenchStack, app: str = "dev", *extra: str, **extra_env: str) -> Server:
    port = free_port()
    proc = stack.spawn(["-m", "alfred_tools.benchmarks.serve", str(port), "--app", app, *extra], **extra_env)
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/healthz", timeout=60, proc=proc)
    return Server(base, proc, issue_local_token(stack.settings, USER))


# ---- a worker process that counts its calls -------------------------------------------------------


@dataclass
class CountedWorker:
    proc: subprocess.Popen[bytes]
    counts_file: Path

    def _read(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.counts_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return data

    def _wait(self, newer_than: int, timeout: float) -> dict[str, Any]:
        """The first snapshot numbered above ``newer_than``; fails at once if the worker died."""
        deadline = time.monotonic() + timeout
        while True:
            data = self._read()
            if data is not None and int(data.get("dump", 0)) > newer_than:
                return data
            if self.proc.poll() is not None:
                raise RuntimeError(f"the counted worker exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("the worker did not write its counts")
            time.sleep(0.02)

    def counts(self, timeout: float = 120.0) -> dict[str, Any]:
        """Ask the worker for its counts since the last time (SIGUSR1) and read them."""
        before = self._read()
        self.proc.send_signal(signal.SIGUSR1)
        return self._wait(int(before.get("dump", 0)) if before else 0, timeout)


def start_worker(stack: BenchStack, concurrency: int = 1, **extra_env: str) -> CountedWorker:
    path = stack.tmp / f"worker-{uuid.uuid4().hex[:8]}.json"
    proc = stack.spawn(["-m", "alfred_tools.benchmarks.worker", str(concurrency), str(path)], **extra_env)
    w = CountedWorker(proc, path)
    # Ready once its first snapshot exists: its SIGUSR1 handler is installed by then. A fixed
    # sleep here killed a slow-starting worker on a busy machine (SIGUSR1's default is to exit).
    w._wait(0, timeout=300)
    return w


# ---- an SSE client ----------------------------------------------------------------------------


@dataclass
class Frame:
    seq: int
    type: str
    data: dict[str, Any]
    at: float  # perf_counter when the frame was complete


def sse_frames(client: httpx.Client, url: str, headers: dict[str, str],
               on_open: Callable[[], None] | None = None) -> Iterator[Frame]:
    """Frames of an SSE stream as they arrive (comments and ``retry:`` skipped)."""
    with client.stream("GET", url, headers={**headers, "Accept": "text/event-stream"}, timeout=60) as r:
        if r.status_code != 200:
            raise RuntimeError(f"stream answered {r.status_code}: {r.read()[:200]!r}")
        if on_open:
            on_open()
        seq, typ, data = 0, "", ""
        for line in r.iter_lines():
            if line.startswith("id:"):
                seq = int(line[3:].strip())
            elif line.startswith("event:"):
                typ = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
            elif line == "" and data:
                yield Frame(seq, typ, json.loads(data), time.perf_counter())
                seq, typ, data = 0, "", ""
