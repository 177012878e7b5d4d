"""template.yaml is the one source of truth: the local bootstrap builds exactly what it declares,
every function it names imports and answers events of its trigger's shape, and the stack keeps
the promises of issue 5 (least privilege, no literal secrets, CORS not `*`, retries bounded).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from moto import mock_aws

from alfred_jobs.settings import Settings
from alfred_tools.bootstrap import (
    QUEUES,
    TABLES,
    create_resources,
    load_template,
    queue_attributes,
    table_specs,
)

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "tests" / "events"
TEMPLATE = load_template(ROOT / "template.yaml")
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]

# Table / queue properties that shape the resource. The bootstrap must honour every one the
# template uses; anything else in the template must be one of the "no shape" properties below
# (encryption, backups, names, tags), which an emulator can ignore without behaving differently.
TABLE_SHAPE = {"AttributeDefinitions", "KeySchema", "BillingMode", "GlobalSecondaryIndexes",
               "TimeToLiveSpecification"}
TABLE_NO_SHAPE = {"PointInTimeRecoverySpecification", "SSESpecification", "TableName", "Tags",
                  "DeletionProtectionEnabled", "ContributorInsightsSpecification"}
QUEUE_SHAPE = {"VisibilityTimeout", "MessageRetentionPeriod", "DelaySeconds",
               "ReceiveMessageWaitTimeSeconds", "MaximumMessageSize", "RedrivePolicy"}
QUEUE_NO_SHAPE = {"SqsManagedSseEnabled", "KmsMasterKeyId", "KmsDataKeyReusePeriodSeconds", "QueueName",
                  "Tags"}


def event(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / name).read_text(encoding="utf-8"))
    return data


def functions(package_type: str = "Zip") -> dict[str, dict[str, Any]]:
    return {lid: r["Properties"] for lid, r in RESOURCES.items()
            if r["Type"] == "AWS::Serverless::Function"
            and r["Properties"].get("PackageType", "Zip") == package_type}


def load_handler(logical_id: str) -> Any:
    """Import a function's handler the way Lambda does: <CodeUri>/<module>.py, attribute <name>."""
    props = functions()[logical_id]
    module_name, attr = props["Handler"].rsplit(".", 1)
    path = ROOT / props["CodeUri"] / f"{module_name.replace('.', '/')}.py"
    assert path.is_file(), f"{logical_id}: {path.relative_to(ROOT)} does not exist"
    unique = f"_lambda_{logical_id}_{module_name}"
    spec = importlib.util.spec_from_file_location(unique, path)
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[unique] = module
    spec.loader.exec_module(module)
    return getattr(module, attr)


class LambdaContext:
    """The attributes of the Lambda context object that handlers and Powertools read."""

    function_name = "alfred-jobs-test"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:alfred-jobs-test"
    memory_limit_in_mb = 512
    aws_request_id = "6f1c0b9e-0000-4000-8000-000000000000"
    log_group_name = "/aws/lambda/alfred-jobs-test"
    log_stream_name = "2024/03/12/[$LATEST]0123456789abcdef"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 30_000


# ---- (a) the bootstrap builds what the template declares -----------------------------------------


@pytest.mark.parametrize("logical_id", list(TABLES))
def test_table_properties_are_all_understood_by_the_bootstrap(logical_id: str) -> None:
    props = set(RESOURCES[logical_id]["Properties"])
    unknown = props - TABLE_SHAPE - TABLE_NO_SHAPE
    assert not unknown, f"{logical_id}: the local bootstrap ignores {unknown}; teach it or drop them"
    for gsi in RESOURCES[logical_id]["Properties"].get("GlobalSecondaryIndexes", []):
        assert set(gsi) <= {"IndexName", "KeySchema", "Projection"}, gsi


