"""Peak resident memory of a function's process, to size its ``MemorySize`` (issue 28).

    python -m alfred_tools.benchmarks.function_rss worker   # imports the worker's handler, runs jobs
    python -m alfred_tools.benchmarks.function_rss stream   # imports the stream app, serves streams
    python -m alfred_tools.benchmarks.function_rss logs     # log bytes and metric names per job

``worker``: the worker Lambda's module (boto3 and every client it builds) imported, then one
conversation of ``model_tokens.TURNS`` jobs through the real runner and the Bedrock agent against
the Bedrock stand-in (streamed replies, growing history): what one execution environment holds.
``stream``: the stream app imported and its clients built, then a job's whole SSE stream served
(in-memory stores): what a Lambda stream (one stream per environment) holds. Each prints its
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


def worker() -> dict[str, Any]:
    _aws_env()
    import boto3

    import alfred_jobs.entry.worker  # noqa: F401  (the handler module the Lambda imports)
    from alfred_tools.benchmarks import model_tokens

    # the clients a warm worker holds
    clients = [boto3.client(s) for s in ("dynamodb", "sqs", "secretsmanager", "bedrock-runtime")]
    after_import = _peak_mb()
    usages = model_tokens._conversation(True, model_tokens.TURNS)
    return {"function": "worker", "after_import_mb": after_import, "peak_rss_mb": _peak_mb(),
            "jobs_run": len(usages), "clients": len(clients)}


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
    print(json.dumps({"worker": worker, "stream": stream, "logs": logs}[which]()))
