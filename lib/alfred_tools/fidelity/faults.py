"""The faults the proxy injects: random ones drawn against the spec, and scripted ones.

Before a call is forwarded (``_Faults._pre_fault``): a scripted rule that matches it (``_Rule``,
posted to ``/_fidelity/script``: exact, counted by ``times`` and ``skip``), else a random fault at
the spec's rates (``spec._random_fault``), at most ``MAX_RANDOM_FAULTS`` per request so botocore's
retries settle. A throttle or 5xx is answered here in the service's own error shape
(``_error_reply``), a ``hold`` waits for the test to release it (``_hold``), an ambiguous write is
forwarded and then its answer lost (``_lost_answer``). These are the server-side faults of the
faithful proxy; ``alfred_tools.faults`` is the other injector, at the boto3 client.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

from alfred_tools.fidelity.basics import JsonDict, _Draws, _Lru
from alfred_tools.fidelity.spec import MAX_RANDOM_FAULTS, FidelitySpec, _random_fault
from alfred_tools.fidelity.wire import _Call, _json_reply, _Reply, _resource

# (__type, status, message, x-amzn-query-error or None); one is picked per fault
_ERRORS: dict[tuple[str, str], list[tuple[str, int, str, str | None]]] = {
    ("dynamodb", "throttle"): [
        ("com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException", 400,
         "The level of configured provisioned throughput for the table was exceeded. Consider increasing "
         "your provisioning level with the UpdateTable API.", None),
        ("com.amazon.coral.availability#ThrottlingException", 400,
         "Rate of requests exceeds the allowed throughput.", None)],
    ("dynamodb", "5xx"): [("com.amazonaws.dynamodb.v20120810#InternalServerError", 500,
                           "Internal server error", None)],
    ("sqs", "throttle"): [
        ("com.amazonaws.sqs#RequestThrottled", 400, "Request is throttled.", "RequestThrottled;Sender"),
        ("com.amazonaws.sqs#ThrottlingException", 400, "Rate exceeded", None)],
    ("sqs", "5xx"): [
        ("com.amazonaws.sqs#InternalError", 500, "We encountered an internal error. Please try again.",
         "InternalError;Receiver"),
        ("com.amazonaws.sqs#ServiceUnavailable", 503, "Service is unavailable. Please try again.",
         "ServiceUnavailable;Receiver")],
}


def _error_reply(service: str, kind: str, draw: float) -> _Reply:
    choices = _ERRORS[(service, kind)]
    error_type, status, message, query_error = choices[min(int(draw * len(choices)), len(choices) - 1)]
    extra = [("x-amzn-ErrorType", error_type.rpartition("#")[2])]
    if query_error:
        extra.append(("x-amzn-query-error", query_error))
    return _json_reply(status, {"__type": error_type, "message": message}, service, extra)


SCRIPT_FAULTS = frozenset({"ambiguous", "throttle", "5xx", "lost_delete", "duplicate", "hold"})
_PRE_FAULTS = frozenset({"ambiguous", "throttle", "5xx", "lost_delete", "hold"})
HOLD_SECONDS = 120.0  # the longest a held call waits for its release


@dataclass
class _Rule:
    fault: str
    action: str | None = None
    table: str | None = None
    queue_url_contains: str | None = None
    principal: str | None = None
    times: int = 1
    skip: int = 0
    # Only calls whose UpdateExpression contains this text (e.g. the gate's ``REMOVE m.``).
    expression_contains: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> _Rule:
        if not isinstance(data, dict):
            raise ValueError("a rule is a JSON object")
        unknown = set(data) - {"fault", "action", "table", "queue_url_contains", "principal", "times", "skip",
                               "expression_contains"}
        if unknown:
            raise ValueError(f"unknown rule fields: {sorted(unknown)}")
        fault = str(data.get("fault", ""))
        if fault not in SCRIPT_FAULTS:
            raise ValueError(f"fault must be one of {sorted(SCRIPT_FAULTS)}, not {fault!r}")
        rule = cls(fault=fault, action=data.get("action"), table=data.get("table"),
                   queue_url_contains=data.get("queue_url_contains"), principal=data.get("principal"),
                   times=int(data.get("times", 1)), skip=int(data.get("skip", 0)),
                   expression_contains=data.get("expression_contains"))
        if fault == "duplicate" and rule.action not in (None, "ReceiveMessage"):
            raise ValueError("duplicate applies to ReceiveMessage")
        if fault == "lost_delete" and rule.action not in (None, "DeleteMessage", "DeleteMessageBatch"):
            raise ValueError("lost_delete applies to DeleteMessage / DeleteMessageBatch")
        if rule.times < 0 or rule.skip < 0:
            raise ValueError("times and skip must not be negative")
        return rule

    def matches(self, call: _Call, exempt: frozenset[str]) -> bool:
        if self.times <= 0:
            return False
        if self.principal is not None:
            if call.principal != self.principal:
                return False
        elif call.principal in exempt:
            return False
        if self.action is not None and call.action != self.action:
            return False
        if self.fault == "duplicate" and call.action != "ReceiveMessage":
            return False
        if self.fault == "lost_delete" and call.action not in ("DeleteMessage", "DeleteMessageBatch"):
            return False
        if self.table is not None:
            res = _resource(call)
            if not (res == self.table or (isinstance(res, list) and self.table in res)):
                return False
        if (self.expression_contains is not None
                and self.expression_contains not in str(call.payload.get("UpdateExpression", ""))):
            return False
        return self.queue_url_contains is None or self.queue_url_contains in str(call.payload.get("QueueUrl", ""))

    def to_json(self) -> JsonDict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class _Faults:
    """What is injected before a call is forwarded (and the answers lost after it was applied),
    the rules scripted over the control API, the calls a ``hold`` stopped, and the counts."""

    def __init__(self, draws: _Draws) -> None:
        self._draws = draws
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._held: list[JsonDict] = []  # calls a "hold" rule stopped, in order
        self._release = threading.Event()
        self._faulted = _Lru(50_000)  # invocation id -> random faults injected
        self._injected: Counter[tuple[str, str]] = Counter()

    def _pre_fault(self, call: _Call, spec: FidelitySpec) -> str | None:
        """The fault for this call before it is forwarded: scripted first, then random."""
        scripted = self._scripted(call, spec, _PRE_FAULTS)
        if scripted is not None:
            self._count(scripted, call.action)
            if scripted != "lost_delete":  # scripted failures count toward the random bound too
                with self._lock:
                    self._faulted.put(call.invocation, self._faulted.get(call.invocation, 0) + 1)
            return scripted
        if call.principal in spec.exempt:
            return None
        op = call.action
        with self._lock:
            if self._faulted.get(call.invocation, 0) >= MAX_RANDOM_FAULTS:
                return None
        kind = _random_fault(spec, op, self._draws.next(f"fault:{op}"))
        if kind is None:
            return None
        if kind != "lost_delete":
            with self._lock:
                self._faulted.put(call.invocation, self._faulted.get(call.invocation, 0) + 1)
        self._count(kind, op)
        return kind

    def _scripted(self, call: _Call, spec: FidelitySpec, kinds: frozenset[str]) -> str | None:
        with self._lock:
            for rule in self._rules:
                if rule.fault not in kinds or not rule.matches(call, spec.exempt):
                    continue
                if rule.skip > 0:
                    rule.skip -= 1
                    continue
                rule.times -= 1
                return rule.fault
        return None

    def _count(self, kind: str, op: str, n: int = 1) -> None:
        with self._lock:
            self._injected[(kind, op)] += n

    def _hold(self, call: _Call) -> _Reply:
        """A scripted ``hold``: the call is never forwarded; it waits (listed under ``/_fidelity/held``)
        until the test releases it (or ``HOLD_SECONDS``), then its connection is closed. Tests use
        it to stop a process at an exact call and kill it there."""
        with self._lock:
            self._held.append({"principal": call.principal, "action": call.action, "resource": _resource(call),
                               "expression": call.payload.get("UpdateExpression")})
        self._release.wait(HOLD_SECONDS)
        return _Reply(0, [], b"", close=True)

    def _lost_answer(self, call: _Call, spec: FidelitySpec) -> _Reply:
        """The request was applied; its answer never reaches the caller."""
        if self._draws.next("close") < spec.ambiguous_close:
            return _Reply(0, [], b"", close=True)
        if call.service == "dynamodb":
            return _error_reply("dynamodb", "5xx", 0.0)
        return _error_reply("sqs", "5xx", 0.0)

    # ---- the script (control API) ------------------------------------------------------------------

    def script(self, rules: list[_Rule]) -> None:
        with self._lock:
            self._rules.extend(rules)

    def clear_script(self) -> None:
        with self._lock:
            self._rules.clear()
            self._held.clear()
        self._release.set()  # nothing stays held once the script is cleared
        self._release = threading.Event()

    def active(self) -> list[JsonDict]:
        """The rules still to fire (spent ones are dropped)."""
        with self._lock:
            self._rules = [r for r in self._rules if r.times > 0]
            return [r.to_json() for r in self._rules]

    def held(self) -> list[JsonDict]:
        with self._lock:
            return list(self._held)

    def release_held(self) -> None:
        self._release.set()  # every held call, now and later, until cleared

    def counts(self) -> JsonDict:
        with self._lock:
            return {"injected": {f"{kind}/{op}": n for (kind, op), n in sorted(self._injected.items())},
                    "injected_total": sum(self._injected.values())}

    def reset_counts(self) -> None:
        with self._lock:
            self._injected.clear()
