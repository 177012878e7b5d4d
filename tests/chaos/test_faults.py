"""The fault injector (``alfred_tools.faults``, ``ALFRED_FAULTS``) and the regressions it found.

Each test here is deterministic: a plan parsed, the injector's decisions drawn from a seed, one
fault of each kind forced on one call, one ambiguous append, one storage blip at the API, one lost
park of a failed job, one throttled start of a poller. Convergence of whole histories under faults
in every process is the simulator's (``alfred_tools.sim``; docs/testing.md, "Chaos").
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

import pytest
from botocore.exceptions import ClientError, ConnectTimeoutError, ReadTimeoutError

from alfred_jobs.adapters.aws import mapped_errors
from alfred_jobs.adapters.memory import MemoryJobQueue, memory_deps
from alfred_jobs.agents.demo import DemoAgent
from alfred_jobs.domain.models import ChatRequest, Event, EventType, JobStatus
from alfred_jobs.durability.journal import Journal
from alfred_jobs.durability.runner import Delivery, JobRunner, Outcome
from alfred_jobs.entry.http.stream_api import create_stream_app
from alfred_jobs.exceptions import SlotTaken, TransientStoreError
from alfred_jobs.service.jobs import JobService
from alfred_jobs.settings import Settings
from alfred_tools.clients import tool_clients
from alfred_tools.faults import FaultInjector, FaultKind, FaultPlan, FaultSpecError
from tests.support.stack import Stack
from tests.support.template_env import HARNESS_PRINCIPAL

pytestmark = pytest.mark.chaos


# ---- the injector itself --------------------------------------------------------------------


def test_plan_parses_the_documented_format_and_round_trips() -> None:
    plan = FaultPlan.parse("seed=7;PutItem:throttle=0.1,ambiguous=0.05;SendMessage:5xx=0.1;*:timeout=0.01")
    assert plan.seed == 7
    assert plan.rates("PutItem") == {FaultKind.THROTTLE: 0.1, FaultKind.AMBIGUOUS: 0.05, FaultKind.TIMEOUT: 0.01}
    assert plan.rates("GetItem") == {FaultKind.TIMEOUT: 0.01}
    assert FaultPlan.parse(plan.describe()) == plan


@pytest.mark.parametrize("bad", ["seed=x", "PutItem:slow=0.1", "PutItem:throttle=2", "Put Item:5xx=0.1",
                                 "nonsense", "PutItem:throttle=0.6,5xx=0.6"])
def test_plan_refuses_malformed_specs(bad: str) -> None:
    with pytest.raises(FaultSpecError):
        FaultPlan.parse(bad)


def test_decisions_are_a_function_of_the_seed_only() -> None:
    spec = FaultPlan.parse("seed=3;*:throttle=0.2,ambiguous=0.2")
    a, b = FaultInjector(spec), FaultInjector(spec)
    seq_a = [a.decide("PutItem") for _ in range(500)]
    assert seq_a == [b.decide("PutItem") for _ in range(500)]
    other = FaultInjector(FaultPlan.parse("seed=4;*:throttle=0.2,ambiguous=0.2"))
    assert seq_a != [other.decide("PutItem") for _ in range(500)]
    assert 50 < sum(k is FaultKind.THROTTLE for k in seq_a) < 150


def test_each_kind_reaches_the_adapter_as_the_domain_error(stack: Stack) -> None:
    """throttle/5xx/timeout are not sent; ambiguous is applied, and the caller still sees an error.

    The calls sign as the proxy's exempt principal: this counts what our injector does, and a
    random ambiguous write of the faithful proxy's own (applied, answer lost, retried by botocore)
    once made the count 3 on a CI run."""
    table = stack.settings.agent_data_table
    inspector = tool_clients(stack.settings, stack.env, aws_access_key_id=HARNESS_PRINCIPAL)
    for kind, raw in ((FaultKind.THROTTLE, ClientError), (FaultKind.SERVER, ClientError),
                      (FaultKind.TIMEOUT, ConnectTimeoutError), (FaultKind.AMBIGUOUS, ReadTimeoutError)):
        clients = tool_clients(stack.settings, stack.env, aws_access_key_id=HARNESS_PRINCIPAL)
        FaultInjector(FaultPlan.parse(f"UpdateItem:{kind.value}=1")).install(clients.dynamodb)
        key = {"pk": {"S": f"K#{kind.value}"}, "sk": {"S": "x"}}
        with pytest.raises(raw):
            clients.dynamodb.update_item(TableName=table, Key=key, UpdateExpression="ADD n :one",
                                         ExpressionAttributeValues={":one": {"N": "1"}})
        with pytest.raises(TransientStoreError), mapped_errors():
            clients.dynamodb.update_item(TableName=table, Key=key, UpdateExpression="ADD n :one",
                                         ExpressionAttributeValues={":one": {"N": "1"}})
        item = inspector.dynamodb.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")
        applied = int(item["n"]["N"]) if item else 0
        assert applied == (2 if kind is FaultKind.AMBIGUOUS else 0), kind


def test_ambiguous_append_is_recognised_by_its_writer_token(stack: Stack) -> None:
    """The put lands, the caller sees a timeout, retries, finds its own event: success, not a conflict."""
    faulty = stack.make_deps(stack.settings.model_copy(update={"faults": "PutItem:ambiguous=1"}))
    journal = Journal(faulty.log, stack.settings.retention_seconds)
    ev = Event.new(1, EventType.STATUS, {"status": "running"}, attempt=1, writer="w-1", at=time.time())
    journal.append("a" * 32, ev, 2_000_000_000)  # every put "fails" after landing; the retry reads it back
    assert [e.writer for e in Journal(stack.deps.log, 60).read_all("a" * 32)] == ["w-1"]
    rival = Event.new(1, EventType.STATUS, {"status": "running"}, attempt=2, writer="w-2", at=time.time())
    with pytest.raises(SlotTaken):  # another writer's event in the slot is a conflict, ambiguous or not
        journal.append("a" * 32, rival, 2_000_000_000)


def test_a_storage_blip_is_a_503_with_retry_after_in_the_one_shape(stack: Stack) -> None:
    """Regression: a TransientStoreError went through the generic 500 path (stack trace logged,
    keep-alive connection dropped). It is now a 503 a client knows to retry."""
    from fastapi.testclient import TestClient

    from alfred_jobs.entry.http.jobs_api import create_app
    from alfred_jobs.service.auth import issue_local_token

    job = JobService(stack.deps).submit("alice", ChatRequest(message="pie"), None).job
    faulty = stack.make_deps(stack.settings.model_copy(update={"faults": "GetItem:throttle=1"}))
    headers = {"Authorization": f"Bearer {issue_local_token(stack.settings, 'alice')}"}
    for app in (create_app(faulty), create_stream_app(faulty)):
        with TestClient(app, raise_server_exceptions=False) as client:
            path = f"/api/jobs/{job.job_id}" if app.title == "alfred-jobs" else f"/api/jobs/{job.job_id}/events"
            resp = client.get(path, headers=headers)
            assert resp.status_code == 503, resp.text
            assert resp.json() == {"error": {"code": "unavailable",
                                             "message": "storage is briefly unavailable; retry shortly"}}
            assert resp.headers["retry-after"] == "1"


class LosesFirstPark(MemoryJobQueue):
    """A queue whose first SendMessage to the DLQ fails (after botocore gave up retrying)."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    def dead_letter(self, job_id: str, body: str, reason: str) -> None:
        if self.failures:
            self.failures -= 1
            raise TransientStoreError("ServiceUnavailable")
        super().dead_letter(job_id, body, reason)


