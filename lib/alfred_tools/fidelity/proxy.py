"""The proxy's core: one call in, its reply out, with every semantic applied; and its control API.

``Fidelity.handle`` parses a call (``wire``), asks ``faults`` what to inject before forwarding it,
hands DynamoDB calls to ``dynamodb`` and SQS calls to ``sqs`` (anything else goes to moto as it
came), loses the answer of an ambiguous write, and records the call. ``Fidelity.control`` serves
``/_fidelity/`` (calls, script, held, config, stats). It owns the spec in force, the seeded draws
all parts share, and the thread that runs DynamoDB's background rounds (history pruning, TTL).
It knows nothing of the HTTP server that feeds it (``front``).
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from collections import deque
from typing import Any

import urllib3

from alfred_tools.fidelity.basics import JsonDict, _Draws
from alfred_tools.fidelity.dynamodb import _DynamoDB
from alfred_tools.fidelity.faults import _error_reply, _Faults, _Rule
from alfred_tools.fidelity.spec import FAULTED_SERVICES, FidelitySpec
from alfred_tools.fidelity.sqs import _Sqs
from alfred_tools.fidelity.wire import _Call, _parse_call, _Reply, _resource, _Upstream


class Fidelity:
    """The semantics, independent of the HTTP server that feeds it."""

    def __init__(self, upstream: str, spec: FidelitySpec, calls_max: int = 200_000) -> None:
        self.upstream = _Upstream(upstream)
        self.spec = spec
        self._draws = _Draws(spec.seed)
        self.faults = _Faults(self._draws)
        self.dynamodb = _DynamoDB(self.upstream, self._draws)
        self.sqs = _Sqs(self.upstream, self._draws, self.faults)
        self._lock = threading.Lock()
        self._calls: deque[JsonDict] = deque(maxlen=calls_max)
        self._total_calls = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._background, name="fidelity-ttl", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    # ---- entry point ---------------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> _Reply:
        call = _parse_call(method, path, headers, body)
        spec = self.spec
        self.dynamodb.note_call(call)
        fault = self.faults._pre_fault(call, spec) if call.service in FAULTED_SERVICES and call.payload else None
        try:
            if fault == "hold":
                reply = self.faults._hold(call)
            elif fault in ("throttle", "5xx"):
                reply = _error_reply(call.service, str(fault), self._draws.next("variant"))
            elif call.service == "dynamodb" and call.payload:
                reply = self.dynamodb.handle(call, spec)
            elif call.service == "sqs" and call.payload:
                reply = self.sqs.handle(call, spec, fault)
            else:
                reply = self.upstream.forward(call)
            if fault == "ambiguous":
                reply = self.faults._lost_answer(call, spec)
        except urllib3.exceptions.HTTPError as exc:
            reply = _Reply(502, [("Content-Type", "text/plain")], f"upstream: {type(exc).__name__}".encode())
        except Exception as exc:  # a bug here: say so loudly, answer something botocore retries
            traceback.print_exc()
            reply = _Reply(500, [("Content-Type", "text/plain")], f"fidelity proxy: {exc!r}".encode())
        self._record(call, reply, fault)
        return reply

    def _record(self, call: _Call, reply: _Reply, fault: str | None) -> None:
        entry: JsonDict = {"principal": call.principal, "service": call.service, "action": call.action,
                           "resource": _resource(call), "status": 0 if reply.close else reply.status,
                           "fault": fault}
        if call.payload.get("IndexName"):
            entry["index"] = call.payload["IndexName"]
        with self._lock:
            self._calls.append(entry)
            self._total_calls += 1

    # ---- housekeeping ----------------------------------------------------------------------------

    def _background(self) -> None:
        last_error, last_report = "", 0.0
        while not self._stopping.wait(0.1):
            try:
                spec = self.spec
                self.dynamodb.tick(spec)
            except Exception as exc:  # keep the thread alive whatever one round hit
                message = f"{type(exc).__name__}: {exc}"
                if message != last_error or time.monotonic() - last_report > 30:
                    sys.stderr.write(f"fidelity: background round failed: {message}\n")
                    last_error, last_report = message, time.monotonic()

    # ---- control API -----------------------------------------------------------------------------

    def control(self, method: str, path: str, body: bytes) -> _Reply:
        """The control API (JSON):

        - ``GET /_fidelity/health`` -> ``{"ok": true}``
        - ``GET /_fidelity/calls`` -> ``[{"principal", "service", "action", "resource", "status",
          "fault"[, "index"]}, ...]`` in order (status 0: connection closed);
          ``POST /_fidelity/calls/reset`` (or ``DELETE /_fidelity/calls``) empties it
        - ``POST /_fidelity/script`` with a rule or a list of rules ``{"fault", "action", "table",
          "queue_url_contains", "principal", "expression_contains", "times": 1, "skip": 0}`` appends
          them; ``GET`` lists the active ones, ``DELETE`` clears them (and lets held calls go)
        - ``GET /_fidelity/held``: the calls a ``hold`` rule stopped; ``POST /_fidelity/held/release``
          lets them (and any later one) go, their connections closed, never forwarded
        - ``POST /_fidelity/config`` with ``{"spec": "...", "replace": false}`` (or the spec as
          text) applies clauses over the current spec; ``GET`` -> ``{"spec": ...}``
        - ``GET /_fidelity/stats``; ``POST /_fidelity/stats/reset``
        """
        route = path.split("?", 1)[0].rstrip("/")
        try:
            if route == "/_fidelity/health":
                return _control_reply(200, {"ok": True})
            if route == "/_fidelity/calls":
                if method == "DELETE":
                    return self._reset_calls()
                with self._lock:
                    return _control_reply(200, list(self._calls))
            if route == "/_fidelity/calls/reset" and method == "POST":
                return self._reset_calls()
            if route == "/_fidelity/script":
                if method == "POST":
                    data = json.loads(body or b"[]")
                    self.faults.script([_Rule.from_json(r) for r in (data if isinstance(data, list) else [data])])
                if method == "DELETE":
                    self.faults.clear_script()
                return _control_reply(200, self.faults.active())
            if route == "/_fidelity/held":
                return _control_reply(200, self.faults.held())
            if route == "/_fidelity/held/release" and method == "POST":
                self.faults.release_held()
                return _control_reply(200, {"ok": True})
            if route == "/_fidelity/config":
                if method == "POST":
                    self._configure(body)
                return _control_reply(200, {"spec": self.spec.describe()})
            if route == "/_fidelity/stats":
                return _control_reply(200, self.stats())
            if route == "/_fidelity/stats/reset" and method == "POST":
                with self._lock:
                    self._total_calls = 0
                self.faults.reset_counts()
                self.dynamodb.reset_counts()
                self.sqs.reset_counts()
                return _control_reply(200, self.stats())
        except (ValueError, TypeError) as exc:
            return _control_reply(400, {"error": str(exc)})
        return _control_reply(404, {"error": f"no control endpoint {method} {route}"})

    def _reset_calls(self) -> _Reply:
        with self._lock:
            self._calls.clear()
        return _control_reply(200, {"ok": True})

    def _configure(self, body: bytes) -> None:
        text, replace_all = body.decode().strip(), False
        if text.startswith(("{", '"')):
            data = json.loads(text)
            if isinstance(data, dict):
                text, replace_all = str(data.get("spec", "")), bool(data.get("replace", False))
            else:
                text = str(data)
        old = self.spec
        new = FidelitySpec.parse(text, None if replace_all else old)
        if new.seed != old.seed:
            self._draws.reseed(new.seed)
        if new.stale_ms <= 0 < old.stale_ms:
            self.dynamodb.clear_history()
        self.spec = new

    def stats(self) -> JsonDict:
        """Counts since start (or the last stats reset); see the control API in the module doc."""
        with self._lock:
            calls = self._total_calls
        return {"calls": calls, **self.faults.counts(), **self.dynamodb.counts(), **self.sqs.counts(),
                "history_keys": self.dynamodb.history_keys(), "spec": self.spec.describe()}


def _control_reply(status: int, data: Any) -> _Reply:
    return _Reply(status, [("Content-Type", "application/json")], json.dumps(data).encode())
