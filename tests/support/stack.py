"""Test support: an emulator per test session, fresh resources per test, real worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from alfred_jobs.adapters.aws import AwsClients
from alfred_jobs.entry.wiring import aws_deps
from alfred_jobs.ports import Deps
from alfred_jobs.settings import Settings
from alfred_tools.bootstrap import create_resources

FAST = {
    "ALFRED_DEMO_STEP_SECONDS": "0.05",
    "ALFRED_LEASE_SECONDS": "2",
    "ALFRED_SWEEP_SECONDS": "0.5",
    "ALFRED_PENDING_GRACE_SECONDS": "2",
    "ALFRED_RETRY_BASE_SECONDS": "1",
    "ALFRED_CANCEL_POLL_SECONDS": "0.1",
}


def resource_env(prefix: str) -> dict[str, str]:
    """Physical names unique to one test: tests share the emulator, never tables or queues."""
    return {"ALFRED_JOBS_TABLE": f"{prefix}-jobs", "ALFRED_EVENTS_TABLE": f"{prefix}-events",
            "ALFRED_CONVERSATIONS_TABLE": f"{prefix}-conversations",
            "ALFRED_AGENT_DATA_TABLE": f"{prefix}-agent-data", "ALFRED_QUEUE_NAME": f"{prefix}-q",
            "ALFRED_DLQ_NAME": f"{prefix}-dlq"}


@dataclass
class Stack:
    """Resources of one test on the shared emulator, with the environment a child process needs."""

    env: dict[str, str]
    settings: Settings
    deps: Deps
    clients: AwsClients
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_worker(self, concurrency: int = 1, **extra_env: str) -> subprocess.Popen[bytes]:
        """A real worker process (the local event source mapping + the Lambda handler)."""
        proc = subprocess.Popen([sys.executable, "-m", "alfred_tools.local_worker", str(concurrency)],
                                env={**self.env, **extra_env}, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start_sweeper(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "alfred_tools.local_sweeper"], env=self.env,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def queue_depth(self, dlq: bool = False) -> int:
        url = self.clients.dlq_url if dlq else self.clients.queue_url
        attrs = self.clients.sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                          "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])

    def dlq_messages(self) -> list[dict[str, Any]]:
        out = self.clients.sqs.receive_message(QueueUrl=self.clients.dlq_url, MaxNumberOfMessages=10,
                                               MessageAttributeNames=["All"], WaitTimeSeconds=0)
        return list(out.get("Messages", []))


@contextmanager
def make_stack(base_env: dict[str, str], **overrides: str) -> Iterator[Stack]:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    env = {**os.environ, **base_env, **FAST, **resource_env(prefix), **overrides}
    settings = Settings(**_settings_kwargs(env))
    saved = dict(os.environ)
    os.environ.update(env)  # boto3 in this process reads endpoints from the environment
    try:
        clients = AwsClients(settings)
        create_resources(settings, clients.dynamodb, clients.sqs)
        deps = aws_deps(settings)
        stack = Stack(env=env, settings=settings, deps=deps, clients=clients)
        try:
            yield stack
        finally:
            stack.stop_all()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _settings_kwargs(env: dict[str, str]) -> dict[str, Any]:
    fields = Settings.model_fields
    out: dict[str, Any] = {}
    for name in fields:
        key = f"ALFRED_{name.upper()}"
        if key in env:
            out[name] = env[key]
    return out


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05,
               what: str = "condition") -> Any:
    """Poll an observable condition (job state in the store) until it holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
