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
                    "due": [("active_shard", "HASH"), ("due_at", "RANGE")],
                    "gate_check": [("gate_shard", "HASH"), ("check_at", "RANGE")]}
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
        # the layer of the Architecture parameter
        assert props["Layers"] == [{"Fn::If": ["OnArm64", {"Ref": "AlfredLibLayerArm64"}, {"Ref": "AlfredLibLayer"}]}]


def test_cost_levers_are_parameters_with_measured_defaults() -> None:
    params = TEMPLATE["Parameters"]
    # Graviton by default: the functions and the one layer built for it
    assert params["Architecture"]["Default"] == "arm64"
    assert set(params["Architecture"]["AllowedValues"]) == {"arm64", "x86_64"}
    assert TEMPLATE["Globals"]["Function"]["Architectures"] == [{"Ref": "Architecture"}]
    assert TEMPLATE["Globals"]["Function"]["Tracing"] == {"Ref": "Tracing"}
    assert params["Tracing"]["Default"] == "PassThrough"  # X-Ray on demand: 9 % of the bill (docs/cost.md)
    # memory sized from the measured peak RSS (function_rss: worker 78 MB, stream 86 MB + the
    # adapter): at least 2.5x that, and each function reads its parameter
    assert params["WorkerMemorySize"]["Default"] == 256 and params["StreamMemorySize"]["Default"] == 256
    assert RESOURCES["WorkerFunction"]["Properties"]["MemorySize"] == {"Ref": "WorkerMemorySize"}
    assert RESOURCES["StreamFunction"]["Properties"]["MemorySize"] == {"Ref": "StreamMemorySize"}
    groups = [g["Parameters"] for g in TEMPLATE["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]]
    assert ["Architecture", "WorkerMemorySize", "StreamMemorySize", "Tracing", "MetricsProfile"] in groups
    # 128 MB (the lean option, docs/cost.md) is allowed: Lambda's least
    assert params["WorkerMemorySize"]["MinValue"] == params["StreamMemorySize"]["MinValue"] == 128


def test_the_metrics_profile_reaches_every_function_and_keeps_what_the_alarms_read() -> None:
    from alfred_jobs.observability import ALARM_METRICS, ESSENTIAL_METRICS

    param = TEMPLATE["Parameters"]["MetricsProfile"]
    assert param["Default"] == "all" and set(param["AllowedValues"]) == {"all", "essential", "alarms"}
    assert TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]["ALFRED_METRICS_PROFILE"] == {
        "Ref": "MetricsProfile"}
    task_env = {e["Name"]: e["Value"] for r in RESOURCES.values() if r["Type"] == "AWS::ECS::TaskDefinition"
                for c in r["Properties"]["ContainerDefinitions"] for e in c.get("Environment", [])}
    assert task_env["ALFRED_METRICS_PROFILE"] == {"Ref": "MetricsProfile"}
    # the alarms profile is exactly what the alarms on metrics of ours read; essential keeps them too
    ours = {r["Properties"]["MetricName"] for r in RESOURCES.values()
            if r["Type"] == "AWS::CloudWatch::Alarm" and r["Properties"].get("Namespace") == "AlfredJobs"}
    assert ours == ALARM_METRICS and ours <= ESSENTIAL_METRICS


@pytest.mark.parametrize(("layer", "arch", "platform"), [("AlfredLibLayer", "x86_64", "manylinux2014_x86_64"),
                                                          ("AlfredLibLayerArm64", "arm64", "manylinux2014_aarch64")])
def test_each_architecture_has_its_layer_built_for_its_platform(layer: str, arch: str, platform: str) -> None:
    res = RESOURCES[layer]
    assert res["Condition"] == {"x86_64": "OnX86", "arm64": "OnArm64"}[arch]
    assert res["Metadata"]["BuildArchitecture"] == arch
    assert res["Properties"]["CompatibleArchitectures"] == [arch]
    makefile = (ROOT / "infra" / "layer" / "Makefile").read_text(encoding="utf-8")
    target = re.search(rf"^build-{layer}:\n\t(.+)$", makefile, re.M)
    assert target and f"PLATFORM={platform}" in target.group(1)


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


# ---- where the stream runs: StreamHosting (lambda | service) -----------------------------------

SERVICE_TYPES = ("AWS::ECS::", "AWS::ElasticLoadBalancingV2::", "AWS::ApplicationAutoScaling::",
                 "AWS::EC2::", "AWS::IAM::", "AWS::Route53::")


def service_resources() -> dict[str, dict[str, Any]]:
    return {lid: r for lid, r in RESOURCES.items() if r["Type"].startswith(SERVICE_TYPES)}


def service_resolver() -> Any:
    from tests.support.template_env import SERVICE_PARAMETERS, nominal_resolver

    return nominal_resolver(SERVICE_PARAMETERS)


def test_stream_hosting_creates_exactly_one_of_the_function_and_the_service() -> None:
    from tests.support.template_env import SERVICE_PARAMETERS, cloudformation, parameter_values

    param = TEMPLATE["Parameters"]["StreamHosting"]
    assert param["Default"] == "lambda" and param["AllowedValues"] == ["lambda", "service"]
    conditions = TEMPLATE["Conditions"]
    assert conditions["StreamOnLambda"] == {"Fn::Equals": [{"Ref": "StreamHosting"}, "lambda"]}
    assert conditions["StreamOnService"] == {"Fn::Equals": [{"Ref": "StreamHosting"}, "service"]}
    assert RESOURCES["StreamFunction"]["Condition"] == "StreamOnLambda"
    # every resource of the service exists only with StreamHosting=service (the DNS record also
    # needs a hosted zone: its condition includes StreamOnService)
    assert {"StreamCluster", "StreamService", "StreamTaskDefinition", "StreamLoadBalancer", "StreamTargetGroup",
            "StreamHttpsListener", "StreamTaskRole", "StreamTaskExecutionRole",
            "StreamScalableTarget"} <= set(service_resources())
    for lid, r in service_resources().items():
        assert r.get("Condition") in ("StreamOnService", "StreamHasHostedZone"), lid
    assert conditions["StreamOnService"] in conditions["StreamHasHostedZone"]["Fn::And"]
    # what SAM generates for the function (its role, its URL) carries the function's condition
    for params in (parameter_values(), parameter_values(SERVICE_PARAMETERS)):
        generated = cloudformation(params)["Resources"]
        for lid in ("StreamFunction", "StreamFunctionRole", "StreamFunctionUrl"):
            assert generated[lid]["Condition"] == "StreamOnLambda", lid
    # the shared pieces exist either way: the log group, the secret, the tables
    for lid in ("StreamLogGroup", "StreamTokenSecret", "JobsTable", "EventsTable"):
        assert "Condition" not in RESOURCES[lid], lid


def test_the_stream_url_and_the_links_follow_the_hosting() -> None:
    chosen = {"Fn::If": ["StreamOnService", {"Fn::Sub": "https://${StreamDomainName}/"},
                         {"Fn::GetAtt": ["StreamFunctionUrl", "FunctionUrl"]}]}
    assert TEMPLATE["Outputs"]["StreamUrl"]["Value"] == chosen
    # the job API's links.stream point at the same base
    assert functions()["SubmitFunction"]["Environment"]["Variables"]["ALFRED_STREAM_URL"] == chosen
    for name, output in TEMPLATE["Outputs"].items():
        if "StreamLoadBalancer" in json.dumps(output) or "StreamService" in json.dumps(output):
            assert output.get("Condition") == "StreamOnService", name
    resolver = service_resolver()
    assert resolver.resolve(chosen) == "https://stream.alfred.test/"


def test_stream_service_parameters_are_grouped_and_checked_by_a_rule() -> None:
    params = TEMPLATE["Parameters"]
    groups = TEMPLATE["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
    grouped = [p for g in groups for p in g["Parameters"]]
    assert sorted(grouped) == sorted(params), "every parameter in exactly one group"
    service = [p for p in params if p.startswith("Stream") and p != "StreamHosting"]
    assert {"StreamVpcId", "StreamLoadBalancerSubnetIds", "StreamTaskSubnetIds", "StreamCertificateArn",
            "StreamImageUri", "StreamDesiredCount", "StreamMinCount", "StreamMaxCount", "StreamTaskCpu",
            "StreamTaskMemory"} <= set(service)
    # they default to nothing for StreamHosting=lambda, and a rule refuses nothing for service
    rule = TEMPLATE["Rules"]["StreamServiceNeedsItsSettings"]
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "StreamHosting"}, "service"]}
    asserted = json.dumps(rule["Assertions"])
    for name in ("StreamDomainName", "StreamCertificateArn", "StreamImageUri", "StreamVpcId",
                 "StreamLoadBalancerSubnetIds", "StreamTaskSubnetIds"):
        assert params[name]["Default"] == "", name
        assert f'"Ref": "{name}"' in asserted, name
    assert (params["StreamTaskCpu"]["Default"], params["StreamTaskMemory"]["Default"]) == ("256", "512")
    # the test values (tests/support/template_env.py) match the declared patterns
    from tests.support.template_env import SERVICE_PARAMETERS
    for name, value in SERVICE_PARAMETERS.items():
        pattern = params[name].get("AllowedPattern")
        if pattern:
            assert re.fullmatch(pattern, value), (name, value)


