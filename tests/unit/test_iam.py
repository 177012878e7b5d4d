"""Each function's role, as SAM builds it from template.yaml, allows every AWS call its code makes.

The roles come from aws-sam-translator's own expansion of the template (policy templates and the
managed policies SAM attaches), resolved for a nominal deployment; ``tests/support/iam.py``
evaluates a call against them with IAM's wildcard matching. The integration test
(``tests/integration/test_template_env.py``) checks the calls really made by each function; this
one checks the list below, which names every call each function's code can make (including the
SQS event source mapping's own, made with the worker's role) — so a path the integration test
does not reach (a lease heartbeat, parking in the DLQ, cancel, list) is covered too.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.iam import (
    MANAGED_POLICIES,
    Arns,
    allowed,
    arns_for,
    denied_calls,
    managed_policy_arns,
    matches,
    role_statements,
    without_action,
)
from tests.support.template_env import FUNCTIONS, Resolver, Unresolvable, nominal_resolver

RESOLVER = nominal_resolver()
ARNS = arns_for(RESOLVER)

# (function, service, API action, resource logical id, index) — every call the code makes.
CALLS: list[tuple[str, str, str, str, str | None]] = [
    # submit: the job API (jobs_api + JobService): secrets at start, create/read/list/cancel, events
    ("SubmitFunction", "secretsmanager", "GetSecretValue", "StreamTokenSecret", None),
    ("SubmitFunction", "secretsmanager", "GetSecretValue", "CursorSecret", None),
    ("SubmitFunction", "dynamodb", "PutItem", "JobsTable", None),
    ("SubmitFunction", "dynamodb", "GetItem", "JobsTable", None),
    ("SubmitFunction", "dynamodb", "UpdateItem", "JobsTable", None),
    ("SubmitFunction", "dynamodb", "Query", "JobsTable", "by_user"),
    ("SubmitFunction", "dynamodb", "PutItem", "EventsTable", None),
    ("SubmitFunction", "dynamodb", "GetItem", "EventsTable", None),
    ("SubmitFunction", "dynamodb", "BatchGetItem", "EventsTable", None),
    ("SubmitFunction", "dynamodb", "Query", "ConversationsTable", None),
    ("SubmitFunction", "sqs", "SendMessage", "JobsQueue", None),
    # Web Push: the VAPID secret (for the public key); subscriptions are push#<user> items
    ("SubmitFunction", "secretsmanager", "GetSecretValue", "VapidSecret", None),
    # a submit refused after its put (429, 409) deletes the record
    ("SubmitFunction", "dynamodb", "DeleteItem", "JobsTable", None),
    # worker: lease, journal, projection, conversation turn, step effects, agent data
    ("WorkerFunction", "dynamodb", "GetItem", "JobsTable", None),
    ("WorkerFunction", "dynamodb", "UpdateItem", "JobsTable", None),
    ("WorkerFunction", "dynamodb", "PutItem", "EventsTable", None),
    ("WorkerFunction", "dynamodb", "GetItem", "EventsTable", None),
    ("WorkerFunction", "dynamodb", "BatchGetItem", "EventsTable", None),
    ("WorkerFunction", "dynamodb", "PutItem", "ConversationsTable", None),
    ("WorkerFunction", "dynamodb", "Query", "ConversationsTable", None),
    ("WorkerFunction", "dynamodb", "UpdateItem", "AgentDataTable", None),
    ("WorkerFunction", "dynamodb", "PutItem", "AgentDataTable", None),
    ("WorkerFunction", "dynamodb", "Query", "AgentDataTable", None),
    # worker and SQS: the lease heartbeat and a retry's backoff set the message's visibility; a
    # job out of attempts (or a malformed message) is parked in the DLQ
    ("WorkerFunction", "sqs", "ChangeMessageVisibility", "JobsQueue", None),
    ("WorkerFunction", "sqs", "SendMessage", "JobsDeadLetterQueue", None),
    # the SQS event source mapping polls with the function's role
    ("WorkerFunction", "sqs", "ReceiveMessage", "JobsQueue", None),
    ("WorkerFunction", "sqs", "DeleteMessage", "JobsQueue", None),
    ("WorkerFunction", "sqs", "DeleteMessageBatch", "JobsQueue", None),
    ("WorkerFunction", "sqs", "GetQueueAttributes", "JobsQueue", None),
    # Web Push: the VAPID key; the once-per-event claim (PutItem, and GetItem of an ambiguous
    # one), the subscriptions (GetItem), a gone one removed (UpdateItem)
    ("WorkerFunction", "secretsmanager", "GetSecretValue", "VapidSecret", None),
    ("WorkerFunction", "dynamodb", "PutItem", "JobsTable", None),
    # the hand-off: a job that ends sends the jobs its end lets start
    ("WorkerFunction", "sqs", "SendMessage", "JobsQueue", None),
    # sweeper: the due index, postpone, re-send
    ("SweeperFunction", "dynamodb", "Query", "JobsTable", "due"),
    ("SweeperFunction", "dynamodb", "UpdateItem", "JobsTable", None),
    ("SweeperFunction", "sqs", "SendMessage", "JobsQueue", None),
    # the users' gates and the jobs blocking them; the queue's backlog
    ("SweeperFunction", "dynamodb", "GetItem", "JobsTable", None),
    ("SweeperFunction", "sqs", "GetQueueAttributes", "JobsQueue", None),
    # the gates due for a check of their entries (the sparse gate_check index)
    ("SweeperFunction", "dynamodb", "Query", "JobsTable", "gate_check"),
    # stream: its secret at start, the job, the log (key reads)
    ("StreamFunction", "secretsmanager", "GetSecretValue", "StreamTokenSecret", None),
    ("StreamFunction", "dynamodb", "GetItem", "JobsTable", None),
    ("StreamFunction", "dynamodb", "GetItem", "EventsTable", None),
    ("StreamFunction", "dynamodb", "BatchGetItem", "EventsTable", None),
]

# Least privilege: calls a function must NOT be able to make.
NOT_ALLOWED: list[tuple[str, str, str, str]] = [
    ("StreamFunction", "dynamodb", "PutItem", "EventsTable"),
    ("StreamFunction", "secretsmanager", "GetSecretValue", "CursorSecret"),
    ("WorkerFunction", "secretsmanager", "GetSecretValue", "StreamTokenSecret"),
    ("StreamFunction", "secretsmanager", "GetSecretValue", "VapidSecret"),
    ("SweeperFunction", "secretsmanager", "GetSecretValue", "VapidSecret"),
    ("SweeperFunction", "secretsmanager", "GetSecretValue", "CursorSecret"),
    ("SweeperFunction", "dynamodb", "GetItem", "ConversationsTable"),
    ("SweeperFunction", "dynamodb", "PutItem", "EventsTable"),
    ("SweeperFunction", "sqs", "ReceiveMessage", "JobsQueue"),
    ("SubmitFunction", "dynamodb", "PutItem", "ConversationsTable"),
    ("SubmitFunction", "sqs", "ChangeMessageVisibility", "JobsQueue"),
    ("SubmitFunction", "sqs", "SendMessage", "JobsDeadLetterQueue"),
]


def call(function: str, service: str, action: str, resource: str, index: str | None = None,
         resolver: Resolver = RESOLVER) -> dict[str, Any]:
    """A call as the fidelity proxy records it, naming the nominal deployment's resource."""
    out: dict[str, Any] = {"principal": function, "service": service, "action": action,
                           "resource": resolver.physical.refs[resource], "status": 200}
    if action in ("BatchGetItem", "BatchWriteItem"):
        out["resource"] = [out["resource"]]
    if index:
        out["index"] = index
    return out


