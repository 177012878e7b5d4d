"""A local stand-in for the Lambda SQS event source mapping.

It long-polls the queue, hands each batch to the same ``handler`` as on AWS (a Lambda-shaped
event and context), and deletes the messages that did not come back as batch item failures —
what the event source mapping does with ``ReportBatchItemFailures``. Failed messages are left
alone, so they reappear after the visibility timeout the runner set (the retry backoff).
"""

from __future__ import annotations

import signal
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from alfred_jobs.adapters.aws import AwsClients, mapped_errors
from alfred_jobs.exceptions import StoreError
from alfred_jobs.observability import get_logger
from alfred_jobs.settings import Settings
from alfred_tools.clients import tool_clients, tool_deps

log = get_logger()


@dataclass
class LambdaContext:
    """The bits of a Lambda context object handlers use."""

    function_name: str = "alfred-jobs-worker-local"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:local:000000000000:function:alfred-jobs-worker-local"
    aws_request_id: str = ""
    # No ``get_remaining_time_in_millis``: a local worker has no timeout, so its jobs have no time
    # budget unless ALFRED_WORKER_INVOCATION_SECONDS gives one (``durability/budget.deadline``).


def sqs_event(messages: list[dict[str, Any]], queue_arn: str, region: str) -> dict[str, Any]:
    """A Lambda SQS event built from ReceiveMessage output."""
    return {"Records": [{
        "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
        "attributes": {k: str(v) for k, v in m.get("Attributes", {}).items()},
        "messageAttributes": {}, "md5OfBody": m.get("MD5OfBody", ""), "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn, "awsRegion": region} for m in messages]}


class QueuePoller:
    """Polls the jobs queue and runs batches through the worker handler until stopped."""

    def __init__(self, settings: Settings, batch_size: int = 1, wait_seconds: int = 1,
                 clients: AwsClients | None = None) -> None:
        self.settings = settings
        self.clients = clients if clients is not None else tool_clients(settings)  # this process's own unless given
        self.batch_size = batch_size
        self.wait_seconds = wait_seconds
        self.stopping = threading.Event()

    def run_forever(self) -> None:
        from alfred_jobs.entry.worker import handler  # the very handler the Lambda runs

        queue_arn = self._queue_arn()
        while queue_arn is not None and not self.stopping.is_set():
            try:
                with mapped_errors():
                    out = self.clients.sqs.receive_message(
                        QueueUrl=self.clients.queue_url, MaxNumberOfMessages=self.batch_size,
                        WaitTimeSeconds=self.wait_seconds, AttributeNames=["All"])
            except StoreError as exc:
                log.warning("receive failed", extra={"error": str(exc)})
                self.stopping.wait(0.5)
                continue
            messages = out.get("Messages", [])
            if not messages:
                continue
            event = sqs_event(messages, queue_arn, self.settings.region)
            try:
                result = handler(event, LambdaContext(aws_request_id=uuid.uuid4().hex))
            except Exception:  # like a failed Lambda invocation: the whole batch comes back later
                log.exception("worker handler failed; the batch will be redelivered")
                continue
            failed = {f["itemIdentifier"] for f in result.get("batchItemFailures", [])}
            done = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages) if m["MessageId"] not in failed]
            if done:
                try:
                    with mapped_errors():
                        self.clients.sqs.delete_message_batch(QueueUrl=self.clients.queue_url, Entries=done)
                except StoreError as exc:
                    log.warning("delete failed; messages will be redelivered", extra={"error": str(exc)})


    def _queue_arn(self) -> str | None:
        """The queue's ARN, retried through transient errors (a poller that died here would leave a
        live worker process that never polls); None once stopping."""
        while not self.stopping.is_set():
            try:
                with mapped_errors():
                    attrs = self.clients.sqs.get_queue_attributes(QueueUrl=self.clients.queue_url,
                                                                  AttributeNames=["QueueArn"])
                return str(attrs["Attributes"]["QueueArn"])
            except StoreError as exc:
                log.warning("cannot read the queue yet", extra={"error": str(exc)})
                self.stopping.wait(0.5)
        return None


def run_worker_threads(settings: Settings, concurrency: int = 1) -> None:
    """Run ``concurrency`` pollers in this process until SIGTERM/SIGINT."""
    from alfred_jobs.entry import worker

    worker.use_deps(tool_deps(settings))  # the Lambda handler, over this process's clients
    pollers = [QueuePoller(settings) for _ in range(concurrency)]

    def stop(signum: int, frame: Any) -> None:
        for p in pollers:
            p.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threads = [threading.Thread(target=p.run_forever, name=f"poller-{i}", daemon=True)
               for i, p in enumerate(pollers)]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(timeout=0.5)


def main() -> None:
    """``python -m alfred_tools.local_worker [concurrency]``: a worker process for tests and dev."""
    import sys

    from alfred_jobs.entry.wiring import get_settings

    run_worker_threads(get_settings(), int(sys.argv[1]) if len(sys.argv) > 1 else 1)


if __name__ == "__main__":
    main()
