"""``alfred-jobs doctor``: can the Bedrock agent call its model? Answered without running a job.

From the operator's credentials and the configured model (``ALFRED_BEDROCK_MODEL_ID``, or
``--model``), through the Bedrock control plane and IAM's policy simulator:

1. the model: a cross-region inference profile (``us.``, ``eu.``, ``global.``...) is looked up
   (GetInferenceProfile: it exists here, and the regions and model it routes to); the foundation
   model (GetFoundationModel) exists, is ACTIVE or LEGACY (``modelLifecycle``: a LEGACY model
   reaches its end of life, and then every job fails), streams (every model call is streamed), and
   can be called as configured (a model id whose ``inferenceTypesSupported`` lacks ON_DEMAND needs a
   profile);
2. model access (Bedrock user guide, "Request access to models"): the account's Marketplace
   subscription and authorisation (GetFoundationModelAvailability) and, for Anthropic, the
   one-time use-case form (GetUseCaseForModelAccess);
3. with ``--role`` (the worker's role), IAM (SimulatePrincipalPolicy): the two invoke actions on
   the profile and on the model in every region the profile routes to, the request carrying
   ``bedrock:InferenceProfileArn``; for a global profile, the region-less model ARN with
   ``aws:RequestedRegion = unspecified``, which an organisation's region lock (an SCP) denies.
   Marketplace actions are needed by the role only while the account is not subscribed.

Each problem is one line saying what is wrong and one saying what to change. The clients are
injected (``diagnose(target, bedrock=..., iam=...)``): the command builds them from the operator's
credentials, the tests from ``alfred_tools.bedrock_control_standin``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

# The geography prefixes of system-defined (cross-region) inference profiles.
PROFILE_PREFIXES = frozenset({"us", "eu", "apac", "global", "jp", "au", "ca", "us-gov"})
# What the agent's calls are authorised as: the Messages API (InvokeModelWithResponseStream) and
# Converse/ConverseStream alike (Bedrock user guide, "Use the Converse API").
INVOKE_ACTIONS = ("bedrock:InvokeModel", "bedrock:InvokeModelWithResponseStream")
# What the first call of a third-party model needs while the account is not yet subscribed.
MARKETPLACE_ACTIONS = ("aws-marketplace:ViewSubscriptions", "aws-marketplace:Subscribe")
MODEL_ACCESS_DOC = "https://docs.aws.amazon.com/bedrock/latest/userguide/model-access.html"
READ_ACTIONS = ("bedrock:GetFoundationModel, bedrock:GetInferenceProfile, bedrock:ListFoundationModels, "
                "bedrock:GetFoundationModelAvailability, bedrock:GetUseCaseForModelAccess")


@dataclass(frozen=True)
class Target:
    """What to check: the configured model, where, and (optionally) the worker's role."""

    model_id: str
    region: str
    role_arn: str | None = None
    foundation_model_id: str | None = None  # the template's BedrockFoundationModelId, when set


@dataclass(frozen=True)
class Finding:
    ok: bool
    text: str
    fix: str = ""


@dataclass
class Report:
    target: Target
    findings: list[Finding] = field(default_factory=list)

    def good(self, text: str) -> None:
        self.findings.append(Finding(True, text))

    def problem(self, text: str, fix: str) -> None:
        self.findings.append(Finding(False, text, fix))

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok]

    def render(self) -> str:
        t = self.target
        lines = [f"model {t.model_id} in {t.region}" + (f", worker role {t.role_arn}" if t.role_arn else "")]
        for f in self.findings:
            lines.append(f"  {'ok     ' if f.ok else 'PROBLEM'} {f.text}")
            if f.fix:
                lines.append(f"          fix: {f.fix}")
        n = len(self.problems)
        lines.append("no problems found" if not n else f"{n} problem{'s' if n > 1 else ''} found")
        return "\n".join(lines)

    def as_json(self) -> str:
        return json.dumps({"target": asdict(self.target), "findings": [asdict(f) for f in self.findings],
                           "problems": len(self.problems)}, indent=2)


def profile_prefix(model_id: str) -> str | None:
    """The geography of a cross-region profile id (``us``, ``global``...), None for a model id."""
    prefix, dot, _ = model_id.partition(".")
    return prefix if dot and prefix in PROFILE_PREFIXES else None


def foundation_model_of(model_id: str) -> str:
    """The foundation model a system-defined profile id names: the id without its geography."""
    return model_id.split(".", 1)[1] if profile_prefix(model_id) else model_id


def partition_of(region: str) -> str:
    return "aws-cn" if region.startswith("cn-") else "aws-us-gov" if region.startswith("us-gov-") else "aws"


def _code(exc: Exception) -> str:
    return str(exc.response.get("Error", {}).get("Code", "")) if isinstance(exc, ClientError) else type(exc).__name__


