"""Whole jobs: overhead against the inline agent, zero-step latency, throughput against its floor.

- ``overhead_ratio``: a 5-step job of the demo agent with 1 s steps, ``POST /api/chat`` → the
  terminal SSE frame at the client (job API + stream in one uvicorn process, one worker process)
  / the same agent's think, act x 5 and reply called inline in this process (the seed's one-request
  architecture). Runs alternate.
- ``zero_step_job_ms``: the same path with zero-length steps, p50.
- ``jobs_per_s``: N worker processes, zero-length steps, M jobs submitted back to back, from the
  first submit to the last job recorded complete.
- ``floor_jobs_per_s``: the same M jobs with the exact calls one job made (recorded by the
  worker's botocore handlers) replayed by N bare processes, no runner, no agent, no handler.
- ``requests_per_job``: AWS calls per job by operation, counted in every process that made them.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from alfred_jobs.adapters.aws import serialize
from alfred_jobs.agents.demo import DemoAgent
from alfred_jobs.domain.agent import AgentContext
from alfred_jobs.domain.models import ChatRequest
from alfred_jobs.service.jobs import JobService
from alfred_tools.benchmarks.common import (
    USER,
    BenchStack,
    CountedWorker,
    Server,
    Sizes,
    cpu_seconds,
    ms,
    p50,
    sse_frames,
    start_worker,
)
from alfred_tools.benchmarks.counting import EMPTY_RECEIVE, merge

TERMINAL = ("complete", "failed", "cancelled")
MESSAGE = "chicken and rice for tonight"


def job_through_http(server: Server, client: httpx.Client, message: str = MESSAGE,
                     cpu: CpuSplit | None = None) -> tuple[float, str]:
    """Submit over HTTP, follow the SSE stream to the terminal frame; (seconds, terminal type).
    With ``cpu``, the server's CPU seconds while it answered the submit are added to its share."""
    t0 = time.perf_counter()
    before = cpu_seconds(server.proc.pid) if cpu else 0.0
    r = client.post(f"{server.base}/api/chat", json={"message": message}, headers=server.headers, timeout=30)
    if cpu:
        cpu.submit += cpu_seconds(server.proc.pid) - before
    r.raise_for_status()
    job_id = r.json()["job_id"]
    for f in sse_frames(client, f"{server.base}/api/jobs/{job_id}/stream", server.headers):
        if f.type in TERMINAL:
            return f.at - t0, f.type
    raise RuntimeError("the stream ended without a terminal event")


@dataclass
class CpuSplit:
    """The process CPU seconds of a run of jobs, by function: the worker's process, and the
    server's split into the submit (while it answered ``POST /api/chat``) and the stream (the
    rest: the SSE stream of each job). The server process hosts both (``serve.py``); on AWS they
    are separate Lambdas."""

    worker_pid: int
    server_pid: int
    submit: float = 0.0
    _worker0: float = 0.0
    _server0: float = 0.0

    def start(self) -> CpuSplit:
        self._worker0, self._server0 = cpu_seconds(self.worker_pid), cpu_seconds(self.server_pid)
        return self

    def per_job(self, jobs: int) -> dict[str, float]:
        worker = cpu_seconds(self.worker_pid) - self._worker0
        server = cpu_seconds(self.server_pid) - self._server0
        return {"worker": round(worker / jobs, 4), "stream": round((server - self.submit) / jobs, 4),
                "submit": round(self.submit / jobs, 4)}


def inline_run(stack: BenchStack, step_seconds: float, message: str = MESSAGE) -> float:
    """The agent run inline, as in one HTTP request: think, act on every step, reply."""
    settings = stack.settings.model_copy(update={"demo_step_seconds": step_seconds})
    agent = DemoAgent(stack.deps.agent_data, settings)
    ctx = AgentContext(job_id=uuid.uuid4().hex, user_id=USER, conversation_id=uuid.uuid4().hex, message=message,
                       history=[], attempt=1, step_outputs={}, cancelled=lambda: False)
    t0 = time.perf_counter()
    plan = agent.think(ctx)
    for step in plan.steps:
        ctx.step_outputs[step.index] = agent.act(step, ctx)
    "".join(agent.reply(plan, ctx))
    return time.perf_counter() - t0


