"""Each function exactly as template.yaml deploys it: its environment, its process, its AWS calls.

template.yaml is the one truth for what a function starts with. This module computes, for each
function, the environment Lambda would give it — SAM's merge of ``Globals.Function.Environment``
with the function's own (done by aws-sam-translator itself, not re-implemented), every
intrinsic resolved against a local "deployment", plus what the Lambda runtime sets — and nothing
from the test process's environment. A reference this module cannot resolve raises
``Unresolvable``, so a variable added to the template is covered (or loudly refused) at once.

    with deploy(faithful_env, tmp_path, calls=proxy) as d:  # tables, queues (bootstrap), secrets
        submit = d.start("SubmitFunction")          # a child Python, handler imported as Lambda does
        out = submit.invoke(http_api_event(...))    # an Invocation: payload, or a Lambda error
        stream = d.start_stream()                   # the image's own CMD (uvicorn), on a free port
        d.calls.of("WorkerFunction")                # every AWS call it made, from the proxy's log

Every function process signs with a distinct access key id, its logical id (for example
``AWS_ACCESS_KEY_ID=WorkerFunction``), so the fidelity proxy (``alfred_tools.fidelity``, whose
``GET /_fidelity/calls`` lists ``principal, service, action, resource, index, status``) can
attribute each call to a role; ``tests/support/iam.py`` checks them. The harness's own calls
(creating resources, planting and reading state) sign as ``inspector``, which the proxy's
``aws`` profile exempts from injected faults and no role check looks at.

Deliberate differences from AWS, each named: the stream's port (``PORT`` and ``AWS_LWA_PORT``)
is a free local port instead of 8080; the Lambda Web Adapter itself is not run, only its target
process (the image's CMD); ``HOME`` is an empty temporary directory (so no ``~/.aws`` of the
developer leaks in); ``PATH`` and, for zip functions, ``PYTHONPATH`` (CodeUri + the layer, lib/)
point at this checkout and its virtualenv; the emulator endpoint variables are added.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import queue
import re
import secrets
import shlex
import string
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import boto3

from alfred_jobs.settings import Settings
from alfred_tools.bootstrap import QUEUES, TABLES, create_resources, load_template
from alfred_tools.emulator import free_port, stop_processes

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = ROOT / "template.yaml"
DOCKERFILE = ROOT / "functions" / "stream" / "Dockerfile"
LAYER_DIR = ROOT / "lib"  # AlfredLibLayer: infra/layer/Makefile packages lib/alfred_jobs + dependencies
FUNCTIONS = ("SubmitFunction", "WorkerFunction", "SweeperFunction", "StreamFunction")
# The three parameters without a default: test values of their declared shape.
TEST_PARAMETERS: dict[str, Any] = {
    "JwtIssuer": "https://issuer.alfred.test",
    "JwtAudience": "alfred-test-client",
    "CorsAllowedOrigins": "https://alfred.test",
}
# StreamHosting=service: the stream image on ECS behind a load balancer (its parameters default to
# "", for StreamHosting=lambda; these are values of their declared shape).
SERVICE_PARAMETERS: dict[str, Any] = {
    "StreamHosting": "service",
    "StreamDomainName": "stream.alfred.test",
    "StreamCertificateArn": "arn:aws:acm:us-east-1:123456789012:certificate/0a1b2c3d-4e5f-6789-abcd-ef0123456789",
    "StreamImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/alfred/stream:1.0.0",
    "StreamVpcId": "vpc-0123456789abcdef0",
    "StreamLoadBalancerSubnetIds": "subnet-0123456789abcdef0,subnet-0123456789abcdef1",
    "StreamTaskSubnetIds": "subnet-0123456789abcdef2,subnet-0123456789abcdef3",
}
STREAM_TASK = ("StreamTaskDefinition", "stream")  # the service's task definition and its container
SECRET_ACCESS_KEY = "testing"  # every principal's secret; the access key id names the principal
HARNESS_PRINCIPAL = "inspector"  # the test's own calls: exempt from the proxy's faults, never role-checked
NO_VALUE = object()  # AWS::NoValue


class Unresolvable(LookupError):
    """A template reference this local deployment cannot give a value for."""


# ---- the template as CloudFormation receives it ----------------------------------------------


def parameter_values(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every template parameter: its default, else its test value (TEST_PARAMETERS), else an error."""
    given = {**TEST_PARAMETERS, **(overrides or {})}
    values: dict[str, Any] = {}
    for name, spec in load_template(TEMPLATE_PATH)["Parameters"].items():
        if name in given:
            value = given[name]
        elif "Default" in spec:
            value = spec["Default"]
        else:
            raise Unresolvable(f"parameter {name} has no default and no test value (TEST_PARAMETERS)")
        if spec["Type"] == "CommaDelimitedList" and isinstance(value, str):
            value = [v.strip() for v in value.split(",")] if value else []
        values[name] = value
    return values


