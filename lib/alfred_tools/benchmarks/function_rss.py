"""Peak resident memory of a function's process, to size its ``MemorySize`` (issue 28).

    python -m alfred_tools.benchmarks.function_rss worker [REPEAT] [TURNS]  # the worker handler, runs jobs
    python -m alfred_tools.benchmarks.function_rss stream   # imports the stream app, answers /healthz
    python -m alfred_tools.benchmarks.function_rss logs     # log bytes and metric names per job

``worker``: the worker Lambda's module (boto3 and every client it builds) imported, then one
conversation of ``model_tokens.TURNS`` jobs through the real runner and the Bedrock agent against
the Bedrock stand-in (streamed replies, growing history): what one execution environment holds.
``REPEAT`` (default 1: a ~400-token reply) and ``TURNS`` (default ``model_tokens.TURNS``)
make it harder: ``worker 20 40`` streams 32 KB replies over a 40-turn conversation (the in-memory
stores hold every event in the process too: an upper bound).
``stream``: the stream app imported and its clients built, then ``/healthz`` answered (no job is
streamed here: ``function_cpu stream`` measures the stream app serving jobs). Each prints its
peak RSS (``ru_maxrss``) in MB as JSON. Run each in its own process: the peak is the process's.
``logs``: the same conversation with the Lambda log format (Powertools JSON, INFO) written to a
counter: the bytes of log lines a job emits (submit and worker: the CloudWatch Logs ingestion the
cost model prices), and the metric names counted (each a custom metric if published as EMF).
"""

from __future__ import annotations

import json
import os
import resource
import sys
from typing import Any


def _peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KB on Linux


def _aws_env() -> None:
    for k, v in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                 ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(k, v)


def worker(reply_repeat: int = 1, turns: int | None = None) -> dict[str, Any]:
    _aws_env()
    import boto3

    import alfred_jobs.entry.worker  # noqa: F401  (the handler module the Lambda imports)
    from alfred_tools.benchmarks import model_tokens

    # the clients a warm worker holds
    clients = [boto3.client(s) for s in ("dynamodb", "sqs", "secretsmanager", "bedrock-runtime")]
    after_import = _peak_mb()
    model_tokens.REPLY = model_tokens.REPLY * reply_repeat
    usages = model_tokens._conversation(True, turns or model_tokens.TURNS)
    return {"function": "worker", "after_import_mb": after_import, "peak_rss_mb": _peak_mb(),
            "jobs_run": len(usages), "reply_chars": len(model_tokens.REPLY), "clients": len(clients)}


def stream() -> dict[str, Any]:
    _aws_env()
    os.environ.setdefault("ALFRED_DEPLOYMENT", "local")  # the development secrets, on a laptop
    import boto3
    from fastapi.testclient import TestClient

    from alfred_jobs.entry.http.stream_api import create_stream_app

    app = create_stream_app()
    clients = [boto3.client(s) for s in ("dynamodb", "secretsmanager")]
    after_import = _peak_mb()
    with TestClient(app) as client:
        client.get("/healthz")
    return {"function": "stream", "after_import_mb": after_import, "peak_rss_mb": _peak_mb(),
            "clients": len(clients)}


class _Counter:
    def __init__(self) -> None:
        self.bytes = 0
        self.lines = 0

    def write(self, text: str) -> int:
        self.bytes += len(text.encode())
        self.lines += text.count("\n")
        return len(text)

    def flush(self) -> None:
        pass


def logs() -> dict[str, Any]:
    _aws_env()
    from alfred_jobs import observability
    from alfred_tools.benchmarks import model_tokens

    sink = _Counter()
    observability.configure(sink, json_logs=True, force=True, level="INFO")
    observability.reset_metrics()
    jobs = len(model_tokens._conversation(True, model_tokens.TURNS))
    return {"jobs": jobs, "log_bytes_per_job": round(sink.bytes / jobs, 1),
            "log_lines_per_job": round(sink.lines / jobs, 2),
            "metric_names": sorted(observability.metrics_snapshot())}


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "worker"
    if which == "worker":
        print(json.dumps(worker(*(int(a) for a in sys.argv[2:4]))))
    else:
        print(json.dumps({"stream": stream, "logs": logs}[which]()))
