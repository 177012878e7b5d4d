"""Faithful mode: each AWS semantic the fidelity proxy puts back, shown with real boto3 clients
against moto + proxy (alfred_tools.fidelity)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from alfred_tools.fidelity import FidelityProxy, FidelitySpec, FidelitySpecError
from tests.support.fidelity import faithful_emulator
from tests.support.stack import wait_until

pytestmark = pytest.mark.integration

# Everything off but a short window and quick TTL; each test turns on what it shows.
BASE = "off;seed=7;stale_ms=300;ttl_delay=0-1;ttl_scan=0.2;exempt=inspector"
STANDARD = Config(retries={"mode": "standard", "max_attempts": 4})  # as the app: 4 retries, 5 attempts
SHORT = Config(retries={"mode": "standard", "total_max_attempts": 3})  # throttle back-off is seconds a retry
LONG = 60_000  # a staleness window no read in a test outlives


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[dict[str, str], FidelityProxy]]:
    with faithful_emulator(BASE) as p:
        yield p


@pytest.fixture
def proxy(pair: tuple[dict[str, str], FidelityProxy]) -> Iterator[FidelityProxy]:
    yield pair[1]
    pair[1].clear_script()
    pair[1].configure(BASE, replace=True)


def client(pair: tuple[dict[str, str], FidelityProxy], service: str, key: str = "testing",
           config: Config | None = None) -> Any:
    env = pair[0]
    session: Any = boto3.session.Session(aws_access_key_id=key, aws_secret_access_key="x", aws_session_token="x",
                                         region_name=env["AWS_DEFAULT_REGION"])
    return session.client(service, endpoint_url=env["AWS_ENDPOINT_URL"], config=config or STANDARD)


def new_table(ddb: Any, range_key: bool = False, ttl: str | None = None, gsi: bool = False) -> str:
    name = f"f{uuid.uuid4().hex[:10]}"
    schema = [{"AttributeName": "pk", "KeyType": "HASH"}]
    attrs = [{"AttributeName": "pk", "AttributeType": "S"}]
    if range_key:
        schema.append({"AttributeName": "sk", "KeyType": "RANGE"})
        attrs.append({"AttributeName": "sk", "AttributeType": "N"})
    extra: dict[str, Any] = {}
    if gsi:
        attrs.append({"AttributeName": "g", "AttributeType": "S"})
        extra["GlobalSecondaryIndexes"] = [{"IndexName": "by_g", "Projection": {"ProjectionType": "ALL"},
                                            "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}]}]
    ddb.create_table(TableName=name, KeySchema=schema, AttributeDefinitions=attrs, BillingMode="PAY_PER_REQUEST",
                     **extra)
    if ttl:
        ddb.update_time_to_live(TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl})
    return name


def key(pk: str, sk: int | None = None) -> dict[str, Any]:
    return {"pk": {"S": pk}, **({"sk": {"N": str(sk)}} if sk is not None else {})}


def value(ddb: Any, table: str, k: dict[str, Any], consistent: bool) -> str | None:
    item = ddb.get_item(TableName=table, Key=k, ConsistentRead=consistent).get("Item")
    return None if item is None else str(item["v"]["S"])


# ---- 1. eventually consistent reads are stale -------------------------------------------------------


def test_ec_reads_see_the_older_version_consistent_reads_the_newest(pair: Any, proxy: FidelityProxy) -> None:
    ddb = client(pair, "dynamodb")
    t = new_table(ddb)
    proxy.configure(stale_ms=0)  # v1 is old news: written before the window opens
    ddb.put_item(TableName=t, Item={**key("a"), "v": {"S": "v1"}})
    proxy.configure(stale_ms=LONG)
    out = ddb.update_item(TableName=t, Key=key("a"), UpdateExpression="SET v = :v",
                          ExpressionAttributeValues={":v": {"S": "v2"}})
    assert "Attributes" not in out  # the proxy's own ReturnValues never reach the caller
    assert [value(ddb, t, key("a"), consistent=False) for _ in range(3)] == ["v1"] * 3
    assert value(ddb, t, key("a"), consistent=True) == "v2"
    assert "Attributes" not in ddb.delete_item(TableName=t, Key=key("a"))
    assert value(ddb, t, key("a"), consistent=False) in ("v1", "v2")  # deleted, still returned
    assert value(ddb, t, key("a"), consistent=True) is None
    # the window closes: a fresh read sees the latest state again
    assert "stale_ms=300" in proxy.configure(stale_ms=None)  # back to what the proxy started with
    wait_until(lambda: value(ddb, t, key("a"), consistent=False) is None, timeout=10, what="the delete to show")
    stats = proxy.stats()
    assert stats["stale_answers_by_operation"]["GetItem"] >= 4 and stats["stale_answers"] >= 4


def test_a_just_created_item_is_absent_from_ec_reads(pair: Any, proxy: FidelityProxy) -> None:
    ddb = client(pair, "dynamodb")
    t = new_table(ddb)
    proxy.configure(f"stale_ms={LONG}")
    ddb.put_item(TableName=t, Item={**key("new"), "v": {"S": "x"}}, ConditionExpression="attribute_not_exists(pk)")
    assert value(ddb, t, key("new"), consistent=False) is None
    put = ddb.put_item(TableName=t, Item={**key("new2"), "v": {"S": "y"}}, ReturnValues="ALL_OLD")
    assert "Attributes" not in put  # nothing was there
    assert value(ddb, t, key("new"), consistent=True) == "x"
    ec = ddb.batch_get_item(RequestItems={t: {"Keys": [key("new")]}})
    assert ec["Responses"][t] == []
    strong = ddb.batch_get_item(RequestItems={t: {"Keys": [key("new")], "ConsistentRead": True}})
    assert [i["v"]["S"] for i in strong["Responses"][t]] == ["x"]


def test_query_and_scan_results_are_staled_item_by_item(pair: Any, proxy: FidelityProxy) -> None:
    ddb = client(pair, "dynamodb")
    t = new_table(ddb, range_key=True, gsi=True)
    proxy.configure("stale_ms=0")
    ddb.put_item(TableName=t, Item={**key("p", 1), "v": {"S": "old"}, "g": {"S": "G"}})
    proxy.configure(f"stale_ms={LONG}")
    ddb.update_item(TableName=t, Key=key("p", 1), UpdateExpression="SET v = :v",
                    ExpressionAttributeValues={":v": {"S": "new"}})
    ddb.put_item(TableName=t, Item={**key("p", 2), "v": {"S": "born"}, "g": {"S": "G"}})
    args: dict[str, Any] = {"TableName": t, "KeyConditionExpression": "pk = :p",
                            "ExpressionAttributeValues": {":p": {"S": "p"}}}
    strong = ddb.query(**args, ConsistentRead=True)
    assert [(i["sk"]["N"], i["v"]["S"]) for i in strong["Items"]] == [("1", "new"), ("2", "born")]
    ec = ddb.query(**args)
    assert [(i["sk"]["N"], i["v"]["S"]) for i in ec["Items"]] == [("1", "old")]
    assert ec["Count"] == 1
    # a projection without the key attributes is staled too, and answered in its own shape
    assert ddb.query(**args, ProjectionExpression="v")["Items"] == [{"v": {"S": "old"}}]
    batch = ddb.batch_get_item(RequestItems={t: {"Keys": [key("p", 1), key("p", 2)], "ProjectionExpression": "v"}})
    assert batch["Responses"][t] == [{"v": {"S": "old"}}]
    # the older version is re-checked against the filter, as the stale replica would
    filtered = ddb.query(TableName=t, KeyConditionExpression="pk = :p", FilterExpression="v = :n",
                         ExpressionAttributeValues={":p": {"S": "p"}, ":n": {"S": "new"}})
    assert filtered["Items"] == [] and filtered["Count"] == 0
    on_index = ddb.query(TableName=t, IndexName="by_g", KeyConditionExpression="g = :g",
                         ExpressionAttributeValues={":g": {"S": "G"}})
    assert [i["v"]["S"] for i in on_index["Items"]] == ["old"]
    assert [i["v"]["S"] for i in ddb.scan(TableName=t)["Items"]] == ["old"]
    assert len(ddb.scan(TableName=t, ConsistentRead=True)["Items"]) == 2


# ---- 2. TTL ------------------------------------------------------------------------------------------


def test_ttl_expired_items_are_deleted_late_and_live_ones_stay(pair: Any, proxy: FidelityProxy) -> None:
    ddb = client(pair, "dynamodb")
    proxy.configure("ttl_delay=1-2")
    t = new_table(ddb, ttl="exp")
    past, future = int(time.time()) - 10, int(time.time()) + 3600
    for i in range(3):
        ddb.put_item(TableName=t, Item={**key(f"dead{i}"), "v": {"S": "x"}, "exp": {"N": str(past)}})
    ddb.put_item(TableName=t, Item={**key("alive"), "v": {"S": "x"}, "exp": {"N": str(future)}})
    # like DynamoDB: expired is not deleted; the item stays readable until the deleter comes by
    assert value(ddb, t, key("dead0"), consistent=True) == "x"

    def remaining() -> set[str]:
        return {i["pk"]["S"] for i in ddb.scan(TableName=t, ConsistentRead=True)["Items"]}

    wait_until(lambda: remaining() == {"alive"}, timeout=20, what="expired items to be deleted")
    assert proxy.stats()["ttl_deletions_by_table"][t] == 3


# ---- 3. ambiguous writes -----------------------------------------------------------------------------


@pytest.mark.parametrize("close", [0, 1], ids=["http-500", "connection-closed"])
@pytest.mark.parametrize("config", [None, STANDARD], ids=["botocore-default", "standard-4"])
def test_an_ambiguous_conditional_put_lands_and_its_retry_fails_the_condition(
        pair: Any, proxy: FidelityProxy, close: int, config: Config | None) -> None:
    ddb = client(pair, "dynamodb", config=config or Config())
    t = new_table(ddb)
    proxy.configure(f"ambiguous_close={close}")
    proxy.script([{"action": "PutItem", "table": t, "fault": "ambiguous"}])
    proxy.reset_calls()
    with pytest.raises(ClientError) as err:
        ddb.put_item(TableName=t, Item={**key("once"), "v": {"S": "mine"}},
                     ConditionExpression="attribute_not_exists(pk)")
    assert err.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
    assert err.value.response["ResponseMetadata"]["RetryAttempts"] == 1  # botocore did retry
    assert value(ddb, t, key("once"), consistent=True) == "mine"
    puts = [c for c in proxy.calls() if c["action"] == "PutItem"]
    assert [(c["status"], c["fault"]) for c in puts] == [(0 if close else 500, "ambiguous"), (400, None)]


def test_an_ambiguous_send_is_sent_twice(pair: Any, proxy: FidelityProxy) -> None:
    sqs = client(pair, "sqs")
    q = sqs.create_queue(QueueName=f"f{uuid.uuid4().hex[:10]}")["QueueUrl"]
    proxy.script([{"action": "SendMessage", "queue_url_contains": q.rsplit("/", 1)[1], "fault": "ambiguous"}])
    sqs.send_message(QueueUrl=q, MessageBody="hello")
    attrs = sqs.get_queue_attributes(QueueUrl=q, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    assert attrs["ApproximateNumberOfMessages"] == "2"


# ---- 4. throttling and 5xx ----------------------------------------------------------------------------


@pytest.mark.parametrize("fault, codes", [
    ("throttle", {"ProvisionedThroughputExceededException", "ThrottlingException"}),
    ("5xx", {"InternalServerError"})])
def test_scripted_dynamodb_faults_surface_once_retries_are_exhausted(
        pair: Any, proxy: FidelityProxy, fault: str, codes: set[str]) -> None:
    ddb = client(pair, "dynamodb", config=SHORT)
    t = new_table(ddb)
    proxy.script([{"action": "GetItem", "table": t, "fault": fault, "times": 3}])
    with pytest.raises(ClientError) as err:
        ddb.get_item(TableName=t, Key=key("a"))
    assert err.value.response["Error"]["Code"] in codes
    assert err.value.response["ResponseMetadata"]["RetryAttempts"] == 2
    if fault == "5xx":  # (throttles back off for seconds: the bound test shows them settling)
        proxy.script([{"action": "GetItem", "table": t, "fault": fault, "times": 2}])
        assert ddb.get_item(TableName=t, Key=key("a"))["ResponseMetadata"]["RetryAttempts"] == 2


@pytest.mark.parametrize("fault, codes", [
    ("throttle", {"RequestThrottled", "ThrottlingException"}), ("5xx", {"InternalError", "ServiceUnavailable"})])
def test_scripted_sqs_faults_parse_as_sqs_errors(pair: Any, proxy: FidelityProxy, fault: str, codes: set[str]) -> None:
    sqs = client(pair, "sqs", config=SHORT)
    q = sqs.create_queue(QueueName=f"f{uuid.uuid4().hex[:10]}")["QueueUrl"]
    proxy.script([{"action": "SendMessage", "fault": fault, "times": 3}])
    with pytest.raises(ClientError) as err:
        sqs.send_message(QueueUrl=q, MessageBody="x")
    assert err.value.response["Error"]["Code"] in codes
    assert err.value.response["ResponseMetadata"]["RetryAttempts"] == 2


# ---- 5. SQS duplicates and lost deletes -----------------------------------------------------------------


def test_a_duplicate_is_received_twice_and_only_the_newest_receipt_deletes_it(
        pair: Any, proxy: FidelityProxy) -> None:
    sqs = client(pair, "sqs")
    q = sqs.create_queue(QueueName=f"f{uuid.uuid4().hex[:10]}", Attributes={"VisibilityTimeout": "30"})["QueueUrl"]
    sqs.send_message(QueueUrl=q, MessageBody="job")
    proxy.configure("sqs_stale_receipt=1")  # as in the aws profile (moto alone deletes with any handle)
    proxy.script([{"action": "ReceiveMessage", "fault": "duplicate"}])
    first = sqs.receive_message(QueueUrl=q, WaitTimeSeconds=1)["Messages"][0]
    second = sqs.receive_message(QueueUrl=q, WaitTimeSeconds=1, AttributeNames=["ApproximateReceiveCount"])
    again = second["Messages"][0]
    assert again["MessageId"] == first["MessageId"] and again["ReceiptHandle"] != first["ReceiptHandle"]
    assert again["Attributes"]["ApproximateReceiveCount"] == "2"

    def in_flight() -> int:
        attrs = sqs.get_queue_attributes(QueueUrl=q, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])
        return int(attrs["Attributes"]["ApproximateNumberOfMessagesNotVisible"])

    sqs.delete_message(QueueUrl=q, ReceiptHandle=first["ReceiptHandle"])  # superseded: succeeds, deletes nothing
    assert in_flight() == 1
    sqs.delete_message(QueueUrl=q, ReceiptHandle=again["ReceiptHandle"])
    assert in_flight() == 0


@pytest.mark.parametrize("batch", [False, True], ids=["DeleteMessage", "DeleteMessageBatch"])
def test_a_lost_delete_brings_the_message_back(pair: Any, proxy: FidelityProxy, batch: bool) -> None:
    sqs = client(pair, "sqs")
    q = sqs.create_queue(QueueName=f"f{uuid.uuid4().hex[:10]}", Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    sqs.send_message(QueueUrl=q, MessageBody="job")
    msg = sqs.receive_message(QueueUrl=q, WaitTimeSeconds=1)["Messages"][0]
    proxy.script([{"action": "DeleteMessageBatch" if batch else "DeleteMessage", "fault": "lost_delete"}])
    if batch:
        out = sqs.delete_message_batch(QueueUrl=q, Entries=[{"Id": "0", "ReceiptHandle": msg["ReceiptHandle"]}])
        assert out["Successful"] == [{"Id": "0"}] and not out.get("Failed")
    else:
        sqs.delete_message(QueueUrl=q, ReceiptHandle=msg["ReceiptHandle"])
    back = wait_until(lambda: sqs.receive_message(QueueUrl=q, WaitTimeSeconds=1).get("Messages"), timeout=15,
                      what="the message to come back")
    assert back[0]["MessageId"] == msg["MessageId"]
    assert proxy.stats()["injected"][f"lost_delete/{'DeleteMessageBatch' if batch else 'DeleteMessage'}"] >= 1


# ---- recording, exemption, random faults ------------------------------------------------------------------


def test_calls_are_recorded_per_principal_with_their_resource(pair: Any, proxy: FidelityProxy) -> None:
    alice, bob = client(pair, "dynamodb", "alice"), client(pair, "dynamodb", "bob")
    t = new_table(alice, gsi=True)
    secrets = client(pair, "secretsmanager", "alice")
    secret = f"s{uuid.uuid4().hex[:8]}"
    secrets.create_secret(Name=secret, SecretString="x")
    proxy.reset_calls()
    alice.put_item(TableName=t, Item={**key("a"), "g": {"S": "G"}})
    bob.batch_get_item(RequestItems={t: {"Keys": [key("a")]}})
    bob.query(TableName=t, IndexName="by_g", KeyConditionExpression="g = :g",
              ExpressionAttributeValues={":g": {"S": "G"}})
    secrets.get_secret_value(SecretId=secret)
    seen = [{k: c.get(k) for k in ("principal", "service", "action", "resource", "index", "status")}
            for c in proxy.calls()]
    assert seen == [
        {"principal": "alice", "service": "dynamodb", "action": "PutItem", "resource": t, "index": None, "status": 200},
        {"principal": "bob", "service": "dynamodb", "action": "BatchGetItem", "resource": [t], "index": None,
         "status": 200},
        {"principal": "bob", "service": "dynamodb", "action": "Query", "resource": t, "index": "by_g", "status": 200},
        {"principal": "alice", "service": "secretsmanager", "action": "GetSecretValue", "resource": secret,
         "index": None, "status": 200}]


def test_random_faults_are_bounded_per_request_and_spare_exempt_principals(pair: Any, proxy: FidelityProxy) -> None:
    app, inspector = client(pair, "dynamodb"), client(pair, "dynamodb", "inspector")
    t = new_table(inspector)
    proxy.configure("throttle=1")  # every call throttled: only the bound lets anything through
    out = app.get_item(TableName=t, Key=key("a"))
    assert out["ResponseMetadata"]["RetryAttempts"] == 2
    assert inspector.get_item(TableName=t, Key=key("a"))["ResponseMetadata"]["RetryAttempts"] == 0
    proxy.configure("throttle=0")
    proxy.script([{"action": "GetItem", "fault": "5xx", "times": 1}])  # no principal named: not the inspector's
    assert inspector.get_item(TableName=t, Key=key("a"))["ResponseMetadata"]["RetryAttempts"] == 0
    assert app.get_item(TableName=t, Key=key("a"))["ResponseMetadata"]["RetryAttempts"] == 1
    faults = [(c["principal"], c["fault"]) for c in proxy.calls() if c["fault"]]
    assert faults and all(p != "inspector" for p, _ in faults)


def test_control_api_rejects_bad_input(pair: Any, proxy: FidelityProxy) -> None:
    base = f"{proxy.endpoint}/_fidelity"
    assert httpx.get(f"{base}/health").status_code == 200
    assert httpx.post(f"{base}/script", json=[{"fault": "explode"}]).status_code == 400
    assert httpx.post(f"{base}/script", json=[{"fault": "duplicate", "action": "GetItem"}]).status_code == 400
    assert httpx.post(f"{base}/config", json={"spec": "stale_ms=-1"}).status_code == 400
    assert httpx.get(f"{base}/nope").status_code == 404
    assert "stale_ms=300" in proxy.configure("")


def test_the_faithful_fixture_is_a_working_pair(faithful: tuple[dict[str, str], FidelityProxy]) -> None:
    env, fp = faithful
    assert env["AWS_ENDPOINT_URL"] == fp.endpoint
    assert "exempt=inspector" in fp.stats()["spec"]


# ---- the spec format ------------------------------------------------------------------------------------


def test_spec_parsing() -> None:
    aws = FidelitySpec.parse("aws")
    assert (aws.stale_ms, aws.ttl_delay, aws.exempt) == (500, (0, 3), frozenset({"inspector"}))
    assert {k: aws.rate(k, "PutItem") for k in ("ambiguous", "throttle", "5xx")} == {
        "ambiguous": 0.03, "throttle": 0.01, "5xx": 0.01}
    assert aws.rate("sqs_duplicate", "ReceiveMessage") == 0.05 and aws.rate("sqs_lost_delete", "DeleteMessage") == 0.05
    spec = FidelitySpec.parse("aws;seed=3;ambiguous.UpdateItem=0.1;stale_ms=0;exempt=a,b")
    assert spec.rate("ambiguous", "UpdateItem") == 0.1 and spec.rate("ambiguous", "PutItem") == 0.03
    assert (spec.seed, spec.stale_ms, spec.exempt) == (3, 0, frozenset({"a", "b"}))
    assert FidelitySpec.parse(spec.describe()) == spec
    assert FidelitySpec.parse("profile=off").rates == {}
    for bad in ("stale_ms=x", "throttle=2", "nosuch=1", "ttl_delay=3-1", "mars"):
        with pytest.raises(FidelitySpecError):
            FidelitySpec.parse(bad)
