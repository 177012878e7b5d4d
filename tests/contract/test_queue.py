"""JobQueue: the contract of ``alfred_jobs.ports.JobQueue``, on the fake and on SQS.

Deliberate difference: the fake only records the calls (what unit tests assert on), it delivers
nothing; so on memory these tests check the record, on SQS that the message is really in the queue
(or the dead-letter queue). Where SQS refuses what the fake records, the test says so.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from alfred_jobs.adapters.memory import SentMessage
from alfred_jobs.exceptions import StoreError
from tests.contract.support import Backend, uid


def queue_attrs(b: Backend, dlq: bool = False) -> dict[str, int]:
    c = b.aws.clients
    out = c.sqs.get_queue_attributes(
        QueueUrl=c.dlq_url if dlq else c.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                        "ApproximateNumberOfMessagesDelayed"])["Attributes"]
    return {k.removeprefix("ApproximateNumberOfMessages") or "Visible": int(v) for k, v in out.items()}


def receive(b: Backend, dlq: bool = False) -> list[dict[str, Any]]:
    c = b.aws.clients
    out = c.sqs.receive_message(QueueUrl=c.dlq_url if dlq else c.queue_url, MaxNumberOfMessages=10,
                                MessageAttributeNames=["All"], WaitTimeSeconds=0)
    return list(out.get("Messages", []))


def test_send_enqueues_the_job(fresh_backend: Backend) -> None:
    b = fresh_backend
    job_id = uid("job")
    b.queue.send(job_id)
    if b.is_aws:
        (msg,) = receive(b)
        assert json.loads(msg["Body"]) == {"job_id": job_id}
        assert queue_attrs(b, dlq=True)["Visible"] == 0
    else:
        assert b.memory_queue.sent == [SentMessage(job_id, 0)]


def test_send_with_a_delay_does_not_raise_whatever_the_delay(fresh_backend: Backend) -> None:
    """SQS takes 0..900 s and the adapter clamps into that range; the fake records the delay asked
    for, unclamped (so a unit test sees what the caller wanted)."""
    b = fresh_backend
    delays = {uid("job"): d for d in (5, 5000, -3)}
    for job_id, delay in delays.items():
        b.queue.send(job_id, delay_seconds=delay)
    if b.is_aws:
        attrs = queue_attrs(b)
        # -3 is sent as 0: visible at once; 5 and 5000 (sent as 900) are delayed.
        assert (attrs["Visible"], attrs["Delayed"]) == (1, 2)
        (msg,) = receive(b)
        assert json.loads(msg["Body"]) == {"job_id": next(j for j, d in delays.items() if d == -3)}
    else:
        assert b.memory_queue.sent == [SentMessage(j, d) for j, d in delays.items()]


def test_change_visibility_hides_and_shows_an_in_flight_message(fresh_backend: Backend) -> None:
    b = fresh_backend
    if not b.is_aws:
        b.queue.change_visibility("receipt-1", 65)
        b.queue.change_visibility("receipt-1", 0)
        assert b.memory_queue.visibility == {"receipt-1": 0}, "the last value asked for, per receipt handle"
        return
    b.queue.send(uid("job"))
    (msg,) = receive(b)
    b.queue.change_visibility(msg["ReceiptHandle"], 65)
    assert receive(b) == [] and queue_attrs(b)["NotVisible"] == 1
    b.queue.change_visibility(msg["ReceiptHandle"], 0)
    (again,) = receive(b)
    assert again["MessageId"] == msg["MessageId"]
    b.queue.change_visibility(again["ReceiptHandle"], -5)  # clamped to 0, as the fake records it raw
    assert len(receive(b)) == 1


@pytest.mark.parametrize("case", ["unknown_receipt", "beyond_12_hours"])
def test_change_visibility_refusals_are_sqs_only(fresh_backend: Backend, case: str) -> None:
    """Where the fake is looser: it records either call, SQS refuses both (``StoreError``).

    - a receipt handle SQS never issued;
    - a visibility ending more than 12 hours after the message's start (its receipt on AWS, its
      send on moto). The adapter clamps ``seconds`` to 43200 per call, which is not enough at the
      top: the 12 hours are counted in total, not from this call. No caller comes near it
      (heartbeats ask for 2 leases + 5 s, retries for at most ``retry_max_seconds``)."""
    b = fresh_backend
    seconds = 43200 if case == "beyond_12_hours" else 30
    if b.is_aws:
        b.queue.send(uid("job"))
        handle = "not-a-receipt-handle" if case == "unknown_receipt" else receive(b)[0]["ReceiptHandle"]
        with pytest.raises(StoreError):
            b.queue.change_visibility(handle, seconds)
    else:
        b.queue.change_visibility("not-a-receipt-handle", seconds)
        assert b.memory_queue.visibility == {"not-a-receipt-handle": seconds}


def test_dead_letter_parks_the_message(fresh_backend: Backend) -> None:
    """On SQS the body goes to the dead-letter queue as given, with ``job_id`` and ``reason``
    attributes (the reason cut to 256 characters); the fake records ``(job_id, reason)`` whole and
    keeps no body."""
    b = fresh_backend
    job_id = uid("job")
    body = json.dumps({"job_id": job_id, "extra": "as delivered"})
    reasons = ["recipe_refused", "x" * 300]
    for reason in reasons:
        b.queue.dead_letter(job_id, body, reason)
    if b.is_aws:
        parked = receive(b, dlq=True)
        assert [m["Body"] for m in parked] == [body, body]
        assert {m["MessageAttributes"]["job_id"]["StringValue"] for m in parked} == {job_id}
        assert sorted(m["MessageAttributes"]["reason"]["StringValue"] for m in parked) == sorted(
            [reasons[0], reasons[1][:256]])
        assert queue_attrs(b)["Visible"] == 0, "nothing in the job queue"
    else:
        assert b.memory_queue.dead == [(job_id, r) for r in reasons]
