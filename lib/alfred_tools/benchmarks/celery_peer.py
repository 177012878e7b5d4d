"""The peer: the same 5 steps as a Celery chain on SQS + a DynamoDB result backend, same moto server.

Configuration is what a Celery user would write for durability: ``task_acks_late``, prefetch 1,
the SQS broker and the DynamoDB result backend pointed at the emulator, otherwise defaults (the
SQS transport's long polling included). The worker is ``celery worker --pool solo -c 1`` in its own
process; the client waits with ``AsyncResult.get(interval=0.05)``, the same 50 ms cadence our
stream's poller uses, so the peer is not penalised by its client's default 0.5 s polling.

Each task does what a step of our demo agent does: its keyed side-effect write into the agent
data table (the same ``record_step_effect`` UpdateItem), then its work (a sleep). So both sides
do the same agent work, and the difference is the orchestration.

Measured: ``zero_step_job_ms`` (5 zero-length tasks, ``apply_async`` → result known to the
client) and ``overhead_ratio`` (5 x 1 s tasks / the same 5 task bodies called inline).

This module is also the Celery app (``-A alfred_tools.benchmarks.celery_peer``), configured from
``BENCH_CELERY_*`` environment variables.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

from alfred_tools.benchmarks.common import BenchStack, Sizes, ms, p50

try:
    from celery import Celery, chain
except ImportError:  # the peer is optional: the bench reports it as not measured
    Celery = None
    chain = None


def make_app(broker: str, backend: str, queue: str, transport: dict[str, Any] | None = None) -> Any:
    """The Celery app; ``transport``: extra SQS transport options (the worker process reads them
    from ``BENCH_CELERY_TRANSPORT``)."""
    app = Celery("alfred_bench_peer", broker=broker, backend=backend)
    app.conf.update(
        task_acks_late=True, worker_prefetch_multiplier=1, task_default_queue=queue,
        broker_transport_options={"region": "us-east-1", "is_secure": False, **(transport or {})},
        broker_connection_retry_on_startup=True, result_extended=False, worker_hijack_root_logger=False,
        worker_send_task_events=False, task_send_sent_event=False,
    )
    return app


def step_body(done: list[int] | None, index: int, seconds: float, effect: Any = None,
              job_id: str = "") -> list[int]:
    """One step: the demo agent's side effect (``effect``: its agent data store, the same keyed
    UpdateItem our steps make, so both sides do the same agent work), wait ``seconds`` (the work),
    return the steps done so far."""
    if effect is not None:
        effect.record_step_effect(job_id, index, 1, {"label": f"step {index}"}, int(time.time()) + 86400)
    if seconds:
        time.sleep(seconds)
    return [*(done or []), index]


_effects: Any = None


def effects() -> Any:
    """This process's agent data store, from the stack's environment (the Celery worker's)."""
    global _effects
    if _effects is None:
        from alfred_jobs.entry.wiring import aws_deps, get_settings

        _effects = aws_deps(get_settings()).agent_data
    return _effects


app: Any = None
step: Any = None
if Celery is not None and os.environ.get("BENCH_CELERY_BROKER"):
    app = make_app(os.environ["BENCH_CELERY_BROKER"], os.environ["BENCH_CELERY_BACKEND"],
                   os.environ["BENCH_CELERY_QUEUE"], json.loads(os.environ.get("BENCH_CELERY_TRANSPORT", "{}")))

    @app.task(name="bench.step", acks_late=True)
    def _step(done: list[int] | None, index: int, seconds: float, job_id: str = "") -> list[int]:
        return step_body(done, index, seconds, effects(), job_id)

    step = _step


def available() -> bool:
    return Celery is not None


def celery_env(endpoint: str, prefix: str) -> dict[str, str]:
    hostport = endpoint.removeprefix("http://")
    return {"BENCH_CELERY_BROKER": f"sqs://testing:testing@{hostport}",
            "BENCH_CELERY_BACKEND": f"dynamodb://testing:testing@{hostport}/{prefix}-celery-results",
            "BENCH_CELERY_QUEUE": f"{prefix}-celery"}


def run_chain(client_app: Any, n: int, seconds: float) -> float:
    job = {"job_id": uuid.uuid4().hex}  # the steps' side effects are keyed by it, as ours are
    sig = chain(client_app.signature("bench.step", args=(None, 1, seconds), kwargs=job),
                *(client_app.signature("bench.step", args=(i, seconds), kwargs=job) for i in range(2, n + 1)))
    t0 = time.perf_counter()
    result = sig.apply_async()
    out = result.get(timeout=120, interval=0.05)
    elapsed = time.perf_counter() - t0
    if out != list(range(1, n + 1)):
        raise RuntimeError(f"the chain returned {out!r}")
    return elapsed


# Kombu's SQS transport sleeps ``polling_interval`` (default 1 s) between receives; each hop of the
# chain waits for it. The headline peer polls every 50 ms, the cadence of our own stream poller;
# the untouched default is measured too and reported beside it.
TUNED_TRANSPORT = {"polling_interval": 0.05, "wait_time_seconds": 1}


def _measure(stack: BenchStack, endpoint: str, transport: dict[str, Any], zero_runs: int,
             overhead_runs: int, step_seconds: float) -> dict[str, Any]:
    prefix = f"c{uuid.uuid4().hex[:8]}"
    env = {**celery_env(endpoint, prefix), "BENCH_CELERY_TRANSPORT": json.dumps(transport)}
    proc = stack.spawn(["-m", "celery", "-A", "alfred_tools.benchmarks.celery_peer", "worker", "--pool", "solo",
                        "-c", "1", "--without-heartbeat", "--without-gossip", "--without-mingle",
                        "--loglevel", "WARNING", "-Q", env["BENCH_CELERY_QUEUE"]], **env)
    client_app = make_app(env["BENCH_CELERY_BROKER"], env["BENCH_CELERY_BACKEND"], env["BENCH_CELERY_QUEUE"],
                          transport)
    try:
        run_chain(client_app, 5, 0)  # warm-up: queue and table creation, worker start
        zero = [run_chain(client_app, 5, 0) for _ in range(zero_runs)]
        chained: list[float] = []
        inline: list[float] = []
        for _ in range(overhead_runs):
            chained.append(run_chain(client_app, 5, step_seconds))
            t0 = time.perf_counter()
            done: list[int] | None = None
            job_id = uuid.uuid4().hex
            for i in range(1, 6):
                done = step_body(done, i, step_seconds, stack.deps.agent_data, job_id)
            inline.append(time.perf_counter() - t0)
    finally:
        stack.stop(proc)
        client_app.close()
    out: dict[str, Any] = {"zero_step_job_ms": ms(p50(zero))}
    if overhead_runs:
        out.update({"overhead_ratio": round(p50(chained) / p50(inline), 4), "chain_s": round(p50(chained), 3),
                    "inline_s": round(p50(inline), 3)})
    return out


def celery_scenario(stack: BenchStack, endpoint: str, sizes: Sizes) -> dict[str, Any]:
    """Celery chain of 5 steps on the same emulator: zero-length p50 and 5 x step overhead."""
    if not available():
        return {"error": "celery is not installed (pip install 'celery[sqs,dynamodb]')"}
    out = _measure(stack, endpoint, TUNED_TRANSPORT, sizes.celery_zero_runs, sizes.celery_overhead_runs,
                   sizes.step_seconds)
    out["transport_options"] = TUNED_TRANSPORT
    default = _measure(stack, endpoint, {}, sizes.celery_default_runs, 0, sizes.step_seconds)
    out["default_transport_zero_step_job_ms"] = default["zero_step_job_ms"]
    return out
