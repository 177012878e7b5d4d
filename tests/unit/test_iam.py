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
    Request,
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
    # the user's conversations: a submit touches its conversation's head, the list reads the index
    ("SubmitFunction", "dynamodb", "UpdateItem", "ConversationsTable", None),
    ("SubmitFunction", "dynamodb", "Query", "ConversationsTable", "by_activity"),
    ("SubmitFunction", "sqs", "SendMessage", "JobsQueue", None),
    # Web Push: the VAPID secret (for the public key); subscriptions are push#<user> items, each
    # endpoint's owner a pushep#<hash> item (PutItem, UpdateItem, DeleteItem, GetItem above)
    ("SubmitFunction", "secretsmanager", "GetSecretValue", "VapidSecret", None),
    # a submit refused after its put (429, 409) deletes the record
    ("SubmitFunction", "dynamodb", "DeleteItem", "JobsTable", None),
    # a long-poll that waits holds a stream slot: take (UpdateItem; PutItem of a user's first
    # item), the read of a refused take (GetItem), the give-back (UpdateItem)
    ("SubmitFunction", "dynamodb", "UpdateItem", "StreamSlotsTable", None),
    ("SubmitFunction", "dynamodb", "PutItem", "StreamSlotsTable", None),
    ("SubmitFunction", "dynamodb", "GetItem", "StreamSlotsTable", None),
    # worker: lease, journal, projection, conversation turn, step effects, agent data
    ("WorkerFunction", "dynamodb", "GetItem", "JobsTable", None),
    ("WorkerFunction", "dynamodb", "UpdateItem", "JobsTable", None),
    ("WorkerFunction", "dynamodb", "PutItem", "EventsTable", None),
    ("WorkerFunction", "dynamodb", "GetItem", "EventsTable", None),
    ("WorkerFunction", "dynamodb", "BatchGetItem", "EventsTable", None),
    ("WorkerFunction", "dynamodb", "PutItem", "ConversationsTable", None),
    ("WorkerFunction", "dynamodb", "Query", "ConversationsTable", None),
    ("WorkerFunction", "dynamodb", "UpdateItem", "ConversationsTable", None),  # the head, at commit
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
    # ... and whose each endpoint is (pushep#<hash> items, strongly consistent), a gone one's
    # owner item deleted
    ("WorkerFunction", "dynamodb", "BatchGetItem", "JobsTable", None),
    ("WorkerFunction", "dynamodb", "DeleteItem", "JobsTable", None),
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
    # ending a job nobody holds (an unanswered question, a cancel nobody acted on, a log that
    # ended while its finalize failed): the log read and appended to, the turn committed, the
    # conversation's place on the list, a failure's message parked
    ("SweeperFunction", "dynamodb", "GetItem", "EventsTable", None),
    ("SweeperFunction", "dynamodb", "BatchGetItem", "EventsTable", None),
    ("SweeperFunction", "dynamodb", "PutItem", "EventsTable", None),
    ("SweeperFunction", "dynamodb", "BatchWriteItem", "ConversationsTable", None),
    ("SweeperFunction", "dynamodb", "UpdateItem", "ConversationsTable", None),
    ("SweeperFunction", "sqs", "SendMessage", "JobsDeadLetterQueue", None),
    # stream: its secret at start, the job, the log (key reads)
    ("StreamFunction", "secretsmanager", "GetSecretValue", "StreamTokenSecret", None),
    ("StreamFunction", "dynamodb", "GetItem", "JobsTable", None),
    ("StreamFunction", "dynamodb", "GetItem", "EventsTable", None),
    ("StreamFunction", "dynamodb", "BatchGetItem", "EventsTable", None),
    # the per-user stream cap: take, renew and give back a slot (as the submit function's long-poll)
    ("StreamFunction", "dynamodb", "UpdateItem", "StreamSlotsTable", None),
    ("StreamFunction", "dynamodb", "PutItem", "StreamSlotsTable", None),
    ("StreamFunction", "dynamodb", "GetItem", "StreamSlotsTable", None),
]