@lru_cache(maxsize=8)
def _transformed(params_json: str, region: str) -> str:
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    sam = copy.deepcopy(load_template(TEMPLATE_PATH))
    # The translator wants deployable artifacts; the code location changes nothing else it emits.
    for logical_id, resource in sam["Resources"].items():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function":
            if props.get("PackageType") == "Image":
                props["ImageUri"] = f"123456789012.dkr.ecr.{region}.amazonaws.com/alfred-jobs:{logical_id}"
            else:
                props["CodeUri"] = f"s3://alfred-jobs-artifacts/{logical_id}.zip"
        elif resource["Type"] == "AWS::Serverless::LayerVersion":
            props["ContentUri"] = f"s3://alfred-jobs-artifacts/{logical_id}.zip"

    def no_named_policies() -> dict[str, str]:
        raise Unresolvable("a policy is named, not an ARN or a SAM policy template: resolving it needs IAM")

    translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name=region))
    out = translator.translate(sam, parameter_values=json.loads(params_json),
                               get_managed_policy_map=no_named_policies)
    return json.dumps(out)


def cloudformation(parameters: Mapping[str, Any] | None = None, region: str = "us-east-1") -> dict[str, Any]:
    """template.yaml after the SAM transform (aws-sam-translator): what CloudFormation deploys."""
    params = dict(parameters) if parameters is not None else parameter_values()
    result: dict[str, Any] = json.loads(_transformed(json.dumps(params, sort_keys=True), region))
    return result


def template_function(logical_id: str) -> dict[str, Any]:
    """A function's properties as written in template.yaml (CodeUri, Handler, PackageType...)."""
    props: dict[str, Any] = load_template(TEMPLATE_PATH)["Resources"][logical_id]["Properties"]
    return props


# ---- intrinsic functions -----------------------------------------------------------------------


@dataclass(frozen=True)
class Physical:
    """What a deployed stack knows: pseudo parameters, parameters, and each resource's Ref/GetAtt."""

    region: str
    account_id: str
    parameters: Mapping[str, Any]
    refs: Mapping[str, Any]
    attrs: Mapping[tuple[str, str], Any]
    partition: str = "aws"
    stack_name: str = "alfred-jobs-test"

    def pseudo(self, name: str) -> Any:
        values = {"AWS::Region": self.region, "AWS::AccountId": self.account_id,
                  "AWS::Partition": self.partition, "AWS::URLSuffix": "amazonaws.com",
                  "AWS::StackName": self.stack_name, "AWS::NoValue": NO_VALUE,
                  "AWS::StackId": f"arn:{self.partition}:cloudformation:{self.region}:{self.account_id}:"
                                  f"stack/{self.stack_name}/00000000-0000-0000-0000-000000000000"}
        if name not in values:
            raise Unresolvable(f"pseudo parameter {name}")
        return values[name]