def test_stream_task_role_grants_exactly_what_the_stream_function_role_grants() -> None:
    from tests.support.iam import role_statements

    resolver = service_resolver()

    def grants(statements: list[dict[str, Any]]) -> set[tuple[str, str]]:
        return {(a, r) for st in statements for a in st["Action"] for r in st["Resource"]}

    # The function's own policies (SAM's policy templates); its managed policies are the Lambda
    # runtime's (logs, X-Ray), which on ECS the execution role and the log driver cover.
    function_role = resolver.template["Resources"]["StreamFunctionRole"]["Properties"]
    managed = {str(a).rsplit("/", 1)[-1] for a in resolver.resolve(function_role.get("ManagedPolicyArns", []))}
    assert managed <= {"AWSLambdaBasicExecutionRole", "AWSXrayWriteOnlyAccess"}, managed
    function_inline = [{**st, "Action": st["Action"] if isinstance(st["Action"], list) else [st["Action"]],
                        "Resource": st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]}
                       for p in resolver.resolve(function_role["Policies"])
                       for st in p["PolicyDocument"]["Statement"]]
    task = role_statements("StreamTaskRole", resolver)
    assert grants(task) == grants(function_inline)
    assert all(st["Effect"] == "Allow" for st in task)
    assert not RESOURCES["StreamTaskRole"]["Properties"].get("ManagedPolicyArns")
    # both roles are for ECS tasks of this account only
    for lid in ("StreamTaskRole", "StreamTaskExecutionRole"):
        (trust,) = RESOURCES[lid]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        assert trust["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
        assert trust["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}


def test_stream_task_execution_role_pulls_only_its_repository_and_writes_only_its_logs() -> None:
    resolver = service_resolver()
    (policy,) = RESOURCES["StreamTaskExecutionRole"]["Properties"]["Policies"]
    statements = resolver.resolve(policy["PolicyDocument"]["Statement"])
    grants = {(a, r) for st in statements for a in (st["Action"] if isinstance(st["Action"], list) else [st["Action"]])
              for r in (st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]])}
    repo = "arn:aws:ecr:us-east-1:123456789012:repository/alfred/stream"  # from StreamImageUri
    log = "arn:aws:logs:us-east-1:123456789012:log-group:alfred-jobs-StreamLogGroup-ABC123:*:log-stream:*"
    assert grants == {("ecr:GetAuthorizationToken", "*"), ("ecr:BatchGetImage", repo),
                      ("ecr:GetDownloadUrlForLayer", repo), ("ecr:BatchCheckLayerAvailability", repo),
                      ("logs:CreateLogStream", log), ("logs:PutLogEvents", log)}
    # a digest instead of a tag names the same repository
    from tests.support.template_env import SERVICE_PARAMETERS, nominal_resolver
    digest = "123456789012.dkr.ecr.us-east-1.amazonaws.com/alfred/stream@sha256:" + "ab" * 32
    other = nominal_resolver({**SERVICE_PARAMETERS, "StreamImageUri": digest})
    assert repo in json.dumps(other.resolve(policy["PolicyDocument"]["Statement"]))


