"""``python -m alfred_tools.benchmarks.floor TRACE``: the floor of job throughput.

Replays, for every message it receives, the exact AWS calls one job made in our worker (recorded
by botocore handlers: the lease update, the log reads, every event put, the agent's side-effect
writes, the projection, the conversation commit, the message delete), with the job id swapped in,
on plain boto3 clients. No runner, agent, handler or pydantic: what is left is the emulator and
the HTTP round trips, i.e. the cost of the calls themselves.
"""

from __future__ import annotations

import json
import re
import signal
import sys
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

RECEIPT_OPS = {"DeleteMessage", "ChangeMessageVisibility"}
BATCH_RECEIPT_OPS = {"DeleteMessageBatch", "ChangeMessageVisibilityBatch"}
JOB_ID = re.compile(r"[0-9a-f]{32}")


def _old_job_id(trace: list[dict[str, Any]]) -> str:
    """The recorded job's id: the first key or item naming a job (32 hex characters). Not "the
    first GetItem": a first attempt no longer reads its job, and the gate's key (``gate#user``) is
    in the same table."""
    for call in trace:
        params = call["params"]
        for where in (params.get("Key"), params.get("Item")):
            job_id = (where or {}).get("job_id", {}).get("S", "")
            if JOB_ID.fullmatch(job_id):
                return str(job_id)
    raise ValueError("no job id in the trace")


def main() -> None:
    """Replay the trace once per received message until SIGTERM."""
    with open(sys.argv[1], encoding="utf-8") as fh:
        trace: list[dict[str, Any]] = json.load(fh)
    old = _old_job_id(trace)
    body = [c for c in trace if not (c["service"] == "sqs" and c["op"] == "ReceiveMessage")]
    template = json.dumps(body)
    config = Config(retries={"mode": "standard", "max_attempts": 4}, connect_timeout=3, read_timeout=25,
                    max_pool_connections=50)  # the same client settings as AwsClients
    clients: dict[str, Any] = {"dynamodb": boto3.session.Session().client("dynamodb", config=config),
               "sqs": boto3.session.Session().client("sqs", config=config)}
    queue_url = next(c["params"]["QueueUrl"] for c in trace if c["service"] == "sqs")
    stopping = [False]

    def stop(signum: int, frame: Any) -> None:
        stopping[0] = True

    signal.signal(signal.SIGTERM, stop)
    while not stopping[0]:
        out = clients["sqs"].receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=1)
        for msg in out.get("Messages", []):
            job_id = json.loads(msg["Body"])["job_id"]
            for call in json.loads(template.replace(old, job_id)):
                params = call["params"]
                if call["op"] in RECEIPT_OPS:
                    params["ReceiptHandle"] = msg["ReceiptHandle"]
                elif call["op"] in BATCH_RECEIPT_OPS:
                    for entry in params["Entries"]:
                        entry["ReceiptHandle"] = msg["ReceiptHandle"]
                method = getattr(clients[call["service"]], _snake(call["op"]))
                try:
                    method(**params)
                except ClientError:
                    pass  # a failed condition still made its round trip, as in the worker


def _snake(op: str) -> str:
    return "".join("_" + ch.lower() if ch.isupper() else ch for ch in op).lstrip("_")


if __name__ == "__main__":
    main()