class Resolver:
    """Resolves CloudFormation intrinsics against a ``Physical``; anything unknown raises."""

    def __init__(self, template: Mapping[str, Any], physical: Physical) -> None:
        self.template = template
        self.physical = physical

    def condition(self, name: str) -> bool:
        conditions = self.template.get("Conditions", {})
        if name not in conditions:
            raise Unresolvable(f"condition {name}")
        value = self.resolve(conditions[name])
        if not isinstance(value, bool):
            raise Unresolvable(f"condition {name} is not a boolean: {value!r}")
        return value

    def ref(self, name: str) -> Any:
        if name.startswith("AWS::"):
            return self.physical.pseudo(name)
        if name in self.physical.parameters:
            return self.physical.parameters[name]
        if name in self.physical.refs:
            return self.physical.refs[name]
        raise Unresolvable(f"!Ref {name}: no parameter or locally deployed resource has that name")

    def get_att(self, logical_id: str, attribute: str) -> Any:
        key = (logical_id, attribute)
        if key not in self.physical.attrs:
            raise Unresolvable(f"!GetAtt {logical_id}.{attribute}: not known for the local deployment")
        return self.physical.attrs[key]

    def sub(self, text: str, variables: Mapping[str, Any]) -> str:
        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                value = variables[name]
            elif "." in name and not name.startswith("AWS::"):
                value = self.get_att(*name.split(".", 1))
            else:
                value = self.ref(name)
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise Unresolvable(f"!Sub ${{{name}}} is not a scalar: {value!r}")
            return str(value)

        return re.sub(r"\$\{([^}]+)\}", one, text)

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            items = [self.resolve(v) for v in value]
            return [v for v in items if v is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, arg), = value.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                logical_id, attribute = arg.split(".", 1) if isinstance(arg, str) else arg
                return self.get_att(logical_id, attribute)
            if key == "Fn::Sub":
                text, variables = (arg, {}) if isinstance(arg, str) else arg
                return self.sub(text, {k: self.resolve(v) for k, v in variables.items()})
            if key == "Fn::If":
                name, if_true, if_false = arg
                return self.resolve(if_true if self.condition(name) else if_false)
            if key == "Fn::Join":
                sep, parts = arg
                return str(sep).join(str(p) for p in self.resolve(parts))
            if key == "Fn::Select":
                index, items = self.resolve(arg)
                return items[int(index)]
            if key == "Fn::Split":
                sep, text = self.resolve(arg)
                return str(text).split(sep)
            if key == "Fn::Equals":
                left, right = self.resolve(arg)
                return str(left) == str(right)
            if key == "Fn::Not":
                return not self.resolve(arg)[0]
            if key == "Fn::And":
                return all(self.resolve(arg))
            if key == "Fn::Or":
                return any(self.resolve(arg))
            if key == "Condition":
                return self.condition(arg)
            if key.startswith("Fn::"):
                raise Unresolvable(f"{key} is not supported by the local resolver")
        out = {k: self.resolve(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not NO_VALUE}


def env_string(name: str, value: Any) -> str:
    """An environment value as Lambda stores it (a string); lists and maps are refused."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise Unresolvable(f"{name} resolves to {value!r}, which is not a string")
    return str(value)


def template_environment(logical_id: str, resolver: Resolver) -> dict[str, str]:
    """The function's Environment.Variables after the SAM transform (Globals merged), resolved."""
    props = resolver.template["Resources"][logical_id]["Properties"]
    variables = props.get("Environment", {}).get("Variables", {})
    out: dict[str, str] = {}
    for name, raw in variables.items():
        try:
            value = resolver.resolve(raw)
        except Unresolvable as exc:
            raise Unresolvable(f"{logical_id}: {name}: {exc}") from None
        if value is NO_VALUE:
            continue
        out[name] = env_string(f"{logical_id}: {name}", value)
    return out


def task_environment(resolver: Resolver, task: tuple[str, str] = STREAM_TASK) -> dict[str, str]:
    """A task definition container's Environment (Name/Value pairs), resolved."""
    logical_id, container = task
    props = resolver.template["Resources"][logical_id]["Properties"]
    (definition,) = [c for c in props["ContainerDefinitions"] if c["Name"] == container]
    out: dict[str, str] = {}
    for pair in definition.get("Environment", []):
        name = pair["Name"]
        try:
            value = resolver.resolve(pair["Value"])
        except Unresolvable as exc:
            raise Unresolvable(f"{logical_id}/{container}: {name}: {exc}") from None
        if name in out:
            raise AssertionError(f"{logical_id}/{container}: {name} is set twice")
        out[name] = env_string(f"{logical_id}/{container}: {name}", value)
    return out


def ecs_environment(resolver: Resolver, principal: str, home: Path) -> dict[str, str]:
    """What ECS on Fargate sets in a task's container, the task role's credentials as static keys
    (the access key id names the role, as for the functions; on ECS they come from the
    container credentials endpoint)."""
    region = resolver.physical.region
    return {
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_EXECUTION_ENV": "AWS_ECS_FARGATE",
        "ECS_CONTAINER_METADATA_URI_V4": "http://169.254.170.2/v4/00000000000000000000000000000000-0000000000",
        "AWS_ACCESS_KEY_ID": principal,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_SESSION_TOKEN": f"session-{principal}",
        "HOME": str(home),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
    }


def nominal_physical(parameters: Mapping[str, Any] | None = None, region: str = "us-east-1",
                     account_id: str = "123456789012", stack: str = "alfred-jobs") -> Physical:
    """Names and ARNs of a hypothetical deployment on AWS (no emulator): for checks of the roles."""
    refs: dict[str, Any] = {}
    attrs: dict[tuple[str, str], Any] = {}
    for logical_id, resource in load_template(TEMPLATE_PATH)["Resources"].items():
        kind = resource["Type"]
        name = f"{stack}-{logical_id}-ABC123"
        if kind == "AWS::DynamoDB::Table":
            refs[logical_id] = name
            attrs[(logical_id, "Arn")] = f"arn:aws:dynamodb:{region}:{account_id}:table/{name}"
        elif kind == "AWS::SQS::Queue":
            refs[logical_id] = f"https://sqs.{region}.amazonaws.com/{account_id}/{name}"
            attrs[(logical_id, "QueueName")] = name
            attrs[(logical_id, "Arn")] = f"arn:aws:sqs:{region}:{account_id}:{name}"
        elif kind == "AWS::SecretsManager::Secret":
            refs[logical_id] = f"arn:aws:secretsmanager:{region}:{account_id}:secret:{logical_id}-AbCdEf"
        elif kind == "AWS::Logs::LogGroup":
            refs[logical_id] = name
            attrs[(logical_id, "Arn")] = f"arn:aws:logs:{region}:{account_id}:log-group:{name}:*"
        elif kind == "AWS::Serverless::Function":
            refs[logical_id] = name
            attrs[(logical_id, "Arn")] = f"arn:aws:lambda:{region}:{account_id}:function:{name}"
    attrs[("StreamFunctionUrl", "FunctionUrl")] = f"https://abcdefghij.lambda-url.{region}.on.aws/"
    return Physical(region=region, account_id=account_id, parameters=parameter_values(parameters), refs=refs,
                    attrs=attrs, stack_name=stack)


def nominal_resolver(parameters: Mapping[str, Any] | None = None, region: str = "us-east-1") -> Resolver:
    """A resolver over the transformed template and ``nominal_physical`` (unit tests)."""
    params = parameter_values(parameters)
    return Resolver(cloudformation(params, region), nominal_physical(params, region))


# ---- the image of the stream function ------------------------------------------------------


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    out = []
    for line in logical:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def image_config(path: Path = DOCKERFILE) -> tuple[dict[str, str], list[str], str]:
    """The image's ENV, its exec-form CMD and its WORKDIR."""
    env: dict[str, str] = {}
    cmd: list[str] | None = None
    workdir = "/"
    for word, args in dockerfile_instructions(path):
        if word == "ENV":
            for token in shlex.split(args):
                key, sep, value = token.partition("=")
                if not sep:
                    raise ValueError(f"{path}: ENV {args!r}: only the KEY=VALUE form is understood")
                env[key] = value
        elif word == "CMD":
            parsed = json.loads(args)
            if not (isinstance(parsed, list) and all(isinstance(a, str) for a in parsed)):
                raise ValueError(f"{path}: CMD must be the exec form (a JSON list of strings)")
            cmd = parsed
        elif word == "WORKDIR":
            workdir = args
    if cmd is None:
        raise ValueError(f"{path}: no CMD")
    return env, cmd, workdir


# ---- what the Lambda runtime adds ----------------------------------------------------------------


def runtime_environment(logical_id: str, resolver: Resolver, *, function_name: str, task_root: Path,
                        home: Path) -> dict[str, str]:
    """The variables the Lambda service and runtime set, and the execution role's credentials."""
    props = resolver.template["Resources"][logical_id]["Properties"]
    is_zip = props.get("PackageType", "Zip") == "Zip"
    region = resolver.physical.region
    memory = resolver.resolve(props.get("MemorySize", 128))
    log_group = resolver.resolve(props.get("LoggingConfig", {}).get("LogGroup", f"/aws/lambda/{function_name}"))
    env = {
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_LAMBDA_FUNCTION_NAME": function_name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": env_string("MemorySize", memory),
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_LAMBDA_LOG_GROUP_NAME": env_string("LoggingConfig.LogGroup", log_group),
        "AWS_LAMBDA_LOG_STREAM_NAME": time.strftime("%Y/%m/%d/") + "[$LATEST]" + uuid.uuid4().hex,
        # The execution role's credentials: the access key id names the role (see module doc).
        "AWS_ACCESS_KEY_ID": logical_id,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_SESSION_TOKEN": f"session-{logical_id}",
        "TZ": ":UTC",
        "LANG": "en_US.UTF-8",
        "HOME": str(home),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
    }
    if is_zip:
        env.update({
            "AWS_EXECUTION_ENV": f"AWS_Lambda_{props['Runtime']}",
            "_HANDLER": props["Handler"],
            "LAMBDA_TASK_ROOT": str(task_root),
            "LAMBDA_RUNTIME_DIR": sysconfig.get_paths()["purelib"],
            # /var/task (the function's CodeUri) and /opt/python (the layer)
            "PYTHONPATH": os.pathsep.join([str(task_root), str(LAYER_DIR)]),
        })
    else:
        env["LAMBDA_TASK_ROOT"] = str(task_root)
    if props.get("TracingConfig", {}).get("Mode") == "Active":
        env["AWS_XRAY_CONTEXT_MISSING"] = "LOG_ERROR"
        env["AWS_XRAY_DAEMON_ADDRESS"] = "127.0.0.1:2000"
    return env


ENDPOINT_PREFIX = "AWS_ENDPOINT_URL"


def endpoint_for(service_env_name: str, endpoints: Mapping[str, str]) -> str | None:
    """The endpoint botocore would use for a service, from AWS_ENDPOINT_URL[_SERVICE] variables."""
    return endpoints.get(f"{ENDPOINT_PREFIX}_{service_env_name}") or endpoints.get(ENDPOINT_PREFIX)


# ---- every AWS call, from the fidelity proxy's log ---------------------------------------------


class CallSource(Protocol):
    """Where calls are recorded: ``alfred_tools.fidelity.FidelityProxy`` (``GET /_fidelity/calls``)."""

    def calls(self) -> list[dict[str, Any]]: ...


@dataclass
class DeploymentCalls:
    """The recorded calls of one deployment: those whose resource is one of its own (every name
    carries its unique prefix), or that name no resource at all."""

    source: CallSource
    prefix: str

    def all(self) -> list[dict[str, Any]]:
        return [c for c in self.source.calls()
                if c.get("resource") is None or self.prefix in json.dumps(c.get("resource"))]

    def of(self, principal: str) -> list[dict[str, Any]]:
        return [c for c in self.all() if c.get("principal") == principal]


# ---- function processes --------------------------------------------------------------------------

# The launcher: what Lambda's Python runtime does, in the smallest form. Imports
# <module>.<handler> from the task root at init, then serves invocations read from stdin; results
# go to a separate pipe so the function's own stdout (its logs) stays untouched.
LAUNCHER_SOURCE = r'''
import importlib, json, os, sys, time, traceback
results = os.fdopen(int(sys.argv[1]), "w", buffering=1)
handler_spec, timeout, function_arn = sys.argv[2], float(sys.argv[3]), sys.argv[4]
environ_at_start = dict(os.environ)


def error(exc, error_type=None):
    return {"errorType": error_type or type(exc).__name__, "errorMessage": str(exc),
            "stackTrace": traceback.format_exception(exc)}


class Context:
    def __init__(self, request_id):
        name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_name = name
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.invoked_function_arn = function_arn
        self.memory_limit_in_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
        self.aws_request_id = request_id
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME")
        self._deadline = time.monotonic() + timeout

    def get_remaining_time_in_millis(self):
        return max(0, int((self._deadline - time.monotonic()) * 1000))


module_name, _, attr = handler_spec.rpartition(".")
try:
    handler = getattr(importlib.import_module(module_name), attr)
    init_error = None
except Exception as exc:
    handler, init_error = None, error(exc, "Runtime.ImportModuleError")
results.write(json.dumps({"ready": True, "environ": environ_at_start, "init_error": init_error}) + "\n")
while True:
    line = sys.stdin.readline()
    if not line:
        break
    request = json.loads(line)
    # Set per invocation by the runtime (Tracing: Active); unsampled, so nothing is sent.
    os.environ["_X_AMZN_TRACE_ID"] = "Root=1-%08x-%s;Parent=%s;Sampled=0" % (
        int(time.time()), os.urandom(12).hex(), os.urandom(8).hex())
    if init_error is not None:
        out = {"error": init_error}
    else:
        try:
            out = {"payload": handler(request["event"], Context(request["request_id"]))}
        except Exception as exc:
            out = {"error": error(exc)}
    sys.stdout.flush()
    sys.stderr.flush()
    results.write(json.dumps(out, default=str) + "\n")
'''


@dataclass
class Invocation:
    """One invocation's outcome: the handler's return value, or a Lambda (function) error."""

    payload: Any = None
    error: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class FunctionProcess:
    """A zip function's execution environment: one warm container, invocations one at a time."""

    def __init__(self, logical_id: str, env: dict[str, str], task_root: Path, handler: str, timeout: float,
                 log_path: Path, function_arn: str) -> None:
        self.logical_id = logical_id
        self.env = env
        self.timeout = timeout
        self.log_path = log_path
        read_fd, write_fd = os.pipe()
        argv = [sys.executable, "-c", LAUNCHER_SOURCE, str(write_fd), handler, str(timeout), function_arn]
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, env=env, cwd=task_root, stdin=subprocess.PIPE, stdout=log,
                                         stderr=subprocess.STDOUT, pass_fds=(write_fd,), start_new_session=True)
        os.close(write_fd)
        self._results: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(read_fd,), daemon=True)
        self._reader.start()
        self._ready: dict[str, Any] | None = None

    def _read(self, fd: int) -> None:
        with os.fdopen(fd, encoding="utf-8") as fh:
            for line in fh:
                self._results.put(json.loads(line))
        self._results.put(None)  # the process is gone

    def _next(self, timeout: float, what: str) -> dict[str, Any]:
        try:
            item = self._results.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.logical_id}: no {what} within {timeout}s\n{self.logs()}") from None
        if item is None:
            self.proc.wait(timeout=5)
            raise AssertionError(f"{self.logical_id}: the process exited ({self.proc.returncode}) before "
                                 f"its {what}\n{self.logs()}")
        return item

    def ready(self, timeout: float = 30.0) -> dict[str, Any]:
        """The init report: the environment the process started with, and any init error."""
        if self._ready is None:
            self._ready = self._next(timeout, "init")
        return self._ready

    def invoke(self, event: dict[str, Any], timeout: float | None = None) -> Invocation:
        self.ready()
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"event": event, "request_id": str(uuid.uuid4())}) + "\n").encode())
        self.proc.stdin.flush()
        result = self._next(timeout or self.timeout, "invocation result")
        return Invocation(payload=result.get("payload"), error=result.get("error"))

    def logs(self) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return f"--- {self.logical_id} output (last 4000 chars) ---\n{text[-4000:]}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class StreamProcess:
    """The stream image's start command (uvicorn), run with the stream function's environment."""

    proc: subprocess.Popen[bytes]
    url: str
    env: dict[str, str]
    log_path: Path

    def logs(self) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""
        return f"--- StreamFunction output (last 4000 chars) ---\n{text[-4000:]}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until ``/healthz`` answers 200 (the adapter's readiness check), or raise with the output."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the stream process exited ({self.proc.returncode}) before it "
                                     f"served\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"the stream process did not answer /healthz within {timeout}s\n{self.logs()}")

    def stop(self) -> None:
        stop_processes([self.proc])


