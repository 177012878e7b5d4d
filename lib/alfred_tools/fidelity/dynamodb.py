"""DynamoDB through the proxy: AWS's read and TTL semantics put back around moto's answers.

``_DynamoDB`` watches every write that passes (PutItem, UpdateItem, DeleteItem, BatchWriteItem,
TransactWriteItems) and records each key's versions in the store model (``store._History``),
taking the version before and after from the write's own ``ReturnValues`` where it can, else
from a consistent read of moto. An eventually consistent read (GetItem, BatchGetItem, Query, Scan,
any GSI query) is answered as of a lagged moment (``store._read_time``), the reply rewritten from
the history. A background round (``tick``) prunes the history and runs TTL: it learns each
table's TTL attribute, scans for expired items and deletes each after its own random delay.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from decimal import InvalidOperation
from typing import Any

from alfred_tools.fidelity.basics import JsonDict, _Draws
from alfred_tools.fidelity.expressions import _ExprError, _project
from alfred_tools.fidelity.spec import FAULTED_SERVICES, FidelitySpec
from alfred_tools.fidelity.store import (
    _as_queried,
    _History,
    _index_project,
    _read_time,
    _strip,
    _Table,
    _table_from_description,
    _ttl_delay,
    _ttl_expired,
    _with_keys,
)
from alfred_tools.fidelity.wire import _Call, _Reply, _rewritten, _Upstream


class _DynamoDB:
    """The proxy's DynamoDB: the tables it has seen, each key's recent versions, the TTL deletions
    it has scheduled, and the counts of stale answers and TTL deletions."""

    def __init__(self, upstream: _Upstream, draws: _Draws) -> None:
        self.upstream = upstream
        self._draws = draws
        self._history = _History()
        self._lock = threading.Lock()
        self._tables: dict[tuple[str, str], _Table] = {}
        self._known: dict[tuple[str, str], str] = {}  # (region, table) -> a principal that used it
        self._regions: dict[str, str] = {}
        self._pending: dict[str, tuple[float, _Table, JsonDict]] = {}  # TTL deletions scheduled
        self._stale: Counter[str] = Counter()
        self._stale_items = 0
        self._ttl_deleted: Counter[str] = Counter()
        self._last_discovery = 0.0

    def note_call(self, call: _Call) -> None:
        """The tables and regions callers use, with a principal to act as there (for TTL)."""
        table_name = call.payload.get("TableName") if call.service == "dynamodb" else None
        if table_name:
            with self._lock:
                self._known.setdefault((call.region, str(table_name)), call.principal)
        elif call.service == "dynamodb" and call.action in ("BatchGetItem", "BatchWriteItem"):
            with self._lock:
                for name in call.payload.get("RequestItems") or {}:
                    self._known.setdefault((call.region, str(name)), call.principal)
        if call.service in FAULTED_SERVICES:
            with self._lock:
                self._regions.setdefault(call.region, call.principal)

    def _table(self, region: str, name: str, principal: str, fetch: bool = True) -> _Table | None:
        key = (region, name)
        with self._lock:
            table = self._tables.get(key)
        if table is not None or not fetch or not name:
            return table
        status, out = self.upstream.call("dynamodb", region, principal, "DescribeTable", {"TableName": name})
        if status != 200 or "Table" not in out:
            return None
        table = _table_from_description(region, principal, out["Table"])
        with self._lock:
            return self._tables.setdefault(key, table)

    def _forget_table(self, region: str, name: str) -> None:
        with self._lock:
            self._tables.pop((region, name), None)

    def _snapshot(self, table: _Table, key: JsonDict) -> tuple[bool, JsonDict | None]:
        status, out = self.upstream.call("dynamodb", table.region, table.principal, "GetItem",
                                         {"TableName": table.name, "Key": key, "ConsistentRead": True})
        if status != 200:
            return False, None
        item = out.get("Item")
        return True, item if isinstance(item, dict) else None

    def _note_write(self, table: _Table, after: JsonDict | None, known: bool = True) -> None:
        """Tell the TTL scanner when this table may next have expired items."""
        with self._lock:
            table.note_write(after, known)

    def handle(self, call: _Call, spec: FidelitySpec) -> _Reply:
        """A DynamoDB call (not faulted before it was forwarded), with AWS's read semantics."""
        op, p = call.action, call.payload
        if op in ("PutItem", "UpdateItem", "DeleteItem"):
            return self._write_one(call, spec)
        if op in ("BatchWriteItem", "TransactWriteItems"):
            return self._write_many(call, spec)
        if spec.stale_ms > 0 and op == "BatchGetItem":
            return self._stale_batch_get(call, spec)
        if spec.stale_ms > 0 and op in ("Query", "Scan"):
            return self._stale_query(call, spec)
        reply = self.upstream.forward(call)
        if op in ("CreateTable", "DeleteTable", "UpdateTable", "UpdateTimeToLive"):
            self._forget_table(call.region, call.table)
        if reply.status == 200 and spec.stale_ms > 0 and op == "GetItem" and not p.get("ConsistentRead"):
            return self._stale_get(call, spec, reply)
        return reply

    def _at(self, spec: FidelitySpec, op: str) -> float:
        return _read_time(time.monotonic(), spec.stale_ms, self._draws.next(f"lag:{op}"))

    def _write_one(self, call: _Call, spec: FidelitySpec) -> _Reply:
        p = call.payload
        table = self._table(call.region, call.table, call.principal)
        source = p.get("Key") if call.action != "PutItem" else p.get("Item")
        key = table.key_of(source) if table is not None and isinstance(source, dict) else None
        kid = table.key_id(source) if table is not None and isinstance(source, dict) else None
        if table is None or key is None or kid is None or spec.stale_ms <= 0:
            reply = self.upstream.forward(call)
            if table is not None and reply.status == 200:
                after = p.get("Item") if call.action == "PutItem" else None
                self._note_write(table, after, known=call.action != "UpdateItem")
            return reply
        # The versions come with the write where they can: a caller that asked for no
        # ReturnValues gets ALL_OLD (Put/Delete: the version before, atomically) or ALL_NEW
        # (Update: the version after) asked for it upstream, and stripped from its answer.
        asked = p.get("ReturnValues") or "NONE"
        inject = None if asked != "NONE" else "ALL_NEW" if call.action == "UpdateItem" else "ALL_OLD"
        returns = inject or asked
        old_from_write = call.action in ("PutItem", "DeleteItem") and returns == "ALL_OLD"
        with self._history.locked([kid]):
            known, prior = self._history.latest(kid)
            if not known and not old_from_write:
                ok, prior = self._snapshot(table, key)
                if not ok:
                    return self.upstream.forward(call)
                self._history.seed(kid, prior, time.monotonic())
                known = True
            reply = self.upstream.forward(call, {**p, "ReturnValues": inject} if inject else None)
            if reply.status == 200:
                data = reply.json()
                attrs = data.get("Attributes") if isinstance(data.get("Attributes"), dict) else None
                if not known:
                    prior = attrs  # ALL_OLD of this very write
                if call.action == "PutItem":
                    after = p.get("Item")
                elif call.action == "DeleteItem":
                    after = None
                elif returns == "ALL_NEW" and attrs is not None:
                    after = attrs
                else:
                    ok, after = self._snapshot(table, key)
                    if not ok:
                        return reply
                self._history.record(kid, prior, after, time.monotonic())
                self._note_write(table, after)
                if inject:
                    data.pop("Attributes", None)
                    reply = _rewritten(reply, data)
            elif reply.status >= 500:  # it may have landed: see what is there now
                ok, after = self._snapshot(table, key)
                if ok:
                    self._history.record(kid, prior if known else after, after, time.monotonic())
                    self._note_write(table, after)
        return reply

    def _write_many(self, call: _Call, spec: FidelitySpec) -> _Reply:
        p = call.payload
        entries: list[tuple[str, JsonDict | None, bool]] = []  # (table, key source, known after)
        if call.action == "BatchWriteItem":
            for name, reqs in (p.get("RequestItems") or {}).items():
                for r in reqs or []:
                    if "PutRequest" in r:
                        entries.append((name, r["PutRequest"].get("Item"), True))
                    elif "DeleteRequest" in r:
                        entries.append((name, r["DeleteRequest"].get("Key"), True))
        else:
            for t in p.get("TransactItems") or []:
                for kind in ("Put", "Update", "Delete"):
                    if kind in t:
                        part = t[kind]
                        entries.append((part.get("TableName"), part.get("Item" if kind == "Put" else "Key"),
                                        False))
        resolved: list[tuple[_Table, JsonDict, str, JsonDict | None, bool]] = []
        for name, source, after_known in entries:
            table = self._table(call.region, str(name), call.principal)
            if table is None or not isinstance(source, dict):
                return self.upstream.forward(call)
            key, kid = table.key_of(source), table.key_id(source)
            if key is None or kid is None:
                return self.upstream.forward(call)
            resolved.append((table, key, kid, source, after_known))
        if spec.stale_ms <= 0 or not resolved:
            reply = self.upstream.forward(call)
            for table, _key, _kid, _source, _known in resolved:
                self._note_write(table, None, known=False)
            return reply
        puts = self._batch_put_sources(call)
        with self._history.locked(kid for _, _, kid, _, _ in resolved):
            priors: dict[str, JsonDict | None] = {}
            for table, key, kid, _source, _known in resolved:
                known, prior = self._history.latest(kid)
                if not known:
                    ok, prior = self._snapshot(table, key)
                    if not ok:
                        return self.upstream.forward(call)
                    self._history.seed(kid, prior, time.monotonic())
                priors[kid] = prior
            reply = self.upstream.forward(call)
            if reply.status == 200 or reply.status >= 500:
                unprocessed = self._unprocessed(reply) if reply.status == 200 else set()
                for table, key, kid, _source, after_known in resolved:
                    if kid in unprocessed:
                        continue
                    if reply.status == 200 and after_known:
                        ok, after = True, puts.get(kid)
                    else:
                        ok, after = self._snapshot(table, key)
                    if ok:
                        self._history.record(kid, priors[kid], after, time.monotonic())
                        self._note_write(table, after)
        return reply

    def _batch_put_sources(self, call: _Call) -> dict[str, JsonDict]:
        """BatchWriteItem: key id -> the item put (deleted keys are absent: None after)."""
        out: dict[str, JsonDict] = {}
        if call.action != "BatchWriteItem":
            return out
        for name, reqs in (call.payload.get("RequestItems") or {}).items():
            table = self._table(call.region, str(name), call.principal, fetch=False)
            if table is None:
                continue
            for r in reqs or []:
                item = (r.get("PutRequest") or {}).get("Item")
                kid = table.key_id(item) if isinstance(item, dict) else None
                if kid is not None and isinstance(item, dict):
                    out[kid] = item
        return out

    def _unprocessed(self, reply: _Reply) -> set[str]:
        out: set[str] = set()
        data = reply.json()
        for name, reqs in (data.get("UnprocessedItems") or {}).items():
            for region_table, table in list(self._tables.items()):
                if region_table[1] != name:
                    continue
                for r in reqs or []:
                    src = (r.get("PutRequest") or {}).get("Item") or (r.get("DeleteRequest") or {}).get("Key")
                    kid = table.key_id(src) if isinstance(src, dict) else None
                    if kid is not None:
                        out.add(kid)
        return out

    def _stale_get(self, call: _Call, spec: FidelitySpec, reply: _Reply) -> _Reply:
        p = call.payload
        table = self._table(call.region, call.table, call.principal, fetch=False)
        key = p.get("Key")
        kid = table.key_id(key) if table is not None and isinstance(key, dict) else None
        if kid is None:
            return reply
        view = self._history.view(kid, self._at(spec, "GetItem"))
        if view is None or view[1]:
            return reply
        data = reply.json()
        if view[0] is None:
            data.pop("Item", None)
        else:
            data["Item"] = _project(view[0], p)
        self._stale_count("GetItem", 1)
        return _rewritten(reply, data)

    def _stale_count(self, op: str, items: int) -> None:
        with self._lock:
            self._stale[op] += 1
            self._stale_items += items

    def _stale_batch_get(self, call: _Call, spec: FidelitySpec) -> _Reply:
        p = call.payload
        requests: dict[str, Any] = p.get("RequestItems") or {}
        tables: dict[str, _Table] = {}
        forwarded: dict[str, Any] = {}
        added: dict[str, frozenset[str]] = {}
        for name, req in requests.items():
            table = self._table(call.region, str(name), call.principal, fetch=False)
            forwarded[name] = req
            if table is None or req.get("ConsistentRead"):
                continue
            tables[name] = table
            with_keys, added[name] = _with_keys(table, req)
            if with_keys is not None:
                forwarded[name] = with_keys
        injected = any(added.values())
        reply = self.upstream.forward(call, {**p, "RequestItems": forwarded} if injected else None)
        if reply.status != 200 or not tables:
            return reply
        data = reply.json()
        responses = data.setdefault("Responses", {})
        unprocessed = data.get("UnprocessedKeys") or {}
        for name in unprocessed:  # hand back the caller's own request, not the one sent
            if name in requests:
                unprocessed[name] = {**{k: v for k, v in requests[name].items() if k != "Keys"},
                                     "Keys": unprocessed[name].get("Keys", [])}
        at = self._at(spec, "BatchGetItem")
        staled = 0
        for name, table in tables.items():
            req = requests[name]
            strip = added.get(name, frozenset())
            skip = {table.key_id(k) for k in (unprocessed.get(name) or {}).get("Keys", [])}
            current = {table.key_id(it): it for it in responses.get(name, [])}
            out: list[JsonDict] = []
            seen: set[str] = set()
            for key in req.get("Keys") or []:
                kid = table.key_id(key)
                if kid is None or kid in skip or kid in seen:
                    continue
                seen.add(kid)
                view = self._history.view(kid, at)
                if view is None or view[1]:
                    if kid in current:
                        out.append(_strip(current[kid], strip))
                    continue
                staled += 1
                if view[0] is not None:
                    out.append(_project(view[0], req))
            responses[name] = out
        if staled:
            self._stale_count("BatchGetItem", staled)
        elif not injected:
            return reply
        return _rewritten(reply, data)

    def _stale_query(self, call: _Call, spec: FidelitySpec) -> _Reply:
        p = call.payload
        table = self._table(call.region, call.table, call.principal, fetch=False)
        index = table.indexes.get(str(p.get("IndexName"))) if table is not None and p.get("IndexName") else None
        consistent = bool(p.get("ConsistentRead")) and (index is None or not index.gsi)
        if table is None or p.get("Select") == "COUNT" or consistent:
            return self.upstream.forward(call)
        with_keys, added = _with_keys(table, p)
        reply = self.upstream.forward(call, with_keys)
        if reply.status != 200:
            return reply
        data = reply.json()
        items = data.get("Items")
        if not items:
            return reply
        at = self._at(spec, call.action)
        names = p.get("ExpressionAttributeNames") or {}
        values = p.get("ExpressionAttributeValues") or {}
        conditions = [c for c in (p.get("KeyConditionExpression") if call.action == "Query" else None,
                                  p.get("FilterExpression")) if c]
        out: list[JsonDict] = []
        staled = 0
        for it in items:
            kid = table.key_id(it)
            view = self._history.view(kid, at) if kid is not None else None
            if view is None or view[1]:
                out.append(_strip(it, added))
                continue
            try:
                old = _as_queried(view[0], index, conditions, names, values)
            except (_ExprError, InvalidOperation, KeyError, TypeError, ValueError):
                out.append(_strip(it, added))  # cannot judge the older version: serve the current one
                continue
            staled += 1
            if old is not None:
                out.append(_project(_index_project(old, table, index), p))
        if not staled and not added:
            return reply
        data["Items"] = out
        if staled:
            data["Count"] = len(out)
            data["ScannedCount"] = max(int(data.get("ScannedCount", len(out))), len(out))
            self._stale_count(call.action, staled)
        return _rewritten(reply, data)

    # ---- TTL and housekeeping --------------------------------------------------------------------

    def tick(self, spec: FidelitySpec) -> None:
        """One background round: forget versions no stale read can see any more, then TTL."""
        self._history.prune(time.monotonic(), spec.stale_ms / 1000.0 + 0.05)
        self._ttl_tick(spec)

    def _ttl_tick(self, spec: FidelitySpec) -> None:
        now = time.time()
        if now - self._last_discovery >= max(spec.ttl_rescan, 1.0):
            self._last_discovery = now
            self._discover()
        with self._lock:
            known = list(self._known.items())
        for (region, name), principal in known:
            table = self._table(region, name, principal)
            if table is None:
                with self._lock:
                    self._known.pop((region, name), None)
                continue
            if not table.ttl_known:
                self._learn_ttl(table)
            if not table.ttl_attr or now - table.last_scan < spec.ttl_scan:
                continue
            if table.dirty or table.ttl_next <= now or now - table.last_scan >= spec.ttl_rescan:
                self._ttl_scan(table, spec, now)
        with self._lock:
            due = [(kid, t, key) for kid, (at, t, key) in self._pending.items() if at <= now]
            for kid, _, _ in due:
                del self._pending[kid]
        for kid, table, key in due:
            self._ttl_delete(table, key, kid, spec)

    def _discover(self) -> None:
        with self._lock:
            regions = list(self._regions.items())
        for region, principal in regions:
            start: str | None = None
            while True:
                payload: JsonDict = {"ExclusiveStartTableName": start} if start else {}
                status, out = self.upstream.call("dynamodb", region, principal, "ListTables", payload)
                if status != 200:
                    break
                with self._lock:
                    for name in out.get("TableNames") or []:
                        self._known.setdefault((region, str(name)), principal)
                start = out.get("LastEvaluatedTableName")
                if not start:
                    break

    def _learn_ttl(self, table: _Table) -> None:
        status, out = self.upstream.call("dynamodb", table.region, table.principal, "DescribeTimeToLive",
                                         {"TableName": table.name})
        if status != 200:
            return
        desc = out.get("TimeToLiveDescription") or {}
        enabled = desc.get("TimeToLiveStatus") in ("ENABLED", "ENABLING")
        with self._lock:
            table.ttl_attr = str(desc.get("AttributeName")) if enabled and desc.get("AttributeName") else None
            table.ttl_known = True
            table.dirty = True

    def _ttl_scan(self, table: _Table, spec: FidelitySpec, now: float) -> None:
        attr = table.ttl_attr
        if attr is None:
            return
        with self._lock:
            table.dirty, table.ttl_next, table.last_scan = False, float("inf"), now
        names = {"#h": table.hash, "#t": attr, **({"#r": table.range} if table.range else {})}
        payload: JsonDict = {"TableName": table.name, "ConsistentRead": True, "ExpressionAttributeNames": names,
                             "ProjectionExpression": ", ".join(names)}
        next_due = float("inf")
        while True:
            status, out = self.upstream.call("dynamodb", table.region, table.principal, "Scan", payload)
            if status != 200:
                with self._lock:
                    table.dirty = True
                return
            for item in out.get("Items") or []:
                try:
                    ttl = float((item.get(attr) or {})["N"])
                except (KeyError, TypeError, ValueError):
                    continue
                if ttl > now:
                    next_due = min(next_due, ttl)
                    continue
                if not _ttl_expired(ttl, now):
                    continue
                kid, key = table.key_id(item), table.key_of(item)
                if kid is None or key is None:
                    continue
                with self._lock:
                    if kid not in self._pending:
                        delay = _ttl_delay(spec.ttl_delay, self._draws.fixed(f"ttl:{kid}"))
                        self._pending[kid] = (now + delay, table, key)
            start = out.get("LastEvaluatedKey")
            if not start:
                break
            payload["ExclusiveStartKey"] = start
        with self._lock:
            table.ttl_next = min(table.ttl_next, next_due)

    def _ttl_delete(self, table: _Table, key: JsonDict, kid: str, spec: FidelitySpec) -> None:
        if table.ttl_attr is None:
            return
        payload = {"TableName": table.name, "Key": key, "ConditionExpression": "#t <= :now",
                   "ExpressionAttributeNames": {"#t": table.ttl_attr},
                   "ExpressionAttributeValues": {":now": {"N": repr(time.time())}}, "ReturnValues": "ALL_OLD"}
        with self._history.locked([kid]):
            known, prior = self._history.latest(kid)
            status, out = self.upstream.call("dynamodb", table.region, table.principal, "DeleteItem", payload)
            if status != 200:
                return  # gone already, or given a later expiry meanwhile
            with self._lock:
                self._ttl_deleted[table.name] += 1
            if spec.stale_ms > 0:
                old = out.get("Attributes") if isinstance(out.get("Attributes"), dict) else None
                self._history.record(kid, prior if known else old, None, time.monotonic())


    # ---- counts -----------------------------------------------------------------------------------

    def counts(self) -> JsonDict:
        with self._lock:
            return {"stale_answers": sum(self._stale.values()),
                    "stale_answers_by_operation": dict(sorted(self._stale.items())),
                    "stale_items": self._stale_items,
                    "ttl_deletions": sum(self._ttl_deleted.values()),
                    "ttl_deletions_by_table": dict(sorted(self._ttl_deleted.items())),
                    "ttl_pending": len(self._pending)}

    def reset_counts(self) -> None:
        with self._lock:
            self._stale.clear()
            self._ttl_deleted.clear()
            self._stale_items = 0

    def history_keys(self) -> int:
        return len(self._history)

    def clear_history(self) -> None:
        self._history.clear()