# Least privilege: calls a function must NOT be able to make.
NOT_ALLOWED: list[tuple[str, str, str, str]] = [
    ("StreamFunction", "dynamodb", "PutItem", "EventsTable"),
    # the public stream function writes its slots and nothing else
    ("StreamFunction", "dynamodb", "UpdateItem", "JobsTable"),
    ("StreamFunction", "dynamodb", "DeleteItem", "StreamSlotsTable"),
    ("WorkerFunction", "dynamodb", "UpdateItem", "StreamSlotsTable"),
    ("StreamFunction", "secretsmanager", "GetSecretValue", "CursorSecret"),
    ("WorkerFunction", "secretsmanager", "GetSecretValue", "StreamTokenSecret"),
    ("StreamFunction", "secretsmanager", "GetSecretValue", "VapidSecret"),
    ("SweeperFunction", "secretsmanager", "GetSecretValue", "VapidSecret"),
    ("SweeperFunction", "secretsmanager", "GetSecretValue", "CursorSecret"),
    ("SweeperFunction", "dynamodb", "GetItem", "ConversationsTable"),
    ("SweeperFunction", "dynamodb", "DeleteItem", "EventsTable"),
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


# ---- Bedrock: the model, directly or through a cross-region inference profile ---------------------

# Every runtime call the Bedrock agent can make: the Messages API (InvokeModel...) and Converse,
# each authorised as one of the two invoke actions.
BEDROCK_APIS = ["InvokeModel", "InvokeModelWithResponseStream", "Converse", "ConverseStream"]
# Where a profile may route a call (Bedrock user guide, "Supported Regions and models for inference
# profiles"): a geography's profile to several regions of it; a global one to any commercial region,
# its model named by the region-less ARN ("").
US = ["us-east-1", "us-east-2", "us-west-1", "us-west-2"]
EU = ["eu-central-1", "eu-west-1", "eu-west-3", "eu-north-1", "eu-south-1"]
GLOBAL = ["", "us-east-1", "us-east-2", "us-west-2", "ca-central-1", "sa-east-1", "eu-west-1", "eu-central-1",
          "ap-northeast-1", "ap-southeast-2", "ap-south-1"]
HAIKU = "anthropic.claude-haiku-4-5-20251001-v1:0"


def default_model() -> str:
    return str(RESOLVER.template["Parameters"]["BedrockModelId"]["Default"])


def bedrock_worker(model_id: str, foundation_model_id: str = "", region: str = "us-east-1"
                   ) -> tuple[list[dict[str, Any]], Arns]:
    resolver = nominal_resolver({"AgentKind": "bedrock", "BedrockModelId": model_id,
                                 "BedrockFoundationModelId": foundation_model_id}, region=region)
    return role_statements("WorkerFunction", resolver), arns_for(resolver)


def refused(statements: list[dict[str, Any]], requests: list[Request]) -> list[Request]:
    return [r for r in requests if not allowed(statements, r.action, r.resource, r.context)]


@pytest.mark.parametrize(("model_id", "region", "destinations"), [
    (None, "us-east-1", US),  # the template's default
    (f"us.{HAIKU}", "us-west-2", US),
    (f"global.{HAIKU}", "us-east-1", GLOBAL),
    (f"global.{HAIKU}", "eu-west-1", GLOBAL),
    (f"eu.{HAIKU}", "eu-central-1", EU),
    ("us.amazon.nova-2-lite-v1:0", "us-east-1", US),  # Amazon Nova 2 Lite: Converse
    ("mistral.mistral-large-2407-v1:0", "us-west-2", []),  # a model id, called directly
], ids=["default", "us-profile", "global-profile", "global-profile-from-eu", "eu-profile", "nova-2-lite", "model-id"])
def test_the_worker_may_call_its_model_in_every_region_its_profile_routes_to(
        model_id: str | None, region: str, destinations: list[str]) -> None:
    """Issue 25, defect 1: with BedrockFoundationModelId left empty, the model's ARN was
    foundation-model/<the profile id>, which names no model: every call through a profile was
    AccessDenied (job error model_access_denied)."""
    model_id = model_id or default_model()
    statements, arns = bedrock_worker(model_id, region=region)
    for api in BEDROCK_APIS:
        requests = arns.model_requests(api, model_id, destinations)
        assert len(requests) == 1 + len(destinations)
        assert not refused(statements, requests), f"{api} via {model_id} from {region}"


def test_the_default_model_is_a_profile_of_a_current_claude() -> None:
    assert default_model() == f"us.{HAIKU}"


def test_the_template_and_the_settings_default_to_the_same_model() -> None:
    from alfred_jobs.settings import Settings
    assert Settings.model_fields["bedrock_model_id"].default == default_model()


def test_a_named_foundation_model_narrows_the_grant_to_it() -> None:
    profile = f"us.{HAIKU}"
    statements, arns = bedrock_worker(profile, HAIKU)
    for api in BEDROCK_APIS:
        assert not refused(statements, arns.model_requests(api, profile, US))
    other = arns.model_requests("Converse", profile, US)[1]
    other = Request(other.action, arns.foundation_model("anthropic.claude-opus-4-7", "us-east-2"), other.context)
    assert refused(statements, [other])


@pytest.mark.parametrize("model_id", [f"us.{HAIKU}", f"global.{HAIKU}"])
def test_the_worker_may_call_nothing_but_its_model_and_only_through_its_profile(model_id: str) -> None:
    statements, arns = bedrock_worker(model_id)
    action = "bedrock:InvokeModelWithResponseStream"
    another_profile = arns.profile("us.anthropic.claude-opus-4-7")
    assert refused(statements, [
        # the profile's model called directly (no profile in the request)
        Request(action, arns.foundation_model(HAIKU, "us-east-1")),
        # any model through another profile
        Request(action, another_profile),
        Request(action, arns.foundation_model("anthropic.claude-opus-4-7", "us-east-2"),
                {"bedrock:InferenceProfileArn": another_profile}),
        # another model directly
        Request(action, arns.foundation_model("anthropic.claude-opus-4-7", "us-east-1")),
    ]) == [
        Request(action, arns.foundation_model(HAIKU, "us-east-1")),
        Request(action, another_profile),
        Request(action, arns.foundation_model("anthropic.claude-opus-4-7", "us-east-2"),
                {"bedrock:InferenceProfileArn": another_profile}),
        Request(action, arns.foundation_model("anthropic.claude-opus-4-7", "us-east-1")),
    ]
    # and nothing but the two invoke actions
    assert refused(statements, [Request("bedrock:InvokeAgent", arns.profile(model_id)),
                                Request("bedrock:CreateModelInvocationJob", arns.profile(model_id))])


def test_a_model_id_is_invoked_directly_and_nothing_else() -> None:
    model = "mistral.mistral-large-2407-v1:0"
    statements, arns = bedrock_worker(model)
    converse = {"principal": "WorkerFunction", "service": "bedrock-runtime", "action": "Converse",
                "resource": model}
    assert not denied_calls([converse, {**converse, "action": "ConverseStream"}], statements, arns)
    assert denied_calls([{**converse, "resource": "anthropic.claude-3-opus-20240229-v1:0"}], statements, arns)


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
        RESOLVER.physical.refs["JobsTable"], RESOLVER.physical.refs["AgentDataTable"],
        RESOLVER.physical.refs["ConversationsTable"]}


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