@pytest.mark.parametrize("logical_id", list(QUEUES))
def test_queue_properties_are_all_understood_by_the_bootstrap(logical_id: str) -> None:
    unknown = set(RESOURCES[logical_id].get("Properties", {})) - QUEUE_SHAPE - QUEUE_NO_SHAPE
    assert not unknown, f"{logical_id}: the local bootstrap ignores {unknown}; teach it or drop them"


def test_table_specs_are_the_template_tables() -> None:
    settings = Settings()
    specs = {s.name: s for s in table_specs(settings, TEMPLATE)}
    for logical_id, field in TABLES.items():
        props = RESOURCES[logical_id]["Properties"]
        spec = specs[getattr(settings, field)]
        assert spec.create_args["KeySchema"] == props["KeySchema"]
        assert spec.create_args["AttributeDefinitions"] == props["AttributeDefinitions"]
        assert spec.create_args["BillingMode"] == props["BillingMode"]
        assert spec.create_args.get("GlobalSecondaryIndexes", []) == props.get("GlobalSecondaryIndexes", [])
        assert spec.ttl_attribute == props["TimeToLiveSpecification"]["AttributeName"] == "expires_at"


def test_data_model_is_the_documented_one() -> None:
    """The key layout the adapters rely on (a change here is a migration, not an edit)."""
    def keys(props: dict[str, Any]) -> list[tuple[str, str]]:
        return [(k["AttributeName"], k["KeyType"]) for k in props["KeySchema"]]

    jobs = RESOURCES["JobsTable"]["Properties"]
    assert keys(jobs) == [("job_id", "HASH")]
    gsis = {g["IndexName"]: keys(g) for g in jobs["GlobalSecondaryIndexes"]}
    assert gsis == {"by_user": [("user_id", "HASH"), ("created_sk", "RANGE")],
                    "due": [("active_shard", "HASH"), ("due_at", "RANGE")]}
    assert keys(RESOURCES["EventsTable"]["Properties"]) == [("job_id", "HASH"), ("seq", "RANGE")]
    assert keys(RESOURCES["ConversationsTable"]["Properties"]) == [("conversation_key", "HASH"), ("sk", "RANGE")]
    assert keys(RESOURCES["AgentDataTable"]["Properties"]) == [("pk", "HASH"), ("sk", "RANGE")]
    for logical_id in TABLES:
        props = RESOURCES[logical_id]["Properties"]
        assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
        assert props["SSESpecification"]["SSEEnabled"] is True