def test_stream_task_environment_is_the_stream_functions_without_the_adapter() -> None:
    from tests.support.template_env import task_environment, template_environment

    resolver = service_resolver()
    function_env = template_environment("StreamFunction", resolver)
    task_env = task_environment(resolver)
    adapter_only = {k for k in function_env if k.startswith("AWS_LWA_")}
    assert adapter_only == {"AWS_LWA_INVOKE_MODE", "AWS_LWA_PORT", "AWS_LWA_READINESS_CHECK_PATH"}
    # what the Lambda platform gave the function, given here by the task definition
    platform = {"AWS_DEFAULT_REGION", "ALFRED_CORS_ORIGINS"}
    assert {k: v for k, v in task_env.items() if k not in platform} == {
        k: v for k, v in function_env.items() if k not in adapter_only}
    assert task_env["AWS_DEFAULT_REGION"] == "us-east-1"
    # the app answers CORS for the same origins the Function URL did (a JSON list, as settings read it)
    settings = Settings(_env_file=None, **{"cors_origins": json.loads(task_env["ALFRED_CORS_ORIGINS"])})
    assert settings.cors_origins == resolver.resolve({"Ref": "CorsAllowedOrigins"}) == ["https://alfred.test"]
    two = service_resolver_with(CorsAllowedOrigins="https://a.example,https://b.example")
    assert json.loads(task_environment(two)["ALFRED_CORS_ORIGINS"]) == ["https://a.example", "https://b.example"]


