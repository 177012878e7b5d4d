"""Counting AWS requests where they are made: botocore event handlers on every client.

Two ways in:

- ``RequestCounter.attach(client)`` registers the handlers on one client (the bench process's own
  clients);
- ``install_process_wide(counter)`` adds them to botocore's built-in handler list, so every
  session, and so every client the process builds later (the worker's, the stream server's), gets
  them. No module of the system is patched: this is botocore's own extension list.

Per call the counter keeps the operation (``dynamodb.PutItem``), the table or queue it hit, and an
estimate of DynamoDB capacity units (write units from the item size, read units from the keys
read or the bytes returned), which is what the cost model prices. Read units are also kept by
target and consistency (``rru_by_target``: ``"dynamodb.GetItem <table> eventual"``), because an
eventually consistent read costs half a strongly consistent one and DynamoDB's default is
eventual: the request's ``ConsistentRead`` says which (a GSI query is always eventual). Write units
are kept by target too (``wru_by_target``), so the bill can set apart the agent's own tables and
the event log. ``ReceiveMessage`` calls that
returned nothing are counted apart (``sqs.ReceiveMessage(empty)``): they are the idle polling of
an event source mapping, a fixed cost per queue, not a cost per job.

Optionally it records a *trace*: the API parameters of every call, in order, so the floor
throughput scenario can replay exactly the calls one job made, without our code. And optionally
*marks* (``marks=True``; the processes take it from ``ALFRED_BENCH_MARKS``): for every event item
(``job_id``, ``seq``, ``type``) the wall-clock time its PutItem returned (``written``) and the
time a read first returned it (``read``), which is how the first-token scenario splits its path
into phases across processes (one machine, one clock).
"""

from __future__ import annotations

import copy
import json
import math
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

WRITE_UNIT_BYTES = 1024
READ_UNIT_BYTES = 4096
EMPTY_RECEIVE = "sqs.ReceiveMessage(empty)"


def attr_size(value: dict[str, Any]) -> int:
    """Approximate stored size of one DynamoDB attribute value (AWS's item-size rules, roughly)."""
    (kind, v), = value.items()
    if kind in ("S", "B"):
        return len(v.encode() if isinstance(v, str) else v)
    if kind == "N":
        return len(str(v).lstrip("-").replace(".", "")) // 2 + 1
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "M":
        return 3 + sum(len(k) + attr_size(x) for k, x in v.items())
    if kind == "L":
        return 3 + sum(1 + attr_size(x) for x in v)
    if kind in ("SS", "NS", "BS"):
        return sum(len(str(x)) for x in v)
    return 1


def item_size(item: dict[str, Any]) -> int:
    return sum(len(k) + attr_size(v) for k, v in item.items())


def write_units(item: dict[str, Any]) -> int:
    return max(1, math.ceil(item_size(item) / WRITE_UNIT_BYTES))


