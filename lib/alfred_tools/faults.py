"""A seeded fault injector at the AWS client layer, for chaos tests and drills.

It hooks botocore's ``before-call`` / ``after-call`` events of a client, so every adapter call
(DynamoDB and SQS, in any process: submit, worker, sweeper, stream) can be made to fail the way
AWS fails. The faults are what the application sees *after* botocore's own retries, so a rate of
0.05 means one call in twenty reaches our code as an error.

Kinds (what the caller sees, and whether the call reached the service):

    throttle   ThrottlingException / ProvisionedThroughputExceededException (400)   not sent
    5xx        InternalServerError / ServiceUnavailable (500/503)                    not sent
    timeout    ConnectTimeoutError                                                   not sent
    ambiguous  ReadTimeoutError, *after* the call was sent and succeeded             applied

The ambiguous kind is the one that matters for exactly-once reasoning: a conditional put that
landed, whose caller then retries and finds its own item (the journal's writer token), an
``ADD`` counter that was incremented, a message that was sent although the sender saw an error.

Configuration: ``ALFRED_FAULTS`` (``Settings.faults``), for example::

    ALFRED_FAULTS="seed=7;PutItem:throttle=0.1,ambiguous=0.05;SendMessage:5xx=0.1;*:timeout=0.01"

- ``;``-separated clauses; ``seed=N`` (default 0) seeds every decision;
- ``Operation:kind=rate,kind=rate`` with a botocore operation name (``PutItem``, ``UpdateItem``,
  ``GetItem``, ``BatchGetItem``, ``Query``, ``SendMessage``, ``ReceiveMessage``,
  ``DeleteMessageBatch``, ``ChangeMessageVisibility``, ...) or ``*`` for every operation; an
  operation's own rates override the ``*`` rate of the same kind;
- optional ``label=NAME`` mixes a name into the seed, so processes sharing a seed (several
  workers) do not fail in lockstep.

Decisions are reproducible: the n-th call of an operation in a process fails or not as a
function of (seed, label, operation, n) only, never of timing. With one thread per process the
whole fault schedule replays from the seed; with several threads the schedule per operation is
the same, only which thread draws the n-th call can differ.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from botocore.exceptions import ClientError, ConnectTimeoutError, ReadTimeoutError


class FaultKind(StrEnum):
    THROTTLE = "throttle"
    SERVER = "5xx"
    TIMEOUT = "timeout"
    AMBIGUOUS = "ambiguous"


KIND_ORDER = (FaultKind.THROTTLE, FaultKind.SERVER, FaultKind.TIMEOUT, FaultKind.AMBIGUOUS)
_THROTTLE_CODES = {"dynamodb": ("ProvisionedThroughputExceededException", 400),
                   "sqs": ("RequestThrottled", 400)}
_SERVER_CODES = {"dynamodb": ("InternalServerError", 500), "sqs": ("ServiceUnavailable", 503)}


class FaultSpecError(ValueError):
    """``ALFRED_FAULTS`` is not in the documented format."""


@dataclass(frozen=True)
class FaultPlan:
    """Which operations fail, how often and how; parsed from the ``ALFRED_FAULTS`` format."""

    seed: int = 0
    label: str = ""
    rules: dict[str, dict[FaultKind, float]] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> FaultPlan:
        """A plan from ``seed=7;PutItem:throttle=0.1,ambiguous=0.05;*:5xx=0.01``."""
        seed, label = 0, ""
        rules: dict[str, dict[FaultKind, float]] = {}
        for raw in spec.split(";"):
            clause = raw.strip()
            if not clause:
                continue
            if ":" not in clause:
                name, _, value = clause.partition("=")
                if name.strip() == "seed":
                    try:
                        seed = int(value)
                    except ValueError:
                        raise FaultSpecError(f"seed must be an integer: {clause!r}") from None
                elif name.strip() == "label":
                    label = value.strip()
                else:
                    raise FaultSpecError(f"expected seed=N, label=NAME or Operation:kind=rate: {clause!r}")
                continue
            op, _, kinds = clause.partition(":")
            op = op.strip()
            if not op or not (op == "*" or op.isalnum()):
                raise FaultSpecError(f"bad operation name in {clause!r}")
            rates = rules.setdefault(op, {})
            for part in kinds.split(","):
                kind_name, _, rate_text = part.partition("=")
                try:
                    kind = FaultKind(kind_name.strip())
                    rate = float(rate_text)
                except ValueError:
                    raise FaultSpecError(f"expected kind=rate with kind one of "
                                         f"{', '.join(k.value for k in KIND_ORDER)}: {part!r}") from None
                if not 0.0 <= rate <= 1.0:
                    raise FaultSpecError(f"rate must be within 0..1: {part!r}")
                rates[kind] = rate
        plan = cls(seed=seed, label=label, rules=rules)
        for op in rules:
            if sum(plan.rates(op).values()) > 1.0:
                raise FaultSpecError(f"the rates of {op} add up to more than 1")
        return plan

    def rates(self, operation: str) -> dict[FaultKind, float]:
        """The fault rates that apply to ``operation`` (its own over the ``*`` ones)."""
        return {**self.rules.get("*", {}), **self.rules.get(operation, {})}

    def describe(self) -> str:
        """The plan in the ``ALFRED_FAULTS`` format (what to paste to replay it)."""
        parts = [f"seed={self.seed}"] + ([f"label={self.label}"] if self.label else [])
        for op, rates in self.rules.items():
            parts.append(f"{op}:" + ",".join(f"{k.value}={v:g}" for k, v in rates.items()))
        return ";".join(parts)


class FaultInjector:
    """Decides, per call, whether to fail it; installs itself on boto3 clients."""

    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self.injected: Counter[tuple[str, FaultKind]] = Counter()

    def decide(self, operation: str) -> FaultKind | None:
        """The fault for the next call of ``operation`` (a pure function of seed, label, op, n)."""
        rates = self.plan.rates(operation)
        with self._lock:
            n = self._calls[operation]
            self._calls[operation] += 1
        if not rates:
            return None
        digest = hashlib.blake2b(f"{self.plan.seed}:{self.plan.label}:{operation}:{n}".encode(),
                                 digest_size=8).digest()
        draw = int.from_bytes(digest, "big") / 2**64
        edge = 0.0
        for kind in KIND_ORDER:
            edge += rates.get(kind, 0.0)
            if draw < edge:
                with self._lock:
                    self.injected[(operation, kind)] += 1
                return kind
        return None

    def install(self, client: Any) -> Any:
        """Hook this injector into a boto3 client's events; returns the client."""
        service = client.meta.service_model.service_id.hyphenize()
        events = client.meta.events
        events.register(f"before-call.{service}", self._before_call,
                        unique_id=f"alfred-faults-before-{id(self)}")
        events.register(f"after-call.{service}", self._after_call,
                        unique_id=f"alfred-faults-after-{id(self)}")
        return client

    def _before_call(self, model: Any, context: dict[str, Any], **_: Any) -> None:
        op = str(model.name)
        service = str(model.service_model.service_id.hyphenize())
        kind = self.decide(op)
        if kind is FaultKind.AMBIGUOUS:
            context["alfred_fault"] = kind  # let the call through; fail it on the way back
        elif kind is FaultKind.THROTTLE:
            code, status = _THROTTLE_CODES.get(service, ("ThrottlingException", 400))
            raise _client_error(op, code, status)
        elif kind is FaultKind.SERVER:
            code, status = _SERVER_CODES.get(service, ("InternalFailure", 500))
            raise _client_error(op, code, status)
        elif kind is FaultKind.TIMEOUT:
            raise ConnectTimeoutError(endpoint_url=f"fault-injected://{service}/{op}")

    def _after_call(self, model: Any, context: dict[str, Any], http_response: Any, **_: Any) -> None:
        if context.pop("alfred_fault", None) is FaultKind.AMBIGUOUS and http_response.status_code < 300:
            # The service applied the call; the caller never learns it did.
            raise ReadTimeoutError(endpoint_url=f"fault-injected://{model.name}")

    def summary(self) -> dict[str, int]:
        """Injected faults so far, ``{"PutItem/throttle": 3, ...}``."""
        with self._lock:
            return {f"{op}/{kind.value}": n for (op, kind), n in sorted(self.injected.items())}


def _client_error(operation: str, code: str, status: int) -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": "fault injected"},
                     "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, operation)


_INJECTORS: dict[str, FaultInjector] = {}
_INJECTORS_LOCK = threading.Lock()


def injector_for(spec: str | None) -> FaultInjector | None:
    """The process's injector for ``spec`` (one per spec, so all clients share one schedule)."""
    if not spec:
        return None
    with _INJECTORS_LOCK:
        inj = _INJECTORS.get(spec)
        if inj is None:
            inj = _INJECTORS[spec] = FaultInjector(FaultPlan.parse(spec))
        return inj


def install(client: Any, spec: str | None) -> Any:
    """Install the injector configured by ``spec`` (``Settings.faults``) on ``client``, if any."""
    inj = injector_for(spec)
    return inj.install(client) if inj is not None else client