def _denied(exc: Exception) -> bool:
    return _code(exc) in ("AccessDeniedException", "AccessDenied", "UnauthorizedOperation")


# ---- the checks ------------------------------------------------------------------------------


@dataclass
class _Model:
    """What the checks learn of the configured model."""

    foundation_model_id: str
    profile_arn: str | None = None
    destinations: list[tuple[str, str]] = field(default_factory=list)  # (region, foundation-model ARN)
    provider: str = ""
    known: bool = False
    subscribed: bool | None = None  # None: not read


def diagnose(target: Target, *, bedrock: Any, iam: Any | None = None) -> Report:
    """Every check for ``target``; ``bedrock`` is a ``bedrock`` (control plane) client in
    ``target.region``, ``iam`` an IAM client (needed with ``target.role_arn``)."""
    report = Report(target)
    try:
        model = _check_model(target, bedrock, report)
        if model is not None and model.known:
            _check_access(model, bedrock, report)
        if target.role_arn and model is not None:
            if iam is None:
                raise ValueError("a role to check needs an IAM client")
            _check_role(target, model, iam, report)
    except _Stop:
        pass
    return report


class _Stop(Exception):
    """A check found that the rest cannot be answered (e.g. the credentials read nothing)."""


def _control_plane_denied(report: Report, exc: Exception) -> _Stop:
    report.problem(f"your credentials may not read the Bedrock control plane in {report.target.region} "
                   f"({_code(exc)}): doctor cannot tell whether the model is reachable",
                   f"run doctor with credentials allowed {READ_ACTIONS} (read-only), e.g. an administrator's")
    return _Stop()


def _check_model(target: Target, bedrock: Any, report: Report) -> _Model | None:
    region = target.region
    prefix = profile_prefix(target.model_id)
    model = _Model(foundation_model_of(target.model_id))
    if prefix:
        try:
            profile = bedrock.get_inference_profile(inferenceProfileIdentifier=target.model_id)
        except ClientError as exc:
            if _denied(exc):
                raise _control_plane_denied(report, exc) from None
            report.problem(f"inference profile {target.model_id} does not exist in {region} ({_code(exc)})",
                           f"set BedrockModelId (ALFRED_BEDROCK_MODEL_ID) to a profile listed by `aws bedrock "
                           f"list-inference-profiles --region {region}`, or deploy in a region of the "
                           f"{prefix}. geography")
            return None
        model.profile_arn = str(profile["inferenceProfileArn"])
        arns = [str(m["modelArn"]) for m in profile.get("models", [])]
        model.destinations = [(a.split(":")[3], a) for a in arns]
        routed = sorted({a.rsplit("/", 1)[-1] for a in arns})
        if routed:
            model.foundation_model_id = routed[0]
        regions = ", ".join(r or "(any commercial region)" for r, _ in model.destinations)
        report.good(f"inference profile {target.model_id} routes to {model.foundation_model_id} in {regions}")
        if target.foundation_model_id and target.foundation_model_id not in routed:
            report.problem(f"BedrockFoundationModelId {target.foundation_model_id} is not the model the profile "
                           f"routes to ({', '.join(routed)}): IAM grants the wrong model",
                           f"set BedrockFoundationModelId to {model.foundation_model_id}, or leave it empty")
    try:
        details = bedrock.get_foundation_model(modelIdentifier=model.foundation_model_id)["modelDetails"]
    except ClientError as exc:
        if _denied(exc):
            raise _control_plane_denied(report, exc) from None
        report.problem(f"model {model.foundation_model_id} is unknown in {region} ({_code(exc)}): retired, "
                       "misspelt, or not offered here",
                       "choose an ACTIVE model" + _suggest(bedrock, model.foundation_model_id.split(".", 1)[0], region)
                       + "; docs/agents.md \"Choosing a model\"")
        return model
    model.known = True
    model.provider = str(details.get("providerName") or model.foundation_model_id.split(".", 1)[0])
    lifecycle = details.get("modelLifecycle") or {}
    status = str(lifecycle.get("status") or "ACTIVE")
    if status == "LEGACY":
        eol = lifecycle.get("endOfLifeTime")
        report.problem(f"model {model.foundation_model_id} is LEGACY"
                       + (f" (since {_day(lifecycle.get('legacyTime'))})" if lifecycle.get("legacyTime") else "")
                       + (f"; its end of life is {_day(eol)}, after which every job fails" if eol else
                          "; at its end of life every job fails"),
                       "move to an ACTIVE model before then"
                       + _suggest(bedrock, model.foundation_model_id.split(".", 1)[0], region))
    else:
        report.good(f"model {model.foundation_model_id} is {status}")
    if details.get("responseStreamingSupported") is False:
        report.problem(f"model {model.foundation_model_id} does not stream responses; the agent streams every call",
                       "choose a model whose responseStreamingSupported is true")
    kinds = set(details.get("inferenceTypesSupported") or [])
    if not prefix and kinds and "ON_DEMAND" not in kinds:
        report.problem(f"model {model.foundation_model_id} cannot be called by its id in {region} "
                       "(on-demand throughput isn't supported): it needs an inference profile",
                       f"set BedrockModelId to a profile of it, e.g. us.{model.foundation_model_id} "
                       "(see `aws bedrock list-inference-profiles`)")
    return model


