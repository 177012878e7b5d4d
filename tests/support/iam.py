"""The IAM check: each function's role as SAM builds it from template.yaml, and calls tested against it.

The role is the one aws-sam-translator generates (``template_env.cloudformation()``): the SAM
policy templates (DynamoDBCrudPolicy, DynamoDBReadPolicy, SQSSendMessagePolicy,
AWSSecretsManagerGetSecretValuePolicy...) expanded into inline statements, conditions and
intrinsics resolved against a deployment, plus the managed policies SAM attaches itself
(AWSLambdaBasicExecutionRole always, the X-Ray write policy for ``Tracing: Active``,
AWSLambdaSQSQueueExecutionRole for an SQS event). The translator only names managed policies, so
their documents are copied below; a managed policy without a document here fails loudly.

    statements = role_statements("WorkerFunction", resolver)
    allowed(statements, "sqs:ChangeMessageVisibility", arns.queue(queue_url))   # -> bool
    denied_calls(recorded_calls, statements, arns)                              # -> what IAM refuses

Only ``Allow`` statements with ``Action`` and ``Resource`` are evaluated, with an optional
``Condition`` of the string and ARN operators (``StringEquals``, ``StringLike``, ``ArnEquals``,
``ArnLike``) tested against the request context a call carries (``allowed(..., context={...})``):
the Bedrock statement ties the foundation model to the inference profile with
``bedrock:InferenceProfileArn``. The template's roles use no ``Deny``, ``NotAction``,
``NotResource`` or other operator, and a statement with any of them raises instead of being
half-understood.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import urlparse

from tests.support.template_env import Resolver, Unresolvable

Statement = dict[str, Any]

# AWS managed policies, by name (the last part of the ARN, whatever the partition), copied from
# the AWS Managed Policy Reference:
#   https://docs.aws.amazon.com/aws-managed-policy/latest/reference/AWSLambdaBasicExecutionRole.html (v1)
#   https://docs.aws.amazon.com/aws-managed-policy/latest/reference/AWSXrayWriteOnlyAccess.html (v2)
#   https://docs.aws.amazon.com/aws-managed-policy/latest/reference/AWSXRayDaemonWriteAccess.html (v2)
#   https://docs.aws.amazon.com/aws-managed-policy/latest/reference/AWSLambdaSQSQueueExecutionRole.html
# SAM attaches AWSXrayWriteOnlyAccess for Tracing: Active in the aws partition and
# AWSXRayDaemonWriteAccess in the others (samtranslator/model/xray_utils.py); same statements.
_XRAY_WRITE = [{"Effect": "Allow",
                "Action": ["xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules",
                           "xray:GetSamplingTargets", "xray:GetSamplingStatisticSummaries"],
                "Resource": ["*"]}]
MANAGED_POLICIES: dict[str, list[Statement]] = {
    "AWSLambdaBasicExecutionRole": [
        {"Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
         "Resource": "*"}],
    "AWSXrayWriteOnlyAccess": _XRAY_WRITE,
    "AWSXRayDaemonWriteAccess": [{"Sid": "AWSXRayDaemonWriteAccess", **_XRAY_WRITE[0]}],
    "AWSLambdaSQSQueueExecutionRole": [
        {"Effect": "Allow",
         "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "logs:CreateLogGroup",
                    "logs:CreateLogStream", "logs:PutLogEvents"],
         "Resource": "*"}],
}

_UNDERSTOOD_KEYS = {"Sid", "Effect", "Action", "Resource", "Condition"}
# Condition operators evaluated (IAM: "Condition operators"). A key the request does not carry
# makes each of them false (no ...IfExists); several values of one key: any of them; several keys
# or operators: all of them. ArnLike is evaluated as StringLike on the whole ARN, which for the
# ARNs compared here (no wildcard spanning a ":" the pattern does not have) is the same answer.
_CONDITION_OPERATORS = {"StringEquals": False, "StringLike": True, "ArnEquals": False, "ArnLike": True}
# SQS authorizes its batch APIs with the single-message action (SQS developer guide, "Amazon SQS
# API permissions: Actions and resource reference").
_SQS_BATCH = {"SendMessageBatch": "SendMessage", "DeleteMessageBatch": "DeleteMessage",
              "ChangeMessageVisibilityBatch": "ChangeMessageVisibility"}

# Bedrock Runtime's Converse APIs are authorized as the invoke actions (Bedrock user guide, "Use
# the Converse API"); cross-region inference profile ids start with a geography.
_BEDROCK = {"Converse": "InvokeModel", "ConverseStream": "InvokeModelWithResponseStream"}
_PROFILE_PREFIXES = {"us", "eu", "apac", "us-gov", "global", "jp", "au", "ca"}


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _statements(document: Mapping[str, Any]) -> list[Statement]:
    out = []
    for st in _as_list(document["Statement"]):
        unknown = set(st) - _UNDERSTOOD_KEYS
        if unknown:
            raise ValueError(f"statement uses {sorted(unknown)}, which this check does not evaluate: {st}")
        if st.get("Effect") != "Allow":
            raise ValueError(f"only Allow statements are evaluated (the template uses no Deny): {st}")
        _check_condition(st)
        out.append({**st, "Action": _as_list(st["Action"]), "Resource": _as_list(st["Resource"])})
    return out


def role_logical_id(function_id: str, template: Mapping[str, Any]) -> str:
    """The logical id of the role SAM made for a function (its Role is !GetAtt <Role>.Arn), or
    ``function_id`` itself when it names a role (an ECS task role: StreamTaskRole)."""
    if template["Resources"][function_id]["Type"] == "AWS::IAM::Role":
        return function_id
    role = template["Resources"][function_id]["Properties"]["Role"]
    if not (isinstance(role, dict) and "Fn::GetAtt" in role):
        raise ValueError(f"{function_id}: Role {role!r} is not a role of this template")
    return str(role["Fn::GetAtt"][0])


def managed_policy_arns(function_id: str, resolver: Resolver) -> list[str]:
    role = resolver.template["Resources"][role_logical_id(function_id, resolver.template)]["Properties"]
    return [str(a) for a in resolver.resolve(role.get("ManagedPolicyArns", []))]


def role_statements(function_id: str, resolver: Resolver) -> list[Statement]:
    """Every statement of a function's role: inline (SAM policy templates, resolved) + managed."""
    role = resolver.template["Resources"][role_logical_id(function_id, resolver.template)]["Properties"]
    statements: list[Statement] = []
    for policy in resolver.resolve(role.get("Policies", [])):
        statements += _statements(policy["PolicyDocument"])
    for arn in managed_policy_arns(function_id, resolver):
        name = arn.rsplit("/", 1)[-1]
        if name not in MANAGED_POLICIES:
            raise Unresolvable(f"{function_id}: SAM attaches {arn}; add its document to MANAGED_POLICIES")
        statements += _statements({"Statement": MANAGED_POLICIES[name]})
    return statements