def per_job(snapshots: list[dict[str, Any]], jobs: int) -> dict[str, dict[str, float]]:
    """Counts of several processes summed, per job; idle queue polls left out."""
    total = merge(*snapshots)
    total["calls"].pop(EMPTY_RECEIVE, None)
    return {k: {op: round(n / jobs, 2) for op, n in sorted(v.items())} for k, v in total.items()}


def overhead_scenario(stack: BenchStack, server: Server, sizes: Sizes) -> dict[str, Any]:
    """Durable 5 x step job through a worker vs the same agent inline, alternating."""
    worker = start_worker(stack, 1, ALFRED_DEMO_STEP_SECONDS=str(sizes.step_seconds))
    try:
        with httpx.Client() as client:
            # Warm-up with a one-step job: imports, connections, the first job's set-up.
            job_through_http(server, client, MESSAGE + " [steps=1]")
            inline_run(stack, sizes.step_seconds, MESSAGE + " [steps=1]")
            time.sleep(0.3)
            server.counts(reset=True)
            worker.counts()
            durable: list[float] = []
            inline: list[float] = []
            cpu = CpuSplit(worker.proc.pid, server.proc.pid).start()
            for i in range(sizes.overhead_runs):
                if i % 2:
                    inline.append(inline_run(stack, sizes.step_seconds))
                t, kind = job_through_http(server, client, cpu=cpu)
                if kind != "complete":
                    raise RuntimeError(f"the job ended {kind}")
                durable.append(t)
                if not i % 2:
                    inline.append(inline_run(stack, sizes.step_seconds))
            time.sleep(0.5)  # the worker deletes the message after the client saw the end
            cpu_per_job = cpu.per_job(sizes.overhead_runs)
            counts = per_job([server.counts(reset=True), worker.counts()], sizes.overhead_runs)
    finally:
        stack.stop(worker.proc)
    return {"overhead_ratio": round(p50(durable) / p50(inline), 4), "overhead_job_s": round(p50(durable), 3),
            "overhead_inline_s": round(p50(inline), 3), "requests": counts, "cpu_s_per_job": cpu_per_job}


def zero_step_scenario(stack: BenchStack, server: Server, sizes: Sizes) -> dict[str, Any]:
    """Submit → terminal frame with zero-length steps; also records one job's calls for the floor."""
    worker = start_worker(stack, 1, ALFRED_DEMO_STEP_SECONDS="0")
    try:
        with httpx.Client() as client:
            job_through_http(server, client)  # warm-up
            time.sleep(0.3)
            server.counts(reset=True)
            worker.counts()
            first, _ = job_through_http(server, client)
            time.sleep(0.5)
            traced = worker.counts()
            server_counts = server.counts(reset=True)
            times = [first]
            cpu = CpuSplit(worker.proc.pid, server.proc.pid).start()
            for _ in range(sizes.zero_step_runs - 1):
                times.append(job_through_http(server, client, cpu=cpu)[0])
            time.sleep(0.5)  # as above: the last job's message deleted before the CPU is read
            cpu_per_job = cpu.per_job(max(1, sizes.zero_step_runs - 1))
    finally:
        stack.stop(worker.proc)
    return {"zero_step_job_ms": ms(p50(times)), "trace": traced["trace"],
            "requests": per_job([server_counts, traced], 1), "cpu_s_per_job": cpu_per_job}


# ---- the floor of any durable design -----------------------------------------------------------