# ---- a local deployment --------------------------------------------------------------------------


def _generated_secret(props: Mapping[str, Any]) -> str:
    spec = props.get("GenerateSecretString", {})
    alphabet = string.ascii_letters + string.digits
    if not spec.get("ExcludePunctuation"):
        alphabet += "!#$%&()*+,-.:;<=>?@[]^_{|}~"
    return "".join(secrets.choice(alphabet) for _ in range(int(spec.get("PasswordLength", 32))))


@dataclass
class Deployment:
    """One test's stack on the emulator: fresh tables, queues and secrets, and its functions."""

    prefix: str
    endpoints: dict[str, str]
    physical: Physical
    template: dict[str, Any]
    workdir: Path
    stream_port: int
    record: CallSource | None
    harness_settings: Settings
    harness_session: Any
    processes: list[Any] = field(default_factory=list)

    @property
    def resolver(self) -> Resolver:
        return Resolver(self.template, self.physical)

    @property
    def region(self) -> str:
        return self.physical.region

    @property
    def account_id(self) -> str:
        return self.physical.account_id

    def function_name(self, logical_id: str) -> str:
        return str(self.physical.refs[logical_id])

    def environment(self, logical_id: str) -> dict[str, str]:
        """Exactly what the function starts with: runtime variables, endpoints, the template's."""
        props = self.template["Resources"][logical_id]["Properties"]
        home = self.workdir / "home"
        home.mkdir(exist_ok=True)
        if props.get("PackageType", "Zip") == "Zip":
            task_root = ROOT / template_function(logical_id)["CodeUri"]
            base: dict[str, str] = {}
        else:
            image_env, _, _ = image_config()
            task_root = ROOT  # the image copies the repository's lib/ and functions/ to its WORKDIR
            base = dict(image_env)
        env = {**base,
               **runtime_environment(logical_id, self.resolver, function_name=self.function_name(logical_id),
                                     task_root=task_root, home=home),
               **self.endpoints}
        env.update(template_environment(logical_id, self.resolver))  # the function's own config wins
        return env

    @property
    def calls(self) -> DeploymentCalls:
        if self.record is None:
            raise RuntimeError("this deployment records no calls: deploy(..., calls=<a fidelity proxy>)")
        return DeploymentCalls(self.record, self.prefix)

    def start(self, logical_id: str, *, drop: tuple[str, ...] = (),
              override: Mapping[str, str] | None = None) -> FunctionProcess:
        """Start a zip function's process with its template environment (``drop``/``override``:
        deliberate breakage, for the tests that show a broken environment fails at start)."""
        props = self.template["Resources"][logical_id]["Properties"]
        if props.get("PackageType", "Zip") != "Zip":
            raise ValueError(f"{logical_id} is an image: use start_stream()")
        env = self.environment(logical_id)
        missing = [name for name in drop if name not in env]
        assert not missing, f"{logical_id} has no {missing} to drop"
        for name in drop:
            del env[name]
        env.update(override or {})
        source = template_function(logical_id)
        timeout = float(self.resolver.resolve(props.get("Timeout", 3)))
        proc = FunctionProcess(logical_id, env, ROOT / source["CodeUri"], source["Handler"], timeout,
                               self.workdir / f"{logical_id}-{len(self.processes)}.log",
                               str(self.physical.attrs[(logical_id, "Arn")]))
        self.processes.append(proc)
        return proc

    def stream_environment(self) -> dict[str, str]:
        env = self.environment("StreamFunction")
        # The one deliberate change: a free port instead of 8080 (uvicorn reads PORT, the adapter
        # forwards to AWS_LWA_PORT; both are the same port, as in the image and the template).
        env["PORT"] = env["AWS_LWA_PORT"] = str(self.stream_port)
        return env

    def service_environment(self) -> dict[str, str]:
        """Exactly what the stream task's container starts with on ECS (StreamHosting=service): the
        image's ENV, what Fargate sets, the endpoints, the task definition's Environment; the
        one deliberate change is the port, as for the function."""
        image_env, _, _ = image_config()
        home = self.workdir / "home"
        home.mkdir(exist_ok=True)
        env = {**image_env, **ecs_environment(self.resolver, "StreamTaskRole", home), **self.endpoints}
        env.update(task_environment(self.resolver))
        env["PORT"] = str(self.stream_port)
        return env

    def start_stream(self, *, drop: tuple[str, ...] = (), service: bool = False) -> StreamProcess:
        """Run the image's CMD (functions/stream/Dockerfile) with the stream function's environment
        (``service``: with the ECS task definition's, StreamHosting=service)."""
        env = self.service_environment() if service else self.stream_environment()
        for name in drop:
            del env[name]
        _, cmd, _ = image_config()
        log_path = self.workdir / f"{'StreamService' if service else 'StreamFunction'}-{len(self.processes)}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        stream = StreamProcess(proc, f"http://127.0.0.1:{self.stream_port}", env, log_path)
        self.processes.append(stream)
        return stream

    # ---- the harness's own view (never attributed to a function) ----

    def client(self, service: str, principal: str = HARNESS_PRINCIPAL) -> Any:
        env_name = {"secretsmanager": "SECRETS_MANAGER"}.get(service, service.upper())
        session = boto3.session.Session(aws_access_key_id=principal, aws_secret_access_key=SECRET_ACCESS_KEY,
                                        aws_session_token=f"session-{principal}", region_name=self.region)
        return session.client(service, endpoint_url=endpoint_for(env_name, self.endpoints))

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()