def test_a_condition_must_hold_for_the_request_s_keys() -> None:
    st = [{"Effect": "Allow", "Action": "bedrock:InvokeModel", "Resource": "arn:aws:bedrock:*::foundation-model/*",
           "Condition": {"StringLike": {"bedrock:InferenceProfileArn": "arn:aws:bedrock:*:1:inference-profile/us.m"}}}]
    model = "arn:aws:bedrock:us-east-2::foundation-model/m"
    assert allowed(st, "bedrock:InvokeModel", model, {"bedrock:inferenceprofilearn":
                                                      "arn:aws:bedrock:us-east-1:1:inference-profile/us.m"})
    assert not allowed(st, "bedrock:InvokeModel", model)  # the key absent: false
    assert not allowed(st, "bedrock:InvokeModel", model, {"bedrock:InferenceProfileArn":
                                                          "arn:aws:bedrock:us-east-1:1:inference-profile/us.n"})
    exact = [{**st[0], "Condition": {"StringEquals": {"bedrock:InferenceProfileArn": ["a", "b"]}}}]
    assert allowed(exact, "bedrock:InvokeModel", model, {"bedrock:InferenceProfileArn": "b"})
    assert not allowed(exact, "bedrock:InvokeModel", model, {"bedrock:InferenceProfileArn": "B"})


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