def durable_floor_run(stack: BenchStack, steps: int = 5) -> tuple[float, float]:
    """One zero-step job as the fewest serial calls any design with our guarantees makes, bare
    boto3 from one process (no HTTP, no runner, no poll cadence): the job written before the
    answer (1), handed to a worker through the queue (2, 3), leased (4), one conditional put per
    step, the fence before it acts, carrying the previous step's completion (5 x 2, with the
    agent's own side-effect write), the terminal put (6) and one read that sees it (7).
    Returns (seconds in all, seconds of them in the agent's writes)."""
    c, s = stack.clients, stack.settings
    job_id, now = uuid.uuid4().hex, time.time()
    expires = int(now) + 86400
    t0 = time.perf_counter()
    c.dynamodb.put_item(TableName=s.jobs_table, ConditionExpression="attribute_not_exists(job_id)",
                        Item=serialize({"job_id": job_id, "user_id": USER, "status": "pending", "attempts": 0,
                                        "message": MESSAGE, "created_at": now, "expires_at": expires}))
    c.sqs.send_message(QueueUrl=c.queue_url, MessageBody=json.dumps({"job_id": job_id}))
    receipt = ""
    while not receipt:
        for msg in c.sqs.receive_message(QueueUrl=c.queue_url, MaxNumberOfMessages=1,
                                         WaitTimeSeconds=1).get("Messages", []):
            if json.loads(msg["Body"]).get("job_id") == job_id:
                receipt = msg["ReceiptHandle"]
    c.dynamodb.update_item(
        TableName=s.jobs_table, Key=serialize({"job_id": job_id}), ReturnValues="ALL_NEW",
        UpdateExpression="SET lease_owner = :me, lease_expires = :exp ADD attempts :one",
        ConditionExpression="attribute_exists(job_id) AND (attribute_not_exists(lease_owner) OR lease_expires < :now)",
        ExpressionAttributeValues=serialize({":me": "floor", ":exp": now + 30, ":one": 1, ":now": now}))

    def put(seq: int, kind: str) -> None:
        c.dynamodb.put_item(TableName=s.events_table, ConditionExpression="attribute_not_exists(seq)",
                            Item=serialize({"job_id": job_id, "seq": seq, "type": kind, "expires_at": expires,
                                            "data_json": json.dumps({"index": seq, "output": {"step": seq}})}))

    agent = 0.0
    for index in range(1, steps + 1):
        put(index, "step")
        a0 = time.perf_counter()
        stack.deps.agent_data.record_step_effect(job_id, index, 1, {"label": f"step {index}"}, expires)
        agent += time.perf_counter() - a0
    put(steps + 1, "complete")
    c.dynamodb.query(TableName=s.events_table, KeyConditionExpression="job_id = :j AND seq > :s",
                     ExpressionAttributeValues=serialize({":j": job_id, ":s": 0}))
    elapsed = time.perf_counter() - t0
    c.sqs.delete_message(QueueUrl=c.queue_url, ReceiptHandle=receipt)
    return elapsed, agent


def durable_floor_scenario(stack: BenchStack, sizes: Sizes) -> dict[str, Any]:
    """``zero_step_floor_ms``: p50 of ``durable_floor_run``; ``floor_agent_ms``: its agent writes."""
    durable_floor_run(stack)  # warm-up: connections
    runs = [durable_floor_run(stack) for _ in range(sizes.zero_step_runs)]
    return {"zero_step_floor_ms": ms(p50([t for t, _ in runs])),
            "zero_step_floor_agent_ms": ms(p50([a for _, a in runs]))}


# ---- throughput -----------------------------------------------------------------------------


def _complete_count(stack: BenchStack) -> int:
    out = stack.clients.dynamodb.scan(TableName=stack.settings.jobs_table, Select="COUNT",
                                      FilterExpression="#s = :c", ExpressionAttributeNames={"#s": "status"},
                                      ExpressionAttributeValues={":c": {"S": "complete"}})
    return int(out["Count"])