def test_queue_attributes_are_the_template_queues() -> None:
    arns = {"JobsDeadLetterQueue": "arn:aws:sqs:us-east-1:000000000000:dlq"}
    dlq = queue_attributes("JobsDeadLetterQueue", TEMPLATE, {})
    main = queue_attributes("JobsQueue", TEMPLATE, arns)
    props = RESOURCES["JobsQueue"]["Properties"]
    assert main["VisibilityTimeout"] == str(props["VisibilityTimeout"])
    assert main["MessageRetentionPeriod"] == str(props["MessageRetentionPeriod"])
    assert json.loads(main["RedrivePolicy"]) == {
        "deadLetterTargetArn": arns["JobsDeadLetterQueue"],
        "maxReceiveCount": props["RedrivePolicy"]["maxReceiveCount"]}
    assert props["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["JobsDeadLetterQueue", "Arn"]}
    assert dlq == {"MessageRetentionPeriod": str(RESOURCES["JobsDeadLetterQueue"]["Properties"][
        "MessageRetentionPeriod"])}


def test_bootstrap_on_an_emulator_creates_exactly_the_template(monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN an empty (in-process) emulator WHEN the bootstrap runs THEN describe == template."""
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_SQS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    settings = Settings(queue_url=None, dlq_url=None)
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        sqs = boto3.client("sqs", region_name="us-east-1")
        urls = create_resources(settings, ddb, sqs, ROOT / "template.yaml")

        for logical_id, field in TABLES.items():
            props = RESOURCES[logical_id]["Properties"]
            table = ddb.describe_table(TableName=getattr(settings, field))["Table"]
            assert table["KeySchema"] == props["KeySchema"]
            assert sorted(table["AttributeDefinitions"], key=str) == sorted(props["AttributeDefinitions"], key=str)
            assert table["BillingModeSummary"]["BillingMode"] == props["BillingMode"]
            got = {g["IndexName"]: (g["KeySchema"], g["Projection"]) for g in table.get("GlobalSecondaryIndexes", [])}
            want = {g["IndexName"]: (g["KeySchema"], g["Projection"]) for g in props.get("GlobalSecondaryIndexes", [])}
            assert got == want
            ttl = ddb.describe_time_to_live(TableName=getattr(settings, field))["TimeToLiveDescription"]
            assert ttl["TimeToLiveStatus"] == "ENABLED"
            assert ttl["AttributeName"] == props["TimeToLiveSpecification"]["AttributeName"]

        dlq_arn = sqs.get_queue_attributes(QueueUrl=urls["JobsDeadLetterQueue"],
                                           AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        for logical_id in QUEUES:
            props = RESOURCES[logical_id]["Properties"]
            attrs = sqs.get_queue_attributes(QueueUrl=urls[logical_id], AttributeNames=["All"])["Attributes"]
            for key in QUEUE_SHAPE & set(props) - {"RedrivePolicy"}:
                assert attrs[key] == str(props[key]), (logical_id, key)
            if "RedrivePolicy" in props:
                assert json.loads(attrs["RedrivePolicy"]) == {
                    "deadLetterTargetArn": dlq_arn, "maxReceiveCount": props["RedrivePolicy"]["maxReceiveCount"]}


# ---- (b) every handler named in the template imports and takes its trigger's event ------------


def test_sample_events_have_their_trigger_shape() -> None:
    from aws_lambda_powertools.utilities.data_classes import (
        APIGatewayProxyEventV2,
        EventBridgeEvent,
        SQSEvent,
    )

    http = APIGatewayProxyEventV2(event("apigw_http_v2_healthz.json"))
    assert http.version == "2.0" and http.request_context.http.method == "GET" and http.raw_path == "/healthz"
    sqs = list(SQSEvent(event("sqs_batch.json")).records)
    assert sqs and all(json.loads(r.body)["job_id"] for r in sqs)
    assert all(r.event_source == "aws:sqs" for r in sqs)
    tick = EventBridgeEvent(event("scheduled_event.json"))
    assert tick.detail_type == "Scheduled Event" and tick.source == "aws.events"


def test_every_zip_function_is_python312_with_a_makefile_target() -> None:
    assert set(functions()) == {"SubmitFunction", "WorkerFunction", "SweeperFunction"}
    for logical_id, props in functions().items():
        assert props["Runtime"] == "python3.12", logical_id
        assert RESOURCES[logical_id]["Metadata"]["BuildMethod"] == "makefile"
        makefile = (ROOT / props["CodeUri"] / "Makefile").read_text(encoding="utf-8")
        assert re.search(rf"^build-{logical_id}:", makefile, re.M), f"{logical_id}: no make target"
        assert props["Layers"] == [{"Ref": "AlfredLibLayer"}]


@pytest.mark.parametrize("logical_id", ["SubmitFunction", "WorkerFunction", "SweeperFunction"])
def test_handler_imports_and_is_callable(logical_id: str) -> None:
    assert callable(load_handler(logical_id))


def test_submit_handler_answers_healthz_through_api_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real Lambda entry point (Mangum over FastAPI) with an HTTP API v2 event; no AWS call."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("ALFRED_DEPLOYMENT", "local")  # the public development secrets, accepted only so
    handler = load_handler("SubmitFunction")
    response = handler(event("apigw_http_v2_healthz.json"), LambdaContext())
    assert response["statusCode"] == 200, response
    assert json.loads(response["body"]) == {"ok": True}


def test_stream_function_is_an_image_with_a_streaming_url() -> None:
    stream = RESOURCES["StreamFunction"]
    assert stream["Properties"]["PackageType"] == "Image"
    assert stream["Metadata"]["Dockerfile"] == "functions/stream/Dockerfile"
    assert stream["Metadata"]["DockerContext"] == "."
    url = stream["Properties"]["FunctionUrlConfig"]
    assert url["AuthType"] == "NONE" and url["InvokeMode"] == "RESPONSE_STREAM"


# ---- the stack's promises ------------------------------------------------------------------


def test_worker_event_source_reports_partial_failures_and_scales_by_parameters() -> None:
    worker = functions()["WorkerFunction"]
    sqs = worker["Events"]["Jobs"]
    assert sqs["Type"] == "SQS"
    assert sqs["Properties"]["Queue"] == {"Fn::GetAtt": ["JobsQueue", "Arn"]}
    assert sqs["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert sqs["Properties"]["BatchSize"] == {"Ref": "WorkerBatchSize"}
    assert sqs["Properties"]["ScalingConfig"]["MaximumConcurrency"] == {"Ref": "WorkerMaxConcurrency"}
    # AWS: a queue feeding a function should have a visibility timeout >= 6x the function's timeout.
    assert RESOURCES["JobsQueue"]["Properties"]["VisibilityTimeout"] >= 6 * worker["Timeout"]


def test_api_verifies_jwts_from_parameters_and_cors_is_never_a_wildcard() -> None:
    params = TEMPLATE["Parameters"]
    for name in ("RetentionSeconds", "JwtIssuer", "JwtAudience", "CorsAllowedOrigins", "WorkerBatchSize",
                 "WorkerMaxConcurrency", "LeaseSeconds", "MaxAttempts", "SweepSchedule"):
        assert name in params, name
    assert params["CorsAllowedOrigins"]["Type"] == "CommaDelimitedList"
    assert "*" not in str(params["CorsAllowedOrigins"].get("Default", ""))
    api = RESOURCES["HttpApi"]["Properties"]
    jwt = api["Auth"]["Authorizers"][api["Auth"]["DefaultAuthorizer"]]["JwtConfiguration"]
    assert jwt == {"issuer": {"Ref": "JwtIssuer"}, "audience": {"Ref": "JwtAudience"}}
    assert api["CorsConfiguration"]["AllowOrigins"] == {"Ref": "CorsAllowedOrigins"}
    stream_cors = RESOURCES["StreamFunction"]["Properties"]["FunctionUrlConfig"]["Cors"]
    assert stream_cors["AllowOrigins"] == {"Ref": "CorsAllowedOrigins"}
    # Only /healthz is public.
    for fn in functions().values():
        for ev in fn.get("Events", {}).values():
            if ev["Type"] == "HttpApi" and ev["Properties"].get("Auth", {}).get("Authorizer") == "NONE":
                assert ev["Properties"]["Path"] == "/healthz"


def test_secrets_are_generated_and_passed_by_arn_only() -> None:
    secrets = {lid for lid, r in RESOURCES.items() if r["Type"] == "AWS::SecretsManager::Secret"}
    assert secrets == {"StreamTokenSecret", "CursorSecret", "VapidSecret"}
    for lid in secrets:
        props = RESOURCES[lid]["Properties"]
        assert "SecretString" not in props and "GenerateSecretString" in props
    everything_env: list[tuple[str, str, Any]] = []
    glob = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    everything_env += [("Globals", k, v) for k, v in glob.items()]
    for lid, props in {**functions(), **functions("Image")}.items():
        for k, v in props.get("Environment", {}).get("Variables", {}).items():
            everything_env.append((lid, k, v))
    for where, key, value in everything_env:
        if re.search(r"SECRET|TOKEN|PASSWORD|KEY", key) and not key.startswith(("POWERTOOLS_", "AWS_LWA_")):
            assert key.endswith("_ARN") and isinstance(value, dict), f"{where}: {key} must be an ARN reference"


def policies(logical_id: str) -> list[Any]:
    return list(RESOURCES[logical_id]["Properties"].get("Policies", []))


def policy_tables(logical_id: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for p in policies(logical_id):
        if isinstance(p, dict):
            for name in ("DynamoDBCrudPolicy", "DynamoDBReadPolicy"):
                if name in p:
                    out.setdefault(name, set()).add(p[name]["TableName"]["Ref"])
    return out


def test_each_function_gets_only_the_tables_it_needs() -> None:
    assert policy_tables("SubmitFunction") == {"DynamoDBCrudPolicy": {"JobsTable", "EventsTable"},
                                               "DynamoDBReadPolicy": {"ConversationsTable"}}
    assert policy_tables("WorkerFunction") == {
        "DynamoDBCrudPolicy": {"JobsTable", "EventsTable", "ConversationsTable", "AgentDataTable"}}
    assert policy_tables("SweeperFunction") == {"DynamoDBCrudPolicy": {"JobsTable"}}
    assert policy_tables("StreamFunction") == {"DynamoDBReadPolicy": {"JobsTable", "EventsTable"}}
    # Secrets: only the functions that sign or verify, each secret by its own ARN.
    def secret_arns(lid: str) -> set[str]:
        return {p["AWSSecretsManagerGetSecretValuePolicy"]["SecretArn"]["Ref"]
                for p in policies(lid) if isinstance(p, dict) and "AWSSecretsManagerGetSecretValuePolicy" in p}
    assert secret_arns("SubmitFunction") == {"StreamTokenSecret", "CursorSecret", "VapidSecret"}
    assert secret_arns("StreamFunction") == {"StreamTokenSecret"}
    assert secret_arns("WorkerFunction") == {"VapidSecret"}  # Web Push: signs with the VAPID key
    assert secret_arns("SweeperFunction") == set()
    # No managed "full access" policies, no inline statement on every resource.
    for lid in [*functions(), "StreamFunction"]:
        for p in policies(lid):
            assert not isinstance(p, str), f"{lid}: managed policy {p}"
            assert '"Resource": "*"' not in json.dumps(p), f"{lid}: {p}"


def test_alarms_watch_the_dlq_stuck_jobs_and_worker_errors() -> None:
    alarms = {lid: r["Properties"] for lid, r in RESOURCES.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    by_metric = {(a["Namespace"], a["MetricName"]): a for a in alarms.values()}
    dlq = by_metric[("AWS/SQS", "ApproximateNumberOfMessagesVisible")]
    assert dlq["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["JobsDeadLetterQueue", "QueueName"]}
    assert dlq["Threshold"] == 0 and dlq["ComparisonOperator"] == "GreaterThanThreshold"
    stuck = by_metric[("AlfredJobs", "StuckJobs")]
    assert stuck["Dimensions"] == [{"Name": "service", "Value": "alfred-jobs"}]  # Powertools' default
    errors = by_metric[("AWS/Lambda", "Errors")]
    assert errors["Dimensions"][0]["Value"] == {"Ref": "WorkerFunction"}
    for a in alarms.values():
        assert a["AlarmActions"] == [{"Ref": "AlarmTopic"}]
        assert "docs/runbook.md#" in a["AlarmDescription"]


def test_runbook_has_a_section_for_every_alarm() -> None:
    runbook = (ROOT / "docs" / "runbook.md").read_text(encoding="utf-8")
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", runbook, re.M)}
    for lid, r in RESOURCES.items():
        if r["Type"] == "AWS::CloudWatch::Alarm":
            anchor = r["Properties"]["AlarmDescription"].split("docs/runbook.md#", 1)[1].rstrip(".")
            assert anchor in anchors, f"{lid}: docs/runbook.md has no section #{anchor}"


def test_outputs_give_the_urls_clients_need() -> None:
    outputs = TEMPLATE["Outputs"]
    assert {"ApiUrl", "StreamUrl", "JobsTableName", "EventsTableName", "JobsQueueUrl",
            "JobsDeadLetterQueueUrl"} <= set(outputs)