def _endpoint_env(endpoints: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in endpoints.items() if k.startswith(ENDPOINT_PREFIX)}


@contextlib.contextmanager
def deploy(emulator_env: Mapping[str, str], workdir: Path | None = None, *, calls: CallSource | None = None,
           parameters: Mapping[str, Any] | None = None) -> Iterator[Deployment]:
    """Create the template's tables, queues and secrets under fresh names on the emulator
    (``calls``: the fidelity proxy ``emulator_env`` points at, to attribute calls to roles)."""
    endpoints = _endpoint_env(emulator_env)
    if not endpoints:
        raise RuntimeError("no AWS_ENDPOINT_URL* in the emulator environment: refusing to deploy to AWS")
    if endpoint_for("SECRETS_MANAGER", endpoints) is None:
        raise RuntimeError("no endpoint for Secrets Manager (AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_SECRETS_MANAGER)")
    region = emulator_env.get("AWS_DEFAULT_REGION", "us-east-1")
    prefix = f"te{uuid.uuid4().hex[:10]}"
    own_tmp = None
    if workdir is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="alfred-template-env-")
        workdir = Path(own_tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    params = parameter_values(parameters)
    template = cloudformation(params, region)
    source = load_template(TEMPLATE_PATH)["Resources"]

    session = boto3.session.Session(aws_access_key_id=HARNESS_PRINCIPAL, aws_secret_access_key=SECRET_ACCESS_KEY,
                                    aws_session_token=f"session-{HARNESS_PRINCIPAL}", region_name=region)
    ddb = session.client("dynamodb", endpoint_url=endpoint_for("DYNAMODB", endpoints))
    sqs = session.client("sqs", endpoint_url=endpoint_for("SQS", endpoints))
    sm = session.client("secretsmanager", endpoint_url=endpoint_for("SECRETS_MANAGER", endpoints))
    names = {field_name: f"{prefix}-{logical_id}" for logical_id, field_name in {**TABLES, **QUEUES}.items()}
    settings = Settings(region=region, **names)
    urls = create_resources(settings, ddb, sqs, TEMPLATE_PATH)

    refs: dict[str, Any] = {}
    attrs: dict[tuple[str, str], Any] = {}
    for logical_id, field_name in TABLES.items():
        name = getattr(settings, field_name)
        refs[logical_id] = name
        attrs[(logical_id, "Arn")] = ddb.describe_table(TableName=name)["Table"]["TableArn"]
    for logical_id, field_name in QUEUES.items():
        url = urls[logical_id]
        refs[logical_id] = url
        attrs[(logical_id, "QueueName")] = getattr(settings, field_name)
        attrs[(logical_id, "QueueUrl")] = url
        attrs[(logical_id, "Arn")] = sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    account_id = str(attrs[("JobsQueue", "Arn")]).split(":")[4]
    for logical_id, resource in source.items():
        if resource["Type"] == "AWS::SecretsManager::Secret":
            arn = sm.create_secret(Name=f"{prefix}-{logical_id}",
                                   SecretString=_generated_secret(resource.get("Properties", {})))["ARN"]
            refs[logical_id] = arn
            attrs[(logical_id, "Id")] = arn
        elif resource["Type"] == "AWS::Logs::LogGroup":
            refs[logical_id] = f"/alfred-jobs-test/{prefix}/{logical_id}"
        elif resource["Type"] == "AWS::IAM::Role":
            refs[logical_id] = f"{prefix}-{logical_id}"
            attrs[(logical_id, "Arn")] = f"arn:aws:iam::{account_id}:role/{prefix}-{logical_id}"
    stream_port = free_port()
    attrs[("StreamFunctionUrl", "FunctionUrl")] = f"http://127.0.0.1:{stream_port}/"
    for logical_id in FUNCTIONS:
        refs[logical_id] = f"{prefix}-{logical_id}"
        attrs[(logical_id, "Arn")] = f"arn:aws:lambda:{region}:{account_id}:function:{prefix}-{logical_id}"
    physical = Physical(region=region, account_id=account_id, parameters=params, refs=refs, attrs=attrs,
                        stack_name=prefix)
    deployment = Deployment(prefix=prefix, endpoints=endpoints, physical=physical, template=template,
                            workdir=workdir, stream_port=stream_port, record=calls,
                            harness_settings=settings, harness_session=session)
    try:
        yield deployment
    finally:
        deployment.stop()
        if own_tmp is not None:
            own_tmp.cleanup()


# ---- events of each trigger ----------------------------------------------------------------------


def http_api_event(method: str, path: str, *, body: Any = None, claims: Mapping[str, Any] | None = None,
                   route_key: str = "ANY /api/{proxy+}", headers: Mapping[str, str] | None = None,
                   region: str = "us-east-1", account_id: str = "123456789012") -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event, as the JWT authorizer passes it on."""
    now = time.time()
    raw = "" if body is None else (body if isinstance(body, str) else json.dumps(body))
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"accept": "application/json", "content-type": "application/json",
                    "host": f"abc123.execute-api.{region}.amazonaws.com", "user-agent": "alfred-test",
                    "x-forwarded-for": "203.0.113.10", "x-forwarded-port": "443",
                    "x-forwarded-proto": "https", **(headers or {})},
        "requestContext": {
            "accountId": account_id, "apiId": "abc123",
            "domainName": f"abc123.execute-api.{region}.amazonaws.com", "domainPrefix": "abc123",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.10",
                     "userAgent": "alfred-test"},
            "requestId": uuid.uuid4().hex[:16], "routeKey": route_key, "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": False,
    }
    if route_key.endswith("{proxy+}"):
        event["pathParameters"] = {"proxy": path.split("/api/", 1)[-1]}
    if body is not None:
        event["body"] = raw
    if claims is not None:
        # API Gateway passes every claim as a string.
        event["requestContext"]["authorizer"] = {
            "jwt": {"claims": {k: str(v) for k, v in claims.items()}, "scopes": None}}
    return event


def jwt_claims(user: str, parameters: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The claims of a token the template's JWT authorizer accepted (its issuer and audience)."""
    params = parameter_values(parameters)
    now = int(time.time())
    return {"sub": user, "iss": params["JwtIssuer"], "aud": params["JwtAudience"][0], "iat": now,
            "exp": now + 3600, "token_use": "access", "client_id": params["JwtAudience"][0]}


def sqs_event(messages: list[dict[str, Any]], queue_arn: str, region: str) -> dict[str, Any]:
    """The event the SQS event source mapping sends for ``messages`` (from ReceiveMessage)."""
    return {"Records": [{
        "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
        "attributes": m.get("Attributes", {}),
        "messageAttributes": {k: {"stringValue": v.get("StringValue"), "binaryValue": v.get("BinaryValue"),
                                  "stringListValues": [], "binaryListValues": [], "dataType": v["DataType"]}
                              for k, v in m.get("MessageAttributes", {}).items()},
        "md5OfBody": m["MD5OfBody"], "eventSource": "aws:sqs", "eventSourceARN": queue_arn, "awsRegion": region,
    } for m in messages]}


def scheduled_event(rule_arn: str, region: str, account_id: str) -> dict[str, Any]:
    """The EventBridge event of a Schedule trigger's tick."""
    return {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event", "source": "aws.events",
            "account": account_id, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "region": region, "resources": [rule_arn], "detail": {}}


@dataclass
class EventSourceMapping:
    """What Lambda's SQS poller does for the worker, with the worker's role (its principal)."""

    deployment: Deployment
    logical_id: str = "WorkerFunction"
    event_name: str = "Jobs"
    _sqs: Any = None

    def __post_init__(self) -> None:
        self._sqs = self.deployment.client("sqs", principal=self.logical_id)
        props = self.deployment.template["Resources"][f"{self.logical_id}{self.event_name}"]["Properties"]
        self.queue_arn = str(self.deployment.resolver.resolve(props["EventSourceArn"]))
        self.batch_size = int(self.deployment.resolver.resolve(props.get("BatchSize", 10)))
        self.queue_url = next(str(url) for lid, url in self.deployment.physical.refs.items()
                              if self.deployment.physical.attrs.get((lid, "Arn")) == self.queue_arn)
        # The mapping reads the queue's attributes when it is created and while it polls.
        self._sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["All"])

    def receive(self, wait_seconds: int = 10) -> list[dict[str, Any]]:
        out = self._sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=self.batch_size,
                                        WaitTimeSeconds=wait_seconds, AttributeNames=["All"],
                                        MessageAttributeNames=["All"])
        return list(out.get("Messages", []))

    def event(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        return sqs_event(messages, self.queue_arn, self.deployment.region)

    def settle(self, messages: list[dict[str, Any]], invocation: Invocation) -> list[dict[str, Any]]:
        """After an invocation: delete what succeeded (ReportBatchItemFailures), keep the rest.
        A function error keeps the whole batch. Returns the messages deleted."""
        if not invocation.ok:
            return []
        failed = {f["itemIdentifier"] for f in (invocation.payload or {}).get("batchItemFailures", [])}
        done = [m for m in messages if m["MessageId"] not in failed]
        for m in done:
            self._sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])
        return done


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll an observable condition until it holds (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