class RequestCounter:
    """Counts API calls by operation and target, and the DynamoDB capacity units they consume."""

    def __init__(self, trace: bool = False, marks: bool = False) -> None:
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.by_target: Counter[str] = Counter()
        self.wru: Counter[str] = Counter()  # write request units by operation
        self.rru: Counter[str] = Counter()  # read units by operation, each read counted as a full unit
        self.wru_by_target: Counter[str] = Counter()  # "op target" → write units
        self.rru_by_target: Counter[str] = Counter()  # "op target strong|eventual" → full read units
        self.tracing = trace
        self.trace: list[dict[str, Any]] = []
        self.marking = marks
        self.marks: dict[str, dict[str, Any]] = {}  # "job_id#seq" → {"type", "written", "read"}
        # with marks: every call as (op, returned, started, target, thread), wall-clock seconds
        self.timeline: list[tuple[str, float, float, str, str]] = []

    # ---- botocore handlers ----------------------------------------------------------------

    def _on_params(self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        context["bench_params"] = copy.deepcopy(params)
        context["bench_started"] = time.time()

    def _on_after_call(self, model: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        service = model.service_model.endpoint_prefix
        op = f"{service}.{model.name}"
        params: dict[str, Any] = context.get("bench_params") or {}
        if op == "sqs.ReceiveMessage" and not parsed.get("Messages"):
            op = EMPTY_RECEIVE
        # a batch names its tables in RequestItems (ours read or write one table a call)
        batch_tables = list(params.get("RequestItems", {}))
        target = str(params.get("TableName") or params.get("QueueUrl", "").rsplit("/", 1)[-1]
                     or (batch_tables[0] if batch_tables else ""))
        wru, rru = _units(model.name, params, parsed) if service == "dynamodb" else (0, 0)
        consistency = "strong" if _consistent(model.name, params) else "eventual"
        if self.marking:
            now = time.time()
            started = float(context.get("bench_started") or now)
            with self.lock:
                self.timeline.append((op, round(now, 4), round(started, 4), target,
                                      threading.current_thread().name))
            if service == "dynamodb":
                self._mark(model.name, params, parsed, now)
        with self.lock:
            self.calls[op] += 1
            if target:
                self.by_target[f"{op} {target}"] += 1
            if wru:
                self.wru[op] += wru
                self.wru_by_target[f"{op} {target}"] += wru
            if rru:
                self.rru[op] += rru
                self.rru_by_target[f"{op} {target} {consistency}"] += rru
            if self.tracing and op != EMPTY_RECEIVE:
                self.trace.append({"service": service, "op": model.name, "params": params})

    def _mark(self, op: str, params: dict[str, Any], parsed: dict[str, Any], now: float) -> None:
        """When an event item was written (its put returned) and first read back (a read returned it)."""
        if op == "PutItem":
            items, what = [params.get("Item") or {}], "written"
        elif op == "GetItem":
            items, what = [parsed.get("Item") or {}], "read"
        elif op == "BatchGetItem":
            items, what = [i for got in parsed.get("Responses", {}).values() for i in got], "read"
        else:
            return
        with self.lock:
            for item in items:
                if not {"job_id", "seq", "type"} <= item.keys():
                    continue  # not an event
                key = f"{item['job_id'].get('S')}#{item['seq'].get('N')}"
                mark = self.marks.setdefault(key, {"type": item["type"].get("S")})
                mark.setdefault(what, now)

    def handlers(self) -> list[tuple[str, Any]]:
        return [("provide-client-params", self._on_params), ("after-call", self._on_after_call)]

    def attach(self, client: Any) -> Any:
        """Count the calls of one client; returns the client."""
        for event, handler in self.handlers():
            client.meta.events.register(event, handler)
        return client

    # ---- reading it -------------------------------------------------------------------------

    def snapshot(self, reset: bool = False) -> dict[str, Any]:
        """Everything counted so far, as plain JSON."""
        with self.lock:
            out = {"calls": dict(self.calls), "by_target": dict(self.by_target), "wru": dict(self.wru),
                   "rru": dict(self.rru), "wru_by_target": dict(self.wru_by_target),
                   "rru_by_target": dict(self.rru_by_target), "trace": list(self.trace),
                   "marks": {k: dict(v) for k, v in self.marks.items()}, "timeline": list(self.timeline)}
            if reset:
                self.reset_locked()
        return out

    def reset(self) -> None:
        with self.lock:
            self.reset_locked()

    def reset_locked(self) -> None:
        self.calls.clear()
        self.by_target.clear()
        self.wru.clear()
        self.rru.clear()
        self.wru_by_target.clear()
        self.rru_by_target.clear()
        self.trace.clear()
        self.marks.clear()
        self.timeline.clear()


def _units(op: str, params: dict[str, Any], parsed: dict[str, Any]) -> tuple[int, int]:
    """(write units, read units) of one DynamoDB call, estimated from what it sent and got back.

    UpdateItem and DeleteItem are charged on the stored item's size, which the request does not
    carry; our job records are well under 1 KB, so they count as 1 unit (stated in the output).
    """
    if op == "PutItem":
        return write_units(params.get("Item", {})), 0
    if op in ("UpdateItem", "DeleteItem"):
        return 1, 0
    if op == "BatchWriteItem":
        return sum(write_units(r["PutRequest"]["Item"]) if "PutRequest" in r else 1
                   for reqs in params.get("RequestItems", {}).values() for r in reqs), 0
    if op == "GetItem":
        item = parsed.get("Item") or {}
        return 0, max(1, math.ceil(item_size(item) / READ_UNIT_BYTES))
    if op == "BatchGetItem":
        # Every key asked for is a read, found or not.
        return 0, sum(len(spec.get("Keys", [])) for spec in params.get("RequestItems", {}).values())
    if op in ("Query", "Scan"):
        size = sum(item_size(i) for i in parsed.get("Items", []))
        return 0, max(1, math.ceil(size / READ_UNIT_BYTES))
    return 0, 0


def _consistent(op: str, params: dict[str, Any]) -> bool:
    """Whether a read was strongly consistent: ``ConsistentRead`` true, never on a GSI (always eventual).

    DynamoDB's default is eventually consistent; a BatchGetItem sets it per table (strong if any
    table of the call asks for it: our batches read one table).
    """
    if op == "BatchGetItem":
        return any(spec.get("ConsistentRead") for spec in params.get("RequestItems", {}).values())
    if op in ("Query", "Scan") and params.get("IndexName"):
        return False
    return bool(params.get("ConsistentRead"))


def install_process_wide(counter: RequestCounter) -> None:
    """Attach ``counter`` to every botocore session (and so every client) built from now on."""
    from botocore import handlers

    for event, handler in counter.handlers():
        handlers.BUILTIN_HANDLERS.append((event, handler))


_dumps = 0  # snapshots written by this process: a reader waits for the number to move, not the clock


def dump(counter: RequestCounter, path: str | os.PathLike[str], reset: bool = True) -> None:
    """Write a snapshot atomically (the reader never sees half a file)."""
    target = Path(path)
    tmp = target.with_suffix(target.suffix + ".tmp")
    global _dumps
    _dumps += 1
    tmp.write_text(json.dumps({**counter.snapshot(reset=reset), "dump": _dumps}), encoding="utf-8")
    tmp.replace(target)


def merge(*snapshots: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Sum the calls / wru / rru / by_target (and the units by target) of several snapshots."""
    out: dict[str, dict[str, float]] = {"calls": {}, "wru": {}, "rru": {}, "by_target": {},
                                        "wru_by_target": {}, "rru_by_target": {}}
    for snap in snapshots:
        for key in out:
            for op, n in snap.get(key, {}).items():
                out[key][op] = out[key].get(op, 0) + n
    return out