def service_resolver_with(**overrides: Any) -> Any:
    from tests.support.template_env import SERVICE_PARAMETERS, nominal_resolver

    return nominal_resolver({**SERVICE_PARAMETERS, **overrides})


def load_balancer_attributes() -> dict[str, str]:
    attrs = RESOURCES["StreamLoadBalancer"]["Properties"]["LoadBalancerAttributes"]
    return {a["Key"]: a["Value"] for a in attrs}


def test_load_balancer_idle_timeout_outlasts_the_heartbeat_and_the_long_poll() -> None:
    from tests.support.template_env import image_config

    idle = int(load_balancer_attributes()["idle_timeout.timeout_seconds"])
    settings = Settings(_env_file=None)
    # a quiet stream writes a keepalive comment every stream_heartbeat_seconds; a long-poll writes
    # nothing for up to max_wait_seconds: the load balancer must not cut either
    assert idle > 2 * settings.stream_heartbeat_seconds
    assert idle > settings.max_wait_seconds
    # and uvicorn keeps an idle pooled connection longer than the load balancer does (no 502s)
    _, cmd, _ = image_config()
    keep_alive = re.search(r"--timeout-keep-alive (\d+)", " ".join(cmd))
    assert keep_alive and int(keep_alive.group(1)) > idle


def test_load_balancer_is_https_only_and_checks_the_stream_health() -> None:
    assert load_balancer_attributes()["routing.http.drop_invalid_header_fields.enabled"] == "true"
    lb = RESOURCES["StreamLoadBalancer"]["Properties"]
    assert lb["Scheme"] == "internet-facing"
    listeners = {lid: r["Properties"] for lid, r in RESOURCES.items()
                 if r["Type"] == "AWS::ElasticLoadBalancingV2::Listener"}
    https = [p for p in listeners.values() if p["Protocol"] == "HTTPS"]
    assert len(https) == 1 and https[0]["Port"] == 443
    assert re.match(r"ELBSecurityPolicy-TLS13-1-2-", https[0]["SslPolicy"])
    assert https[0]["Certificates"] == [{"CertificateArn": {"Ref": "StreamCertificateArn"}}]
    for p in listeners.values():
        if p["Protocol"] != "HTTPS":  # plain HTTP only redirects
            assert [a["Type"] for a in p["DefaultActions"]] == ["redirect"]
            assert p["DefaultActions"][0]["RedirectConfig"]["Protocol"] == "HTTPS"
    tg = RESOURCES["StreamTargetGroup"]["Properties"]
    assert tg["TargetType"] == "ip" and tg["Port"] == 8080 and tg["HealthCheckPath"] == "/healthz"
    tg_attrs = {a["Key"]: a["Value"] for a in tg["TargetGroupAttributes"]}
    # short enough for deploys; the streams cut after it reconnect with Last-Event-ID
    assert 0 < int(tg_attrs["deregistration_delay.timeout_seconds"]) <= 60