# ---- evaluation -----------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def _pattern(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(f"^{body}$", re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def _check_condition(st: Statement) -> None:
    unknown = set(st.get("Condition") or {}) - set(_CONDITION_OPERATORS)
    if unknown:
        raise ValueError(f"condition operators {sorted(unknown)} are not evaluated by this check: {st}")


def condition_holds(condition: Mapping[str, Any] | None, context: Mapping[str, str]) -> bool:
    """Whether a statement's ``Condition`` holds for a request carrying ``context`` (key -> value;
    keys are case-insensitive, values are not)."""
    ctx = {k.lower(): v for k, v in context.items()}
    for operator, tests in (condition or {}).items():
        wildcard = _CONDITION_OPERATORS[operator]
        for key, wanted in tests.items():
            value = ctx.get(key.lower())
            if value is None:
                return False
            if not any(matches(str(w), value) if wildcard else str(w) == value for w in _as_list(wanted)):
                return False
    return True


def matches(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    """IAM wildcard matching: ``*`` any run of characters (``/`` and ``:`` included), ``?`` one."""
    return _pattern(pattern, ignore_case).match(value) is not None


def allowed(statements: Iterable[Statement], action: str, resource_arn: str,
            context: Mapping[str, str] | None = None) -> bool:
    """Whether some Allow statement grants ``action`` (case-insensitive) on ``resource_arn`` for a
    request whose condition keys are ``context``."""
    for st in statements:
        if st.get("Effect") != "Allow" or set(st) - _UNDERSTOOD_KEYS:
            raise ValueError(f"cannot evaluate {st}: only plain Allow statements are understood")
        _check_condition(st)
        if (any(matches(a, action, ignore_case=True) for a in _as_list(st["Action"]))
                and any(matches(r, resource_arn) for r in _as_list(st["Resource"]))
                and condition_holds(st.get("Condition"), context or {})):
            return True
    return False


def without_action(statements: Iterable[Statement], action: str) -> list[Statement]:
    """A copy of ``statements`` with every action pattern that grants ``action`` removed."""
    out = []
    for st in statements:
        kept = [a for a in _as_list(st["Action"]) if not matches(a, action, ignore_case=True)]
        if kept:
            out.append({**st, "Action": kept})
    return out


# ---- the resource of a call ---------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One authorisation Bedrock makes: an action on a resource, with the request's condition keys."""

    action: str
    resource: str
    context: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Arns:
    """ARNs of the resources calls name (table names, queue URLs, secret ids), as IAM sees them."""

    region: str
    account_id: str
    partition: str = "aws"
    secrets: Mapping[str, str] = field(default_factory=dict)  # secret name -> its ARN

    def table(self, name: str) -> str:
        return f"arn:{self.partition}:dynamodb:{self.region}:{self.account_id}:table/{name}"

    def index(self, table: str, index: str) -> str:
        return f"{self.table(table)}/index/{index}"

    def queue(self, url_or_name: str) -> str:
        name = urlparse(url_or_name).path.rstrip("/").rsplit("/", 1)[-1] if "/" in url_or_name else url_or_name
        return f"arn:{self.partition}:sqs:{self.region}:{self.account_id}:{name}"

    def secret(self, secret_id: str) -> str:
        if secret_id.startswith("arn:"):
            return secret_id
        if secret_id in self.secrets:
            return self.secrets[secret_id]
        raise Unresolvable(f"secret {secret_id!r}: name without a known ARN")

    def model(self, model_id: str) -> str:
        """A Bedrock model id (or inference profile id, ``us.``/``eu.``... prefixed) as an ARN."""
        if model_id.startswith("arn:"):
            return model_id
        if model_id.split(".", 1)[0] in _PROFILE_PREFIXES:
            return f"arn:{self.partition}:bedrock:{self.region}:{self.account_id}:inference-profile/{model_id}"
        return f"arn:{self.partition}:bedrock:{self.region}::foundation-model/{model_id}"

    def profile(self, profile_id: str) -> str:
        """A system-defined (cross-region) inference profile's ARN in this (the source) region."""
        return f"arn:{self.partition}:bedrock:{self.region}:{self.account_id}:inference-profile/{profile_id}"

    def foundation_model(self, model_id: str, region: str) -> str:
        """A foundation model's ARN in ``region`` ("": the region-less ARN of a global profile's model)."""
        return f"arn:{self.partition}:bedrock:{region}::foundation-model/{model_id}"

    def model_requests(self, api: str, model_id: str, destinations: Iterable[str]) -> list[Request]:
        """What Bedrock authorises for one runtime call (``Converse``, ``InvokeModelWithResponseStream``...)
        naming ``model_id``: a model id, the model in this region; a cross-region profile id, the
        profile in this region and, for each destination region, the profile's foundation model
        there, the request carrying ``bedrock:InferenceProfileArn`` (Bedrock user guide,
        "Geographic cross-Region inference" and "Global cross-Region inference": IAM policy
        requirements)."""
        action = f"bedrock:{_BEDROCK.get(api, api)}"
        prefix, _, model = model_id.partition(".")
        if prefix not in _PROFILE_PREFIXES:
            return [Request(action, self.foundation_model(model_id, self.region))]
        profile = self.profile(model_id)
        via = {"bedrock:InferenceProfileArn": profile}
        return [Request(action, profile)] + [Request(action, self.foundation_model(model, r), via)
                                             for r in destinations]

    def of_call(self, call: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(IAM action, resource ARN) pairs a recorded call needs (BatchGetItem: one per table)."""
        service, api = str(call["service"]), str(call["action"])
        resource = call.get("resource")
        if service == "dynamodb":
            tables = _as_list(resource) if resource is not None else []
            if not tables:
                return [(f"dynamodb:{api}", "*")]
            index = call.get("index")
            return [(f"dynamodb:{api}", self.index(t, index) if index else self.table(t)) for t in tables]
        if service == "sqs":
            action = f"sqs:{_SQS_BATCH.get(api, api)}"
            return [(action, self.queue(str(resource)) if resource else "*")]
        if service == "secretsmanager":
            return [(f"secretsmanager:{api}", self.secret(str(resource)) if resource else "*")]
        if service == "bedrock-runtime":
            action = f"bedrock:{_BEDROCK.get(api, api)}"
            return [(action, self.model(str(resource)) if resource else "*")]
        return [(f"{service}:{api}", "*")]  # unknown to this check: only a "*" grant allows it


def denied_calls(calls: Iterable[Mapping[str, Any]], statements: list[Statement], arns: Arns) -> list[str]:
    """The recorded calls the role does not allow, one readable line each (empty: all allowed)."""
    out = []
    for call in calls:
        for action, arn in arns.of_call(call):
            if not allowed(statements, action, arn):
                out.append(f"{call.get('principal')}: {action} on {arn} (HTTP {call.get('status')})")
    return sorted(set(out))


def arns_for(resolver: Resolver) -> Arns:
    """The ``Arns`` of a deployment: its region, account and the secrets it created."""
    p = resolver.physical
    template = resolver.template["Resources"]
    secrets = {str(p.refs[lid]).split(":")[-1].rsplit("-", 1)[0]: str(p.refs[lid])
               for lid, r in template.items() if r["Type"] == "AWS::SecretsManager::Secret" and lid in p.refs}
    return Arns(region=p.region, account_id=p.account_id, partition=p.partition, secrets=secrets)