def statements(function: str) -> list[dict[str, Any]]:
    return role_statements(function, RESOLVER)


# ---- the roles -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("function", "service", "action", "resource", "index"), CALLS,
                         ids=[f"{c[0]}-{c[2]}-{c[3]}" for c in CALLS])
def test_each_call_the_code_makes_is_allowed_by_its_role(function: str, service: str, action: str,
                                                         resource: str, index: str | None) -> None:
    denied = denied_calls([call(function, service, action, resource, index)], statements(function), ARNS)
    assert not denied, f"template.yaml does not grant {function}: {denied}"


@pytest.mark.parametrize(("function", "service", "action", "resource"), NOT_ALLOWED,
                         ids=[f"{c[0]}-{c[2]}-{c[3]}" for c in NOT_ALLOWED])
def test_roles_grant_nothing_a_function_does_not_use(function: str, service: str, action: str,
                                                     resource: str) -> None:
    assert denied_calls([call(function, service, action, resource)], statements(function), ARNS)


def test_every_function_of_the_template_is_checked() -> None:
    functions = {lid for lid, r in RESOLVER.template["Resources"].items() if r["Type"] == "AWS::Lambda::Function"}
    assert functions == set(FUNCTIONS)
    assert {c[0] for c in CALLS} == set(FUNCTIONS)