def _day(value: Any) -> str:
    return value.date().isoformat() if hasattr(value, "date") else str(value)


def _suggest(bedrock: Any, provider: str, region: str) -> str:
    """ACTIVE models of ``provider`` that stream, as a hint (empty if none can be listed)."""
    try:
        summaries = bedrock.list_foundation_models(byProvider=provider)["modelSummaries"]
    except (ClientError, BotoCoreError):
        return ""
    active = sorted(str(m["modelId"]) for m in summaries
                    if (m.get("modelLifecycle") or {}).get("status") == "ACTIVE"
                    and m.get("responseStreamingSupported") is not False)
    return f" ({provider} models ACTIVE in {region}: {', '.join(active[:6])})" if active else ""


def _check_access(model: _Model, bedrock: Any, report: Report) -> None:
    fm = model.foundation_model_id
    try:
        a = bedrock.get_foundation_model_availability(modelId=fm)
    except ClientError as exc:
        report.problem(f"model access of {fm} could not be read ({_code(exc)})",
                       f"grant the operator bedrock:GetFoundationModelAvailability, or check {MODEL_ACCESS_DOC}")
        return
    agreement = a.get("agreementAvailability") or {}
    if a.get("regionAvailability") == "NOT_AVAILABLE":
        report.problem(f"model {fm} is not available in {report.target.region}",
                       "use a cross-region profile that routes to a region offering it, or another model")
    model.subscribed = not (a.get("entitlementAvailability") == "NOT_AVAILABLE"
                            or agreement.get("status") in ("NOT_AVAILABLE", "ERROR"))
    if not model.subscribed:
        why = f": {agreement['errorMessage']}" if agreement.get("errorMessage") else ""
        report.problem(f"the account is not subscribed to {fm} through AWS Marketplace "
                       f"(entitlement {a.get('entitlementAvailability')}, agreement {agreement.get('status')}{why})",
                       "once, as an administrator allowed aws-marketplace:Subscribe and ViewSubscriptions (and with "
                       "a valid payment method), invoke the model (e.g. in the console's playground), then allow "
                       f"up to 15 minutes; {MODEL_ACCESS_DOC}")
    elif agreement.get("status") == "PENDING":
        report.problem(f"the Marketplace subscription to {fm} is being set up: calls may be AccessDenied for a "
                       "few minutes", "wait (up to 15 minutes) and run doctor again")
    else:
        report.good(f"the account is subscribed to {fm}")
    if a.get("authorizationStatus") == "NOT_AUTHORIZED":
        report.problem(f"the account is not authorised to use {fm} (authorizationStatus NOT_AUTHORIZED)",
                       f"complete the model's access prerequisites ({MODEL_ACCESS_DOC}); an organisation may "
                       "also block it")
    if model.provider.lower() == "anthropic" or fm.startswith("anthropic."):
        try:
            bedrock.get_use_case_for_model_access()
            report.good("Anthropic's one-time use-case form is on file")
        except ClientError as exc:
            if _code(exc) == "ResourceNotFoundException":
                report.problem("Anthropic's one-time use-case form has not been submitted for this account: "
                               "every call to an Anthropic model is AccessDenied",
                               "submit it once: the Bedrock console (model catalog, an Anthropic model) or "
                               "`aws bedrock put-use-case-for-model-access` (in an organisation, once in its "
                               f"management account); {MODEL_ACCESS_DOC}")
            else:
                report.problem(f"Anthropic's use-case form could not be checked ({_code(exc)})",
                               "grant the operator bedrock:GetUseCaseForModelAccess, or check the console")