def _wait_complete(stack: BenchStack, target: int, timeout: float = 300.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _complete_count(stack) >= target:
            return time.perf_counter()
        time.sleep(0.05)
    raise TimeoutError(f"fewer than {target} jobs completed within {timeout}s")


def throughput_scenario(stack: BenchStack, sizes: Sizes, trace: list[dict[str, Any]]) -> dict[str, Any]:
    """Our N workers vs N bare replayers of the recorded per-job calls, M jobs each, same stack."""
    svc = JobService(stack.deps)
    req = ChatRequest(message=MESSAGE)
    n, m = sizes.workers, sizes.throughput_jobs

    def submit_all(count: int) -> None:
        # Many users, as in production: one user's jobs would queue behind each other in its gate
        # (ALFRED_MAX_RUNNING_PER_USER), which is not the workers' throughput.
        for _ in range(count):
            svc.submit(f"{USER}-{uuid.uuid4().hex[:8]}", req, None)

    workers: list[CountedWorker] = [start_worker(stack, 1, ALFRED_DEMO_STEP_SECONDS="0") for _ in range(n)]
    try:
        done = _complete_count(stack)
        submit_all(n * 2)  # warm-up: every worker's first job pays its imports and connections
        _wait_complete(stack, done + n * 2)
        done = _complete_count(stack)
        t0 = time.perf_counter()
        submit_all(m)
        t1 = _wait_complete(stack, done + m)
        ours = m / (t1 - t0)
    finally:
        for w in workers:
            stack.stop(w.proc)

    trace_file = stack.tmp / f"trace-{uuid.uuid4().hex[:8]}.json"
    trace_file.write_text(json.dumps(trace), encoding="utf-8")
    floor_submit = _FloorSubmit(stack, _recorded_created_at(trace))
    replayers = [stack.spawn(["-m", "alfred_tools.benchmarks.floor", str(trace_file)]) for _ in range(n)]
    try:
        done = _complete_count(stack)
        floor_submit(n * 2)
        _wait_complete(stack, done + n * 2)
        done = _complete_count(stack)
        t0 = time.perf_counter()
        floor_submit(m)
        t1 = _wait_complete(stack, done + m)
        floor = m / (t1 - t0)
    finally:
        for p in replayers:
            stack.stop(p)
    return {"jobs_per_s": round(ours, 2), "floor_jobs_per_s": round(floor, 2),
            "throughput_ratio": round(ours / floor, 3), "throughput_workers": n, "throughput_jobs": m,
            "floor_calls_per_job": len(trace)}


def _recorded_created_at(trace: list[dict[str, Any]]) -> float | None:
    """The recorded job's ``created_at`` as its status writes name it (``created_at = :ca``: a
    late write must not land on a new job that reuses the id). The floor's jobs are created with
    it, so that the replayed writes' conditions hold for them as they did for the recorded job."""
    for call in trace:
        value = (call["params"].get("ExpressionAttributeValues") or {}).get(":ca")
        if value and "N" in value:
            return float(value["N"])
    return None


class _FloorSubmit:
    """The submit side of the floor: the same PutItem + SendMessage, bare (see ``submit_scenario``)."""

    def __init__(self, stack: BenchStack, created_at: float | None = None) -> None:
        self.stack = stack
        self.created_at = created_at

    def __call__(self, count: int) -> None:
        from alfred_jobs.adapters.aws import job_to_item, serialize
        from alfred_jobs.domain.models import Job

        c = self.stack.clients
        for _ in range(count):
            now = time.time()
            job = Job(job_id=uuid.uuid4().hex, user_id=USER, message=MESSAGE, conversation_id=uuid.uuid4().hex,
                      created_at=self.created_at or now, expires_at=int(now + 604800), body_hash="0" * 64)
            item = {**job_to_item(job), "active_shard": "A#0", "due_at": now + 30}
            c.dynamodb.put_item(TableName=self.stack.settings.jobs_table, Item=serialize(item),
                                ConditionExpression="attribute_not_exists(job_id)")
            c.sqs.send_message(QueueUrl=c.queue_url, MessageBody=json.dumps({"job_id": job.job_id}))