def test_a_failed_job_is_parked_even_when_the_first_park_is_lost() -> None:
    """Regression (found with seed 3): the runner projected the record as failed, then parked the
    message; a lost SendMessage left a failed job that no redelivery would ever park (guarantee 8).
    Parking is now part of finalize, before the record turns terminal."""
    deps = replace(memory_deps(Settings(demo_step_seconds=0, lease_seconds=5)), queue=LosesFirstPark())
    runner = JobRunner(deps, DemoAgent(deps.agent_data, deps.settings))
    job_id = JobService(deps).submit("u1", ChatRequest(message="curry [fatal]"), None).job.job_id
    first = runner.run(Delivery(job_id, body=f'{{"job_id": "{job_id}"}}'))
    assert first.outcome is Outcome.RETRY, "the park failed: the message must come back"
    record = deps.jobs.get(job_id)
    assert record is not None and not record.terminal, "not projected as terminal before it is parked"
    second = runner.run(Delivery(job_id, body=f'{{"job_id": "{job_id}"}}'))
    assert second.outcome is Outcome.DONE and second.status is JobStatus.FAILED
    assert isinstance(deps.queue, LosesFirstPark) and deps.queue.dead == [(job_id, "recipe_refused")]
    record = deps.jobs.get(job_id)
    assert record is not None and record.status is JobStatus.FAILED
    assert runner.run(Delivery(job_id)).reason == "finished, expired or unknown"
    assert deps.queue.dead == [(job_id, "recipe_refused")], "parked once"


def test_a_poller_survives_a_storage_blip_at_start(stack: Stack) -> None:
    """Regression: local_worker.QueuePoller.run_forever read the queue ARN unguarded, so one
    throttled GetQueueAttributes killed the poller thread and left a live worker that never polled."""
    from alfred_tools.local_worker import QueuePoller

    poller = QueuePoller(stack.settings, wait_seconds=0, clients=stack.make_clients())
    failures = {"GetQueueAttributes": 2}
    receives = threading.Event()

    def before(model: Any, **_: Any) -> None:
        if failures.get(model.name, 0) > 0:
            failures[model.name] -= 1
            raise ClientError({"Error": {"Code": "RequestThrottled"},  # type: ignore[typeddict-item]
                               "ResponseMetadata": {"HTTPStatusCode": 400}}, model.name)
        if model.name == "ReceiveMessage":
            receives.set()

    poller.clients.sqs.meta.events.register("before-call.sqs", before)
    thread = threading.Thread(target=poller.run_forever, daemon=True)
    thread.start()
    try:
        assert receives.wait(60), "the poller never got to polling"  # a bound on a failure
        assert thread.is_alive() and failures["GetQueueAttributes"] == 0
    finally:
        poller.stopping.set()
        thread.join(10)