def test_sam_attaches_the_managed_policies_of_each_function_s_features() -> None:
    names = {f: {arn.rsplit("/", 1)[-1] for arn in managed_policy_arns(f, RESOLVER)} for f in FUNCTIONS}
    xray = {"AWSXrayWriteOnlyAccess"}  # Tracing: Active (aws partition)
    assert names["WorkerFunction"] == {"AWSLambdaBasicExecutionRole", "AWSLambdaSQSQueueExecutionRole"} | xray
    for f in ("SubmitFunction", "SweeperFunction", "StreamFunction"):
        assert names[f] == {"AWSLambdaBasicExecutionRole"} | xray, f
    assert set().union(*names.values()) <= set(MANAGED_POLICIES)


def test_policy_templates_are_expanded_by_sam_for_the_deployed_names() -> None:
    table = RESOLVER.physical.refs["JobsTable"]
    crud = [s for s in statements("SweeperFunction")
            if "dynamodb:UpdateItem" in s["Action"] and s["Resource"][0].endswith(f"table/{table}")]
    assert len(crud) == 1
    assert crud[0]["Resource"] == [f"arn:aws:dynamodb:us-east-1:123456789012:table/{table}",
                                   f"arn:aws:dynamodb:us-east-1:123456789012:table/{table}/index/*"]
    secret = RESOLVER.physical.refs["StreamTokenSecret"]
    assert any(s["Action"] == ["secretsmanager:GetSecretValue"] and s["Resource"] == [secret]
               for s in statements("StreamFunction"))
    # the Bedrock statement is there only when the agent is Bedrock (!If UseBedrock)
    assert not any(a.startswith("bedrock:") for s in statements("WorkerFunction") for a in s["Action"])


def test_the_bedrock_agent_may_invoke_its_model_and_nothing_else() -> None:
    model = "anthropic.claude-3-5-haiku-20241022-v1:0"
    resolver = nominal_resolver({"AgentKind": "bedrock", "BedrockModelId": model})
    worker = role_statements("WorkerFunction", resolver)
    arns = arns_for(resolver)
    converse = {"principal": "WorkerFunction", "service": "bedrock-runtime", "action": "Converse",
                "resource": model}
    assert not denied_calls([converse, {**converse, "action": "ConverseStream"}], worker, arns)
    assert denied_calls([{**converse, "resource": "anthropic.claude-3-opus-20240229-v1:0"}], worker, arns)


# ---- the check has teeth ---------------------------------------------------------------------------


def test_a_role_without_change_message_visibility_fails_the_worker_s_heartbeat() -> None:
    heartbeat = call("WorkerFunction", "sqs", "ChangeMessageVisibility", "JobsQueue")
    stripped = without_action(statements("WorkerFunction"), "sqs:ChangeMessageVisibility")
    assert denied_calls([heartbeat], stripped, ARNS) == [
        f"WorkerFunction: sqs:ChangeMessageVisibility on {ARNS.queue(heartbeat['resource'])} (HTTP 200)"]


def test_a_role_without_a_dynamodb_action_fails_every_call_of_it() -> None:
    worker_calls = [call(*c) for c in CALLS if c[0] == "WorkerFunction"]
    stripped = without_action(statements("WorkerFunction"), "dynamodb:UpdateItem")
    denied = set(denied_calls(worker_calls, stripped, ARNS)) - set(
        denied_calls(worker_calls, statements("WorkerFunction"), ARNS))
    assert denied and all("dynamodb:UpdateItem" in line for line in denied)
    assert {line.rsplit("table/", 1)[1].split(" ")[0] for line in denied} == {
        RESOLVER.physical.refs["JobsTable"], RESOLVER.physical.refs["AgentDataTable"]}


def test_a_call_on_another_deployment_s_table_is_denied() -> None:
    other = {**call("StreamFunction", "dynamodb", "GetItem", "JobsTable"), "resource": "someone-elses-jobs"}
    assert denied_calls([other], statements("StreamFunction"), ARNS)


# ---- IAM semantics ---------------------------------------------------------------------------------


