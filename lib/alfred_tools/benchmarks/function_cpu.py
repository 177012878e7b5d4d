"""Our process CPU per job, and the stream's memory as it serves, for the cost model's CPU share
(docs/cost.md "The CPU share"; issue 28).

    python -m alfred_tools.benchmarks.function_cpu job [STEP_SECONDS] [RUNS]   # default 2.8 s, 3 runs
    python -m alfred_tools.benchmarks.function_cpu stream

``job``: the bench's overhead scenario (the job API and stream in one server process, one worker
process, on the emulator) with steps of ``STEP_SECONDS``: at 2.8 s the job is about 15 s, the
priced job, measured directly instead of scaled from the bench's 5 x 1 s job; and the zero-step
job. Prints each one's CPU seconds per job by function (``jobs.CpuSplit``).
``stream``: the stream app alone in its own process (``serve --app stream``, as in the stream
image), fed by a worker and the job API: its peak RSS (VmHWM) and CPU per job for one watched
job, a job with many events (20 steps and an 8 s reply), and five clients on one job (a service
stream's case: on Lambda each stream has its own execution environment).
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from alfred_tools.benchmarks import jobs
from alfred_tools.benchmarks.common import (
    QUICK,
    Server,
    bench_stack,
    cpu_seconds,
    sse_frames,
    start_server,
    start_worker,
)
from alfred_tools.emulator import emulator_env, start_moto_server


def _peak_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def job(step_seconds: float = 2.8, runs: int = 3) -> dict[str, Any]:
    sizes = replace(QUICK, overhead_runs=runs, zero_step_runs=10, step_seconds=step_seconds)
    moto = start_moto_server()
    try:
        with tempfile.TemporaryDirectory() as tmp, bench_stack(emulator_env(moto.endpoint), Path(tmp)) as st:
            srv = start_server(st, "dev")
            over = jobs.overhead_scenario(st, srv, sizes)
            zero = jobs.zero_step_scenario(st, srv, sizes)
    finally:
        moto.stop()
    return {"step_seconds": step_seconds, "job_s": over["overhead_job_s"], "inline_s": over["overhead_inline_s"],
            "cpu_s_per_job": over["cpu_s_per_job"], "zero_step_job_ms": zero["zero_step_job_ms"],
            "zero_step_cpu_s_per_job": zero["cpu_s_per_job"]}


def _watch(base: str, job_id: str, headers: dict[str, str], frames: list[int]) -> None:
    n = 0
    with httpx.Client(timeout=120) as client:
        for f in sse_frames(client, f"{base}/api/jobs/{job_id}/stream", headers):
            n += 1
            if f.type in jobs.TERMINAL:
                break
    frames.append(n)


def _one(api: Server, stream: Server, message: str, clients: int) -> int:
    r = httpx.post(f"{api.base}/api/chat", json={"message": message}, headers=api.headers, timeout=60)
    r.raise_for_status()
    frames: list[int] = []
    threads = [threading.Thread(target=_watch, args=(stream.base, r.json()["job_id"], api.headers, frames))
               for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return min(frames, default=0)


CASES = (("one job, 5 x 1 s steps", "chicken and rice for tonight", 1, 3),
         ("many events: 20 steps, an 8 s reply", "chicken and rice for tonight [steps=20] [reply=8]", 1, 2),
         ("5 clients on one job (a service stream's case)", "chicken and rice for tonight", 5, 2))


def stream() -> dict[str, Any]:
    moto = start_moto_server()
    out: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp, bench_stack(emulator_env(moto.endpoint), Path(tmp)) as st:
            api, srv = start_server(st, "dev"), start_server(st, "stream")
            start_worker(st, 1, ALFRED_DEMO_STEP_SECONDS="1")
            pid = srv.proc.pid
            out["after_start_mb"] = _peak_mb(pid)
            _one(api, srv, "warm up [steps=1]", 1)
            out["after_one_job_mb"] = _peak_mb(pid)
            for name, message, clients, n in CASES:
                c0, t0 = cpu_seconds(pid), time.perf_counter()
                frames = [_one(api, srv, message, clients) for _ in range(n)]
                out[name] = {"cpu_s_per_job": round((cpu_seconds(pid) - c0) / n, 4),
                             "wall_s_per_job": round((time.perf_counter() - t0) / n, 2),
                             "frames_per_client": frames[0], "peak_rss_mb_so_far": _peak_mb(pid)}
    finally:
        moto.stop()
    return out


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "job"
    if which == "job":
        step = float(sys.argv[2]) if len(sys.argv) > 2 else 2.8
        print(json.dumps(job(step, int(sys.argv[3]) if len(sys.argv) > 3 else 3)))
    else:
        print(json.dumps(stream(), indent=1))
