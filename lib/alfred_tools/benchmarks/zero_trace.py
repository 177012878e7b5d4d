"""``python -m alfred_tools.benchmarks.zero_trace [--runs N] [--traces K] [--overhead]``: issue 28's
two whole-job goals alone, on a fresh emulator, and where a zero-step job's time goes.

Not part of ``alfred-jobs bench`` (which it mirrors): a tool to look at one figure at a time.

- ``--traces K``: K jobs (zero-step, or steps of ``--trace-step-seconds``), each printed as the
  serial sequence of AWS calls the worker and the job API + stream process made, from the
  ``POST /api/chat`` (0 ms) to the terminal frame at the client and after it: start and end in
  ms, the thread, the operation and its target (the botocore marks of
  ``counting.RequestCounter``; one machine, one clock).
- then ``--runs N`` zero-step jobs through HTTP and N ``durable_floor_run``s, taken in turn:
  ``zero_step_job_ms`` / ``zero_step_floor_ms`` (p50 each) and their ratio (goal ≤ 1.5);
- ``--overhead``: then ``overhead_scenario`` (5 x 1 s steps, ``--overhead-runs`` a side) and its floor, as ``bench.run``
  computes them (goal ≤ floor + 0.01).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from alfred_tools.benchmarks.common import (
    QUICK,
    BenchStack,
    Server,
    bench_stack,
    ms,
    p50,
    sse_frames,
    start_server,
    start_worker,
)
from alfred_tools.benchmarks.jobs import MESSAGE, TERMINAL, durable_floor_run, overhead_scenario
from alfred_tools.emulator import emulator_env, start_moto_server


def traced_job(server: Server, client: httpx.Client) -> tuple[str, float, float, float]:
    """One job through HTTP: (job_id, wall time of the POST, of the 202 read, of the terminal frame)."""
    t0 = time.time()
    p0 = time.perf_counter()
    r = client.post(f"{server.base}/api/chat", json={"message": MESSAGE}, headers=server.headers, timeout=30)
    r.raise_for_status()
    answered = t0 + time.perf_counter() - p0
    job_id = str(r.json()["job_id"])
    for f in sse_frames(client, f"{server.base}/api/jobs/{job_id}/stream", server.headers):
        if f.type in TERMINAL:
            return job_id, t0, answered, t0 + f.at - p0
    raise RuntimeError("the stream ended without a terminal event")


def print_trace(t0: float, answered: float, terminal: float, calls: list[tuple[str, list[Any]]]) -> None:
    rows = sorted(((c[2], c[1], who, c[0], c[3], c[4]) for who, cs in calls for c in cs), key=lambda r: r[0])
    print(f"  202 read at {ms(answered - t0):7.1f} ms; terminal frame at {ms(terminal - t0):7.1f} ms")
    marked = False
    for start, end, who, op, target, thread in rows:
        if end < t0:
            continue  # (a long poll that began before the POST and returned with its message is shown)
        if not marked and start > terminal:
            print("  ---- terminal frame parsed at the client ----")
            marked = True
        print(f"  {ms(start - t0):7.1f} {ms(end - t0):7.1f} {ms(end - start):6.1f}  {who:6} {thread[:14]:14} "
              f"{op:28} {target[-28:]}")


def traces(stack: BenchStack, server: Server, count: int, step_seconds: float) -> None:
    """Print ``count`` jobs' serial calls (their own worker, steps of ``step_seconds``)."""
    worker = start_worker(stack, 1, ALFRED_DEMO_STEP_SECONDS=str(step_seconds), ALFRED_BENCH_MARKS="1")
    try:
        with httpx.Client() as client:
            traced_job(server, client)  # warm-up
            time.sleep(0.3)
            for k in range(count):
                server.counts(reset=True)
                worker.counts()
                _, t0, answered, terminal = traced_job(server, client)
                time.sleep(0.5)  # the work after the terminal event (gate, delete)
                w, s = worker.counts(), server.counts(reset=True)
                print(f"trace {k + 1} (steps of {step_seconds:g} s): {len(w['timeline'])} worker calls, "
                      f"{len(s['timeline'])} server calls")
                print_trace(t0, answered, terminal, [("worker", w["timeline"]), ("server", s["timeline"])])
    finally:
        stack.stop(worker.proc)