def test_wildcards_match_as_iam_does() -> None:
    assert matches("sqs:SendMessage*", "sqs:SendMessageBatch", ignore_case=True)
    assert matches("sqs:sendmessage", "sqs:SendMessage", ignore_case=True)
    assert not matches("sqs:SendMessage", "sqs:SendMessageBatch", ignore_case=True)
    assert matches("arn:aws:dynamodb:*:*:table/t/index/*", "arn:aws:dynamodb:eu-west-1:1:table/t/index/by_user")
    assert not matches("arn:aws:dynamodb:r:1:table/t", "arn:aws:dynamodb:r:1:table/t/index/by_user")
    assert not matches("arn:aws:dynamodb:r:1:table/t", "arn:aws:dynamodb:r:1:table/T")  # ARNs: case matters
    assert matches("arn:aws:sqs:r:1:q?", "arn:aws:sqs:r:1:q1")
    assert not matches("arn:aws:sqs:r:1:q?", "arn:aws:sqs:r:1:q")
    assert matches("*", "arn:aws:anything") and matches("a.b", "a.b") and not matches("a.b", "aXb")


def test_allowed_needs_the_action_and_the_resource_in_one_statement() -> None:
    st = [{"Effect": "Allow", "Action": "dynamodb:GetItem", "Resource": "arn:aws:dynamodb:r:1:table/a"},
          {"Effect": "Allow", "Action": ["dynamodb:PutItem"], "Resource": ["arn:aws:dynamodb:r:1:table/b"]}]
    assert allowed(st, "dynamodb:GetItem", "arn:aws:dynamodb:r:1:table/a")
    assert allowed(st, "DynamoDB:getitem", "arn:aws:dynamodb:r:1:table/a")
    assert not allowed(st, "dynamodb:GetItem", "arn:aws:dynamodb:r:1:table/b")
    assert not allowed(st, "dynamodb:PutItem", "arn:aws:dynamodb:r:1:table/a")
    assert not allowed([], "dynamodb:GetItem", "arn:aws:dynamodb:r:1:table/a")


@pytest.mark.parametrize("statement", [
    {"Effect": "Deny", "Action": "*", "Resource": "*"},
    {"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"},
    {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*",
     "Condition": {"Bool": {"aws:SecureTransport": "true"}}},
])
def test_statements_the_check_does_not_evaluate_are_refused(statement: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        allowed([statement], "s3:GetObject", "arn:aws:s3:::b/k")


def test_arns_of_calls() -> None:
    arns = Arns(region="eu-west-1", account_id="111122223333",
                secrets={"s": "arn:aws:secretsmanager:eu-west-1:111122223333:secret:s-AbCdEf"})
    assert arns.table("t") == "arn:aws:dynamodb:eu-west-1:111122223333:table/t"
    assert arns.index("t", "due") == "arn:aws:dynamodb:eu-west-1:111122223333:table/t/index/due"
    assert arns.queue("http://127.0.0.1:5000/111122223333/q-1") == "arn:aws:sqs:eu-west-1:111122223333:q-1"
    assert arns.queue("https://sqs.eu-west-1.amazonaws.com/111122223333/q-1") == arns.queue("q-1")
    assert arns.secret("s") == "arn:aws:secretsmanager:eu-west-1:111122223333:secret:s-AbCdEf"
    assert arns.secret("arn:aws:secretsmanager:x") == "arn:aws:secretsmanager:x"
    with pytest.raises(Unresolvable):
        arns.secret("unknown")
    assert arns.of_call({"service": "dynamodb", "action": "BatchGetItem", "resource": ["a", "b"]}) == [
        ("dynamodb:BatchGetItem", arns.table("a")), ("dynamodb:BatchGetItem", arns.table("b"))]
    assert arns.of_call({"service": "dynamodb", "action": "Query", "resource": "t", "index": "due"}) == [
        ("dynamodb:Query", arns.index("t", "due"))]
    assert arns.of_call({"service": "sqs", "action": "DeleteMessageBatch", "resource": "q"}) == [
        ("sqs:DeleteMessage", arns.queue("q"))]
    # a service the check does not know needs a "*" grant
    assert arns.of_call({"service": "cloudwatch", "action": "PutMetricData", "resource": None}) == [
        ("cloudwatch:PutMetricData", "*")]
    assert arns.model("us.anthropic.claude-3-5-haiku-20241022-v1:0").endswith(
        ":111122223333:inference-profile/us.anthropic.claude-3-5-haiku-20241022-v1:0")