def test_stream_tasks_are_reachable_only_from_the_load_balancer() -> None:
    lb_sg = RESOURCES["StreamLoadBalancerSecurityGroup"]["Properties"]
    assert {(r["FromPort"], r["CidrIp"]) for r in lb_sg["SecurityGroupIngress"]} == {
        (443, "0.0.0.0/0"), (80, "0.0.0.0/0")}
    task_sg = RESOURCES["StreamTaskSecurityGroup"]["Properties"]
    (ingress,) = task_sg["SecurityGroupIngress"]
    assert ingress["SourceSecurityGroupId"] == {"Ref": "StreamLoadBalancerSecurityGroup"}
    assert (ingress["FromPort"], ingress["ToPort"]) == (8080, 8080) and "CidrIp" not in ingress
    service = RESOURCES["StreamService"]["Properties"]
    (target,) = service["LoadBalancers"]
    assert (target["ContainerPort"], target["TargetGroupArn"]) == (8080, {"Ref": "StreamTargetGroup"})
    network = service["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network["SecurityGroups"] == [{"Ref": "StreamTaskSecurityGroup"}]
    assert network["Subnets"] == {"Ref": "StreamTaskSubnetIds"}
    assert TEMPLATE["Parameters"]["StreamTaskPublicIp"]["Default"] == "DISABLED"
    assert service["DeploymentConfiguration"]["DeploymentCircuitBreaker"] == {"Enable": True, "Rollback": True}


def test_stream_task_runs_the_image_with_the_shared_log_group_and_insights() -> None:
    task = RESOURCES["StreamTaskDefinition"]["Properties"]
    assert task["RequiresCompatibilities"] == ["FARGATE"] and task["NetworkMode"] == "awsvpc"
    (container,) = task["ContainerDefinitions"]
    assert container["Image"] == {"Ref": "StreamImageUri"} and "Command" not in container  # the image's CMD
    assert container["PortMappings"] == [{"ContainerPort": 8080, "Protocol": "tcp"}]
    assert container["ReadonlyRootFilesystem"] is True and container["User"] != "0"
    logs = container["LogConfiguration"]
    assert logs["LogDriver"] == "awslogs" and logs["Options"]["awslogs-group"] == {"Ref": "StreamLogGroup"}
    assert RESOURCES["StreamLogGroup"]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert task["TaskRoleArn"] == {"Fn::GetAtt": ["StreamTaskRole", "Arn"]}
    assert task["ExecutionRoleArn"] == {"Fn::GetAtt": ["StreamTaskExecutionRole", "Arn"]}
    cluster = RESOURCES["StreamCluster"]["Properties"]
    assert {"Name": "containerInsights", "Value": "enabled"} in cluster["ClusterSettings"]


def test_stream_service_scales_on_connections_per_task() -> None:
    target = RESOURCES["StreamScalableTarget"]["Properties"]
    assert target["ScalableDimension"] == "ecs:service:DesiredCount"
    assert (target["MinCapacity"], target["MaxCapacity"]) == ({"Ref": "StreamMinCount"}, {"Ref": "StreamMaxCount"})
    policy = RESOURCES["StreamConnectionsScalingPolicy"]["Properties"]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    config = policy["TargetTrackingScalingPolicyConfiguration"]
    assert config["TargetValue"] == {"Ref": "StreamConnectionsPerTask"}
    metrics = {m["Id"]: m for m in config["CustomizedMetricSpecification"]["Metrics"]}
    assert [m["Id"] for m in metrics.values() if m["ReturnData"]] == ["connections_per_task"]
    assert metrics["connections_per_task"]["Expression"] == "connections / tasks"
    assert metrics["connections"]["MetricStat"]["Metric"]["MetricName"] == "ActiveConnectionCount"
    assert metrics["tasks"]["MetricStat"]["Metric"]["MetricName"] == "RunningTaskCount"


# ---- SnapStart on the submit function -----------------------------------------------------------


def test_submit_snapstart_is_a_parameter_and_the_api_invokes_the_published_alias() -> None:
    from tests.support.template_env import SERVICE_PARAMETERS, cloudformation, parameter_values

    param = TEMPLATE["Parameters"]["SubmitSnapStart"]
    assert param["Default"] == "Disabled" and set(param["AllowedValues"]) == {"Enabled", "Disabled"}
    submit = functions()["SubmitFunction"]
    assert submit["SnapStart"] == {"ApplyOn": {"Fn::If": ["SubmitSnapStartOn", "PublishedVersions", "None"]}}
    assert submit["AutoPublishAlias"] == "live"
    for overrides in ({"SubmitSnapStart": "Enabled"}, {"SubmitSnapStart": "Disabled"},
                      {**SERVICE_PARAMETERS, "SubmitSnapStart": "Enabled"}):
        generated = cloudformation(parameter_values(overrides))["Resources"]
        assert "SubmitFunctionAliaslive" in generated
        # API Gateway may invoke the alias, and every route's integration targets it
        for lid in ("SubmitFunctionApiPermission", "SubmitFunctionHealthPermission"):
            assert generated[lid]["Properties"]["FunctionName"] == {"Ref": "SubmitFunctionAliaslive"}, lid
        body = json.dumps(generated["HttpApi"]["Properties"]["Body"])
        assert "SubmitFunctionAliaslive" in body and '"SubmitFunction.Arn"' not in body