def zero_vs_floor(stack: BenchStack, floor_stack: BenchStack, server: Server, runs: int) -> dict[str, Any]:
    """Zero-step jobs and the floor in turn. The floor runs on a stack of its own: our worker would
    take its messages off a shared queue."""
    worker = start_worker(stack, 1, ALFRED_DEMO_STEP_SECONDS="0", ALFRED_BENCH_MARKS="1")
    try:
        with httpx.Client() as client:
            traced_job(server, client)  # warm-up
            durable_floor_run(floor_stack)
            time.sleep(0.3)
            worker.counts()
            runs_seen: list[tuple[str, float, float]] = []
            floor: list[float] = []
            for i in range(runs):
                if i % 2:
                    floor.append(durable_floor_run(floor_stack)[0])
                job_id, t0, _, terminal = traced_job(server, client)
                runs_seen.append((job_id, t0, terminal))
                if not i % 2:
                    floor.append(durable_floor_run(floor_stack)[0])
            time.sleep(0.5)
            marks = worker.counts()["marks"]
    finally:
        stack.stop(worker.proc)
    ours = [terminal - t0 for _, t0, terminal in runs_seen]
    # The worker's side and the stream's: POST → the terminal event's put returned in the worker,
    # and from there → the terminal frame parsed at the client (the stream's poll, read and frame).
    written = {k.split("#")[0]: float(m["written"]) for k, m in marks.items()
               if m.get("type") in TERMINAL and "written" in m}
    worker_side = [written[j] - t0 for j, t0, _ in runs_seen if j in written]
    stream_side = [terminal - written[j] for j, _, terminal in runs_seen if j in written]
    return {"zero_step_job_ms": ms(p50(ours)), "zero_step_floor_ms": ms(p50(floor)),
            "ratio": round(p50(ours) / p50(floor), 3),
            "terminal_written_ms": ms(p50(worker_side)), "written_to_frame_ms": ms(p50(stream_side)),
            "worker_side_ratio": round(p50(worker_side) / p50(floor), 3),
            "ours_ms": [ms(t) for t in ours], "floor_ms": [ms(t) for t in floor],
            "written_to_frame_all_ms": [ms(t) for t in stream_side]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--traces", type=int, default=2)
    p.add_argument("--trace-step-seconds", type=float, default=0.0)
    p.add_argument("--overhead", action="store_true")
    p.add_argument("--overhead-runs", type=int, default=QUICK.overhead_runs)
    args = p.parse_args()
    load0 = os.getloadavg()
    server = start_moto_server()
    try:
        env = emulator_env(server.endpoint)
        with tempfile.TemporaryDirectory(prefix="alfred-zero-") as tmpdir, \
                bench_stack(env, Path(tmpdir)) as st, bench_stack(env, Path(tmpdir)) as floor_st:
            srv = start_server(st, "dev", ALFRED_BENCH_MARKS="1")
            traces(st, srv, args.traces, args.trace_step_seconds)
            out = zero_vs_floor(st, floor_st, srv, args.runs) if args.runs else {}
            if args.overhead:
                over = overhead_scenario(st, srv, replace(QUICK, overhead_runs=args.overhead_runs))
                floor = [durable_floor_run(floor_st) for _ in range(5)]
                extra = p50([t - a for t, a in floor])
                inline = over["overhead_inline_s"]
                out.update({k: over[k] for k in ("overhead_ratio", "overhead_job_s", "overhead_inline_s")})
                out["overhead_floor_ratio"] = round((inline + extra) / inline, 4)
                out["overhead_calls"] = over["requests"]["calls"]
            st.stop(srv.proc)
    finally:
        server.stop()
    out["loadavg"] = [load0, os.getloadavg()]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