def _check_role(target: Target, model: _Model, iam: Any, report: Report) -> None:
    role = str(target.role_arn)
    partition = partition_of(target.region)
    checks: list[tuple[list[str], list[str], dict[str, str]]] = []
    if model.profile_arn:
        checks.append((list(INVOKE_ACTIONS), [model.profile_arn], {}))
        via = {"bedrock:InferenceProfileArn": model.profile_arn}
        regional = [arn for r, arn in model.destinations if r]
        if regional:
            checks.append((list(INVOKE_ACTIONS), regional, via))
        regionless = [arn for r, arn in model.destinations if not r]
        if regionless:  # a global profile: the model's ARN has no region; so has the request
            checks.append((list(INVOKE_ACTIONS), regionless, {**via, "aws:RequestedRegion": "unspecified"}))
    else:
        arn = f"arn:{partition}:bedrock:{target.region}::foundation-model/{model.foundation_model_id}"
        checks.append((list(INVOKE_ACTIONS), [arn], {}))
    # resource (and how it is reached) -> the actions refused on it
    missing: dict[str, list[str]] = {}
    by_scp: dict[str, list[str]] = {}
    try:
        for actions, resources, context in checks:
            for result in _simulate(iam, role, actions, resources, context):
                if result.get("EvalDecision") == "allowed":
                    continue
                where = str(result["EvalResourceName"])
                if context.get("bedrock:InferenceProfileArn"):
                    where += " (through the profile)"
                org = (result.get("OrganizationsDecisionDetail") or {}).get("AllowedByOrganizations")
                (by_scp if org is False else missing).setdefault(where, []).append(str(result["EvalActionName"]))
    except ClientError as exc:
        if _code(exc) == "NoSuchEntity":
            report.problem(f"role {role} does not exist",
                           "pass the worker's role: `aws cloudformation describe-stack-resource --stack-name "
                           "<stack> --logical-resource-id WorkerFunctionRole`, as an ARN")
        else:
            report.problem(f"the worker's role could not be simulated ({_code(exc)})",
                           "run doctor with credentials allowed iam:SimulatePrincipalPolicy on the role")
        return
    for where, actions in missing.items():
        report.problem(f"the worker's role may not call {', '.join(actions)} on {where}",
                       f"redeploy the template with BedrockModelId={target.model_id} and BedrockFoundationModelId "
                       "empty (its statement grants the profile and, through it, the model in every region), or "
                       "add that grant to the role")
    for where, actions in by_scp.items():
        if ":bedrock:::" in where:  # a global profile's region-less model ARN
            report.problem(f"an organisation policy (SCP) denies {', '.join(actions)} on {where}: a global "
                           "profile's request has aws:RequestedRegion = unspecified, which a region lock does "
                           "not list",
                           "have the organisation's administrator exempt aws:RequestedRegion \"unspecified\" for "
                           "bedrock:InvokeModel*, or use a geography profile (us., eu.) whose regions it allows")
        else:
            report.problem(f"an organisation policy (SCP) denies {', '.join(actions)} on {where}: the profile "
                           "routes to a region the organisation's region lock does not allow",
                           "have the organisation's administrator allow bedrock:InvokeModel* in every destination "
                           "region of the profile (or when bedrock:InferenceProfileArn is set), or use a model "
                           "or profile whose regions it allows")
    if not missing and not by_scp:
        count = sum(len(resources) for _, resources, _ in checks)
        report.good(f"the worker's role may invoke the model ({count} resource(s) simulated, both invoke actions)")
    _check_role_marketplace(role, model, iam, report)


def _check_role_marketplace(role: str, model: _Model, iam: Any, report: Report) -> None:
    """The role needs the Marketplace actions only while the account is not subscribed (then its
    first call subscribes it): said once, beside the subscription finding."""
    if model.subscribed is not False:
        return
    try:
        results = _simulate(iam, role, list(MARKETPLACE_ACTIONS), ["*"], {})
    except ClientError:
        return
    lacking = [str(r["EvalActionName"]) for r in results if r.get("EvalDecision") != "allowed"]
    if lacking:
        report.problem(f"the worker's role lacks {', '.join(lacking)}, so its first call cannot subscribe the "
                       f"account to {model.foundation_model_id} either",
                       "subscribe once as an administrator (above); alfred-jobs does not grant Marketplace "
                       "actions to the worker (docs/deploy.md \"Model access\")")


def _simulate(iam: Any, role: str, actions: list[str], resources: list[str],
              context: dict[str, str]) -> list[dict[str, Any]]:
    entries = [{"ContextKeyName": k, "ContextKeyValues": [v], "ContextKeyType": "string"} for k, v in context.items()]
    out: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"PolicySourceArn": role, "ActionNames": actions, "ResourceArns": resources}
    if entries:
        kwargs["ContextEntries"] = entries
    while True:
        page = iam.simulate_principal_policy(**kwargs)
        out += page.get("EvaluationResults", [])
        if not page.get("IsTruncated"):
            return out
        kwargs["Marker"] = page["Marker"]


def role_arn_of(role: str, sts: Any, region: str) -> str:
    """A role ARN from an ARN or a role name (the account from the operator's credentials)."""
    if role.startswith("arn:"):
        return role
    account = sts.get_caller_identity()["Account"]
    return f"arn:{partition_of(region)}:iam::{account}:role/{role}"
