"""Web Push end to end on the local stack: the DynamoDB claim and store, the notifier against a
local push service that decrypts with the subscription's keys and verifies the VAPID signature,
and a job run by a real worker process that pushes exactly once when it ends."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from alfred_jobs.adapters.aws import deserialize, serialize
from alfred_jobs.adapters.push import DynamoClaims, DynamoPushStore, WebPushNotifier
from alfred_jobs.domain.push import PushMessage
from alfred_jobs.entry.http.jobs_api import create_app
from alfred_jobs.service.auth import issue_local_token
from alfred_jobs.service.push import vapid_key
from tests.integration.helpers import wait_terminal
from tests.support.push_receiver import PushReceiver
from tests.support.stack import Stack, make_stack, wait_until

pytestmark = pytest.mark.integration

SERVER_KEY = ec.generate_private_key(ec.SECP256R1())
PEM = SERVER_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption()).decode()
PUSH_ENV = {"ALFRED_VAPID_PRIVATE_KEY": PEM, "ALFRED_PUSH_ENDPOINT_ALLOW": "127.0.0.1",
            "ALFRED_VAPID_SUBJECT": "mailto:tests@example.com"}


@pytest.fixture
def push_stack(emulator: dict[str, str]) -> Iterator[Stack]:
    with make_stack(emulator, **PUSH_ENV) as s:
        yield s


@pytest.fixture
def receiver(push_stack: Stack) -> Iterator[PushReceiver]:
    key = vapid_key(push_stack.settings)
    assert key is not None
    with PushReceiver(expected_key=key.public_key) as r:
        yield r


def message(seq: int = 5, job_id: str = "c" * 32) -> PushMessage:
    return PushMessage(job_id, "complete", seq, "Alfred finished", "Chicken and rice, 3 steps")


def test_the_claim_is_taken_once_per_event_and_again_after_retention(push_stack: Stack) -> None:
    claims = DynamoClaims(push_stack.clients, push_stack.settings)
    live = int(time.time()) + 3600
    assert claims.claim("d" * 32, 4, live) is True
    assert claims.claim("d" * 32, 4, live) is False
    assert claims.claim("d" * 32, 5, live) is True
    assert claims.claim("e" * 32, 1, int(time.time()) - 1) is True
    assert claims.claim("e" * 32, 1, live) is True, "an expired claim is no claim"


def test_the_subscriptions_item_stays_out_of_the_jobs_tables_indexes(push_stack: Stack, receiver: PushReceiver
                                                                      ) -> None:
    store = DynamoPushStore(push_stack.clients, push_stack.settings)
    store.add("alice", receiver.subscribe().subscription)
    item = push_stack.clients.dynamodb.get_item(TableName=push_stack.settings.jobs_table,
                                                Key=serialize({"job_id": "push#alice"}))["Item"]
    data = deserialize(item)
    assert not {"user_id", "created_sk", "active_shard", "due_at"} & set(data)
    assert data["expires_at"] >= int(time.time()) + push_stack.settings.retention_seconds - 5


def test_the_notifier_pushes_each_subscription_once_drops_gone_ones_and_retries_5xx(
        push_stack: Stack, receiver: PushReceiver) -> None:
    deps = push_stack.deps
    assert isinstance(deps.notifier, WebPushNotifier) and deps.push is not None
    ok, gone, flaky = receiver.subscribe(), receiver.subscribe(), receiver.subscribe()
    for b in (ok, gone, flaky):
        deps.push.add("alice", b.subscription)
    receiver.answer(gone.endpoint, 410)
    receiver.answer(flaky.endpoint, 500)
    deps.notifier.notify("alice", message())
    deps.notifier.notify("alice", message())  # the same event again: nothing
    assert [d.status for d in receiver.for_endpoint(ok.endpoint)] == [201]
    assert [d.status for d in receiver.for_endpoint(gone.endpoint)] == [410]
    assert [d.status for d in receiver.for_endpoint(flaky.endpoint)] == [500, 201]
    for d in receiver.deliveries:
        assert d.error is None, d.error
        assert d.payload == message().payload()
        assert d.claims is not None and d.claims["sub"] == "mailto:tests@example.com"
    assert [s.endpoint for s in deps.push.list("alice")] == [ok.endpoint, flaky.endpoint]


@pytest.mark.queue
def test_a_job_run_by_a_worker_process_pushes_once_when_it_ends(push_stack: Stack, receiver: PushReceiver) -> None:
    # GIVEN alice's browser subscribed through the API
    browser = receiver.subscribe()
    token = {"Authorization": f"Bearer {issue_local_token(push_stack.settings, 'alice')}"}
    with TestClient(create_app(push_stack.deps), raise_server_exceptions=False) as api:
        key = api.get("/api/push/key", headers=token).json()["public_key"]
        assert key == receiver.expected_key
        assert api.post("/api/push/subscriptions", json=browser.json(), headers=token).status_code == 201
        # WHEN a job runs to its end on a real worker process
        push_stack.start_worker()
        r = api.post("/api/chat", json={"message": "chicken and rice [steps=2]"}, headers=token)
        assert r.status_code == 202
        job_id = r.json()["job_id"]
    events = wait_terminal(push_stack, job_id)
    # THEN the browser's push service got exactly one push, decrypted to what the job's end says
    wait_until(lambda: receiver.deliveries, timeout=15, what="a push")
    time.sleep(1.0)  # and no second one
    (delivery,) = receiver.deliveries
    assert delivery.error is None, delivery.error
    assert delivery.status == 201 and delivery.endpoint == browser.endpoint
    assert delivery.payload is not None
    assert set(delivery.payload) == {"job_id", "status", "seq", "title", "body"}
    assert delivery.payload["job_id"] == job_id and delivery.payload["status"] == "complete"
    assert delivery.payload["seq"] == events[-1].seq
    assert isinstance(delivery.payload["title"], str) and delivery.payload["title"]


def test_an_entry_left_in_a_list_by_a_crash_gets_no_push_once_the_endpoint_moved(push_stack: Stack,
                                                                                  receiver: PushReceiver) -> None:
    # GIVEN alice's list still naming an endpoint that is bob's now (a subscribe that died after
    # putting the owner item, before tidying her list): written as such a crash leaves it
    store = DynamoPushStore(push_stack.clients, push_stack.settings)
    shared = receiver.subscribe().subscription
    store.add("alice-crash", shared)
    table, dynamodb = push_stack.settings.jobs_table, push_stack.clients.dynamodb
    before = dynamodb.get_item(TableName=table, Key=serialize({"job_id": "push#alice-crash"}),
                               ConsistentRead=True)["Item"]
    store.add("bob-crash", shared)
    dynamodb.put_item(TableName=table, Item=before)  # alice's list as it was before bob's subscribe
    # THEN her pushes leave it out; his get it
    assert store.list("alice-crash") == []
    assert store.list("bob-crash") == [shared]
