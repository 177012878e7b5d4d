"""A local Amazon Bedrock control plane (and the IAM and STS calls ``doctor`` makes), told what to show.

An HTTP server (one thread per connection) that answers, in the real wire formats, what
``alfred-jobs doctor`` asks (``alfred_tools.doctor``), so boto3 clients pointed at it
(``endpoint_url=standin.url``) parse exactly what they would parse from AWS:

- Bedrock (REST-JSON, botocore's ``bedrock`` service model 2023-04-20): ``GET
  /foundation-models/{id}`` (GetFoundationModel), ``GET /foundation-models`` (ListFoundationModels,
  ``byProvider``), ``GET /inference-profiles/{id}`` (GetInferenceProfile), ``GET
  /foundation-model-availability/{id}`` (GetFoundationModelAvailability), ``GET
  /use-case-for-model-access`` (GetUseCaseForModelAccess); errors as ``x-amzn-ErrorType`` plus
  ``{"message"}``;
- IAM and STS (the query protocol: a form POST, an XML answer): ``SimulatePrincipalPolicy``,
  evaluated against the role policies it was given (``Allow`` statements; ``*``/``?`` wildcards;
  ``StringEquals``/``StringLike``/``ArnLike`` conditions on the request's context entries), and
  ``GetCallerIdentity``.

Each problem doctor must name is a field to set: a model's ``status`` ("LEGACY"), a model or
profile left out (unknown), ``deny_control_plane`` (every Bedrock call AccessDenied), a model's
``availability`` (not entitled: no Marketplace subscription; not authorised), ``use_case_submitted``
(Anthropic's one-time form), a role's policy without the grant (IAM missing), and
``scp_denies_unspecified_region`` (an organisation's region lock, as the simulator reports it).
Every request is recorded (``standin.requests``: (method, path or IAM action)).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse
from xml.sax.saxutils import escape

ACCOUNT_ID = "123456789012"


@dataclass
class Model:
    """A foundation model as GetFoundationModel describes it."""

    model_id: str
    status: str = "ACTIVE"  # modelLifecycle.status: ACTIVE | LEGACY
    legacy_time: str | None = None  # ISO 8601
    end_of_life_time: str | None = None
    inference_types: tuple[str, ...] = ("INFERENCE_PROFILE",)  # ON_DEMAND for a model called directly
    streaming: bool = True
    # GetFoundationModelAvailability
    entitlement: str = "AVAILABLE"  # NOT_AVAILABLE: the account has no Marketplace subscription
    authorization: str = "AUTHORIZED"
    agreement: str = "AVAILABLE"  # AVAILABLE | PENDING | NOT_AVAILABLE | ERROR
    agreement_error: str | None = None
    region_available: str = "AVAILABLE"

    @property
    def provider(self) -> str:
        return self.model_id.split(".", 1)[0]


@dataclass
class Profile:
    """A system-defined inference profile: its id and the regions it routes to ("" = region-less)."""

    profile_id: str
    model_id: str
    regions: tuple[str, ...]


@dataclass
class ControlState:
    """What the stand-in shows; change it between calls (tests do, under no lock: set before asking)."""

    region: str = "us-east-1"
    account_id: str = ACCOUNT_ID
    models: dict[str, Model] = field(default_factory=dict)
    profiles: dict[str, Profile] = field(default_factory=dict)
    deny_control_plane: bool = False
    use_case_submitted: bool = True
    role_policies: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # role ARN -> statements
    scp_denies_unspecified_region: bool = False
    caller_arn: str = f"arn:aws:iam::{ACCOUNT_ID}:user/operator"


# ---- IAM evaluation (Allow statements only: what a role's identity policies say) --------------


def _wild(pattern: str, value: str, ignore_case: bool = False) -> bool:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.match(f"^{body}$", value, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL) is not None


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def policy_allows(statements: list[dict[str, Any]], action: str, resource: str, context: dict[str, str]) -> bool:
    ctx = {k.lower(): v for k, v in context.items()}
    for st in statements:
        if st.get("Effect") != "Allow":
            continue
        if not any(_wild(a, action, ignore_case=True) for a in _as_list(st.get("Action", []))):
            continue
        if not any(_wild(r, resource) for r in _as_list(st.get("Resource", []))):
            continue
        if all(_condition(op, key, wanted, ctx) for op, tests in (st.get("Condition") or {}).items()
               for key, wanted in tests.items()):
            return True
    return False


def _condition(op: str, key: str, wanted: Any, ctx: dict[str, str]) -> bool:
    value = ctx.get(key.lower())
    if value is None:
        return False
    if op in ("StringLike", "ArnLike"):
        return any(_wild(str(w), value) for w in _as_list(wanted))
    if op in ("StringEquals", "ArnEquals"):
        return any(str(w) == value for w in _as_list(wanted))
    return False  # an operator this stand-in does not know never holds


# ---- the server ------------------------------------------------------------------------------


class BedrockControlStandIn:
    """``with BedrockControlStandIn() as cp: cp.state.models[...] = Model(...); bedrock = cp.client("bedrock")``."""

    def __init__(self, state: ControlState | None = None) -> None:
        self.state = state or ControlState()
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                standin._serve_bedrock(self)

            def do_POST(self) -> None:
                standin._serve_query(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="bedrock-control-standin",
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> BedrockControlStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> BedrockControlStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self, service: str) -> Any:
        """A real boto3 client of ``service`` ("bedrock", "iam", "sts") pointed here (dummy credentials)."""
        import boto3
        from botocore.config import Config

        session: Any = boto3.session.Session()  # Any: the stubs type client() per literal service name
        return session.client(service, region_name=self.state.region, endpoint_url=self.url,
                              aws_access_key_id="testing", aws_secret_access_key="testing",
                              config=Config(connect_timeout=2, read_timeout=10,
                                            retries={"mode": "standard", "total_max_attempts": 1}))

    # -- convenience -----------------------------------------------------------------------

    def add_profile(self, profile_id: str, regions: tuple[str, ...], **model: Any) -> Model:
        """A cross-region profile and its model (``profile_id`` minus its geography prefix)."""
        model_id = profile_id.split(".", 1)[1]
        m = self.state.models.get(model_id) or Model(model_id, **model)
        self.state.models[model_id] = m
        self.state.profiles[profile_id] = Profile(profile_id, model_id, regions)
        return m

    # -- Bedrock (REST-JSON) ---------------------------------------------------------------

    def _serve_bedrock(self, h: BaseHTTPRequestHandler) -> None:
        url = urlparse(h.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        with self._lock:
            self.requests.append(("GET", url.path))
        s = self.state
        if s.deny_control_plane:
            self._error(h, 403, "AccessDeniedException",
                        f"User: {s.caller_arn} is not authorized to perform: bedrock:{_operation(parts)} "
                        "because no identity-based policy allows the action")
            return
        if parts == ["foundation-models"]:
            providers = parse_qs(url.query).get("byProvider")
            provider = providers[0] if providers else None
            summaries = [self._model_details(m) for m in s.models.values()
                         if provider is None or m.provider.lower() == provider.lower()]
            self._json(h, 200, {"modelSummaries": summaries})
        elif len(parts) == 2 and parts[0] == "foundation-models":
            model = s.models.get(parts[1])
            if model is None:
                self._error(h, 404, "ResourceNotFoundException", "The model ID provided is not supported.")
            else:
                self._json(h, 200, {"modelDetails": self._model_details(model)})
        elif len(parts) == 2 and parts[0] == "inference-profiles":
            profile = s.profiles.get(parts[1])
            if profile is None:
                self._error(h, 400, "ValidationException", "The provided model identifier is invalid.")
            else:
                self._json(h, 200, self._profile(profile))
        elif len(parts) == 2 and parts[0] == "foundation-model-availability":
            model = s.models.get(parts[1])
            if model is None:
                self._error(h, 404, "ResourceNotFoundException", "The model ID provided is not supported.")
            else:
                agreement: dict[str, Any] = {"status": model.agreement}
                if model.agreement_error:
                    agreement["errorMessage"] = model.agreement_error
                self._json(h, 200, {"modelId": model.model_id, "agreementAvailability": agreement,
                                    "authorizationStatus": model.authorization,
                                    "entitlementAvailability": model.entitlement,
                                    "regionAvailability": model.region_available})
        elif parts == ["use-case-for-model-access"]:
            if not s.use_case_submitted:
                self._error(h, 404, "ResourceNotFoundException", "No use case found for the account.")
            else:
                form = base64.b64encode(json.dumps({"companyName": "Example"}).encode()).decode()
                self._json(h, 200, {"formData": form})
        else:
            self._error(h, 404, "UnknownOperationException", f"no route {url.path}")

    def _model_details(self, m: Model) -> dict[str, Any]:
        lifecycle: dict[str, Any] = {"status": m.status}
        if m.legacy_time:
            lifecycle["legacyTime"] = m.legacy_time
        if m.end_of_life_time:
            lifecycle["endOfLifeTime"] = m.end_of_life_time
        return {"modelArn": f"arn:aws:bedrock:{self.state.region}::foundation-model/{m.model_id}",
                "modelId": m.model_id, "modelName": m.model_id, "providerName": m.provider.capitalize(),
                "inputModalities": ["TEXT"], "outputModalities": ["TEXT"],
                "responseStreamingSupported": m.streaming, "inferenceTypesSupported": list(m.inference_types),
                "modelLifecycle": lifecycle}

    def _profile(self, p: Profile) -> dict[str, Any]:
        s = self.state
        return {"inferenceProfileName": p.profile_id, "inferenceProfileId": p.profile_id,
                "inferenceProfileArn": f"arn:aws:bedrock:{s.region}:{s.account_id}:inference-profile/{p.profile_id}",
                "models": [{"modelArn": f"arn:aws:bedrock:{r}::foundation-model/{p.model_id}"} for r in p.regions],
                "status": "ACTIVE", "type": "SYSTEM_DEFINED"}

    # -- IAM and STS (query protocol) ------------------------------------------------------

    def _serve_query(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(h.rfile.read(length).decode()).items()}
        action = form.get("Action", "")
        with self._lock:
            self.requests.append(("POST", action))
        if action == "GetCallerIdentity":
            self._xml(h, 200, "GetCallerIdentity", "https://sts.amazonaws.com/doc/2011-06-15/",
                      f"<Arn>{escape(self.state.caller_arn)}</Arn><UserId>AIDAEXAMPLE</UserId>"
                      f"<Account>{self.state.account_id}</Account>")
        elif action == "SimulatePrincipalPolicy":
            self._simulate(h, form)
        else:
            self._query_error(h, 400, "InvalidAction", f"stand-in: {action!r} is not served")

    def _simulate(self, h: BaseHTTPRequestHandler, form: dict[str, str]) -> None:
        role = form.get("PolicySourceArn", "")
        statements = self.state.role_policies.get(role)
        if statements is None:
            self._query_error(h, 404, "NoSuchEntity", f"The role with name {role.rsplit('/', 1)[-1]} cannot be found.")
            return
        actions = _members(form, "ActionNames")
        resources = _members(form, "ResourceArns") or ["*"]
        context: dict[str, str] = {}
        i = 1
        while f"ContextEntries.member.{i}.ContextKeyName" in form:
            values = _members(form, f"ContextEntries.member.{i}.ContextKeyValues")
            context[form[f"ContextEntries.member.{i}.ContextKeyName"]] = values[0] if values else ""
            i += 1
        unspecified = context.get("aws:RequestedRegion") == "unspecified"
        results = []
        for action in actions:
            for resource in resources:
                allowed = policy_allows(statements, action, resource, context)
                by_org = not (self.state.scp_denies_unspecified_region and unspecified)
                decision = "allowed" if allowed and by_org else "explicitDeny" if not by_org else "implicitDeny"
                results.append(
                    f"<member><EvalActionName>{escape(action)}</EvalActionName>"
                    f"<EvalResourceName>{escape(resource)}</EvalResourceName>"
                    f"<EvalDecision>{decision}</EvalDecision><MatchedStatements/><MissingContextValues/>"
                    f"<OrganizationsDecisionDetail><AllowedByOrganizations>{str(by_org).lower()}"
                    f"</AllowedByOrganizations></OrganizationsDecisionDetail></member>")
        self._xml(h, 200, "SimulatePrincipalPolicy", "https://iam.amazonaws.com/doc/2010-05-08/",
                  f"<IsTruncated>false</IsTruncated><EvaluationResults>{''.join(results)}</EvaluationResults>")

    # -- wire ------------------------------------------------------------------------------

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, data: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        h.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _json(self, h: BaseHTTPRequestHandler, status: int, payload: dict[str, Any],
              headers: dict[str, str] | None = None) -> None:
        self._send(h, status, json.dumps(payload).encode(), "application/json", headers)

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        self._json(h, status, {"message": message},
                   {"x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazon.bedrock/"})

    def _xml(self, h: BaseHTTPRequestHandler, status: int, action: str, xmlns: str, result: str) -> None:
        body = (f'<{action}Response xmlns="{xmlns}"><{action}Result>{result}</{action}Result>'
                f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata></{action}Response>")
        self._send(h, status, body.encode(), "text/xml")

    def _query_error(self, h: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        body = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{escape(message)}"
                f"</Message></Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>")
        self._send(h, status, body.encode(), "text/xml")


def _members(form: dict[str, str], name: str) -> list[str]:
    out, i = [], 1
    while f"{name}.member.{i}" in form:
        out.append(form[f"{name}.member.{i}"])
        i += 1
    return out


def _operation(parts: list[str]) -> str:
    return {"foundation-models": "GetFoundationModel" if len(parts) > 1 else "ListFoundationModels",
            "inference-profiles": "GetInferenceProfile",
            "foundation-model-availability": "GetFoundationModelAvailability",
            "use-case-for-model-access": "GetUseCaseForModelAccess"}.get(parts[0] if parts else "", "Unknown")
