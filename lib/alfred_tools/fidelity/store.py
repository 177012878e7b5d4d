"""DynamoDB's semantics that moto lacks, as a model of tables, keys and item versions.

No HTTP here: the proxy (``dynamodb.py``) feeds this model the writes that pass through it and
asks it what a read would see; an in-process simulator can use it the same way.

- Tables and keys: ``_Table`` (key schema, indexes, what the TTL scanner knows of it), built from
  a DescribeTable answer by ``_table_from_description``; ``_Table.key_id`` names an item's key
  (numbers normalized, so ``1`` and ``1.0`` are one key).
- Version history: ``_History`` keeps, per key, the versions seen with the time each appeared.
- Eventually consistent reads: ``_read_time`` is the moment a read with a lag drawn in
  [0, stale_ms] sees the table as of, ``_History.view`` the version it answers then, and
  ``_as_queried`` that version as a Query/Scan would return it (still in the index and still
  matching); ``_with_keys`` / ``_strip`` / ``_index_project`` cut items to a request's projection.
- TTL deletes late: ``_ttl_expired`` says an item is due, ``_ttl_delay`` how late its deletion
  comes, ``_Table.note_write`` when to look for expired items next.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from alfred_tools.fidelity.basics import JsonDict
from alfred_tools.fidelity.expressions import _evaluate, _ExprError, _Parser

# ---- DynamoDB tables and keys ------------------------------------------------------------------


@dataclass
class _Index:
    hash: str
    range: str | None
    projection: str
    include: frozenset[str]
    gsi: bool


@dataclass
class _Table:
    region: str
    name: str
    principal: str
    hash: str
    range: str | None
    indexes: dict[str, _Index]
    ttl_attr: str | None = None
    ttl_known: bool = False
    ttl_next: float = 0.0  # earliest TTL deadline known (epoch seconds); 0 means scan soon
    dirty: bool = True  # written since the last scan with an unknown TTL value
    last_scan: float = 0.0

    def key_of(self, item: Mapping[str, Any]) -> JsonDict | None:
        names = [self.hash] + ([self.range] if self.range else [])
        if not all(n in item for n in names):
            return None
        return {n: item[n] for n in names}

    def key_id(self, item: Mapping[str, Any]) -> str | None:
        key = self.key_of(item)
        if key is None:
            return None
        parts = []
        for name in sorted(key):
            value = key[name]
            typ, raw = next(iter(value.items())) if isinstance(value, dict) and value else ("?", value)
            parts.append(f"{name}={typ}:{_norm_number(raw) if typ == 'N' else raw}")
        return f"{self.region}\x00{self.name}\x00" + "\x00".join(parts)

    def note_write(self, after: JsonDict | None, known: bool = True) -> None:
        """A write of an item of this table, ``after`` it the item (or None: deleted) if ``known``:
        when the TTL scanner may next find expired items here (``ttl_next``), or that it must
        look again (``dirty``). The caller holds whatever lock guards the table."""
        if not known:
            self.dirty = True
        elif after is not None and self.ttl_attr and "N" in (after.get(self.ttl_attr) or {}):
            try:
                self.ttl_next = min(self.ttl_next or float("inf"), float(after[self.ttl_attr]["N"]))
            except ValueError:
                pass
        elif after is not None and not self.ttl_known:
            self.dirty = True


def _norm_number(raw: Any) -> str:
    try:
        return str(Decimal(str(raw)).normalize())
    except InvalidOperation:
        return str(raw)


def _key_schema(schema: list[JsonDict]) -> tuple[str, str | None]:
    hash_key = next(str(k["AttributeName"]) for k in schema if k["KeyType"] == "HASH")
    range_key = next((str(k["AttributeName"]) for k in schema if k["KeyType"] == "RANGE"), None)
    return hash_key, range_key


def _table_from_description(region: str, principal: str, desc: JsonDict) -> _Table:
    h, r = _key_schema(desc["KeySchema"])
    indexes: dict[str, _Index] = {}
    for gsi, group in ((True, "GlobalSecondaryIndexes"), (False, "LocalSecondaryIndexes")):
        for ix in desc.get(group) or []:
            ih, ir = _key_schema(ix["KeySchema"])
            proj = ix.get("Projection") or {}
            indexes[str(ix["IndexName"])] = _Index(ih, ir, str(proj.get("ProjectionType", "ALL")),
                                                   frozenset(proj.get("NonKeyAttributes") or []), gsi)
    return _Table(region, str(desc["TableName"]), principal, h, r, indexes)


# ---- the version history -----------------------------------------------------------------------

Version = tuple[float, JsonDict | None]


class _History:
    """Per (region, table, key): the versions seen, oldest first, with the time each appeared."""

    STRIPES = 512

    def __init__(self) -> None:
        self._versions: dict[str, list[Version]] = {}
        self._lock = threading.Lock()
        self._stripes = [threading.Lock() for _ in range(self.STRIPES)]
        self._touched: deque[tuple[float, str]] = deque()

    @contextmanager
    def locked(self, keys: Iterable[str]) -> Iterator[None]:
        """Hold the keys' locks (striped, taken in order) across a write and its snapshots."""
        stripes = sorted({hash(k) % self.STRIPES for k in keys})
        for i in stripes:
            self._stripes[i].acquire()
        try:
            yield
        finally:
            for i in reversed(stripes):
                self._stripes[i].release()

    def latest(self, key: str) -> tuple[bool, JsonDict | None]:
        with self._lock:
            versions = self._versions.get(key)
            return (True, versions[-1][1]) if versions else (False, None)

    def seed(self, key: str, item: JsonDict | None, now: float) -> None:
        """The version before the first write seen: older than any window."""
        with self._lock:
            if key not in self._versions:
                self._versions[key] = [(0.0, item)]
                self._touched.append((now, key))

    def record(self, key: str, prior: JsonDict | None, after: JsonDict | None, now: float) -> None:
        with self._lock:
            self._versions.setdefault(key, [(0.0, prior)]).append((now, after))
            self._touched.append((now, key))

    def view(self, key: str, at: float) -> tuple[JsonDict | None, bool] | None:
        """The version visible at ``at`` and whether it is the newest; None without history."""
        with self._lock:
            versions = self._versions.get(key)
            if not versions:
                return None
            for i in range(len(versions) - 1, -1, -1):
                if versions[i][0] <= at:
                    return versions[i][1], i == len(versions) - 1
            return versions[0][1], len(versions) == 1

    def prune(self, now: float, window: float) -> None:
        """Forget versions older than the window (keeping the newest of those) and idle keys."""
        cutoff = now - window
        with self._lock:
            while self._touched and self._touched[0][0] < cutoff:
                _, key = self._touched.popleft()
                versions = self._versions.get(key)
                if not versions:
                    continue
                keep = 0
                for i in range(len(versions) - 1, -1, -1):
                    if versions[i][0] < cutoff:
                        keep = i
                        break
                del versions[:keep]
                if len(versions) == 1 and versions[0][0] < cutoff:
                    del self._versions[key]

    def clear(self) -> None:
        with self._lock:
            self._versions.clear()
            self._touched.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._versions)


# ---- what an eventually consistent read sees -----------------------------------------------------


def _read_time(now: float, stale_ms: float, u: float) -> float:
    """The moment an eventually consistent read at ``now`` sees the table as of: a lag of ``u``
    (a uniform draw in [0, 1)) times ``stale_ms`` before. ``_History.view(key, _read_time(...))``
    is the version it answers."""
    return now - stale_ms / 1000.0 * u


def _as_queried(old: JsonDict | None, index: _Index | None, conditions: list[str], names: Mapping[str, str],
                values: Mapping[str, Any]) -> JsonDict | None:
    """The older version ``old`` of an item a Query/Scan returned, as that stale read returns it:
    None if it is a deletion, was not in the (sparse) ``index`` then, or fails one of ``conditions``
    (the key condition and the filter). Raises ``_ExprError`` (or ``InvalidOperation``,
    ``KeyError``, ``TypeError``, ``ValueError``) where it cannot judge."""
    if old is not None and index is not None and (
            index.hash not in old or (index.range is not None and index.range not in old)):
        return None  # not in the (sparse) index at that time
    if old is not None and not all(_evaluate(c, old, names, values) for c in conditions):
        return None
    return old


def _with_keys(table: _Table, request: Mapping[str, Any]) -> tuple[JsonDict | None, frozenset[str]]:
    """``request`` with the table's key attributes added to its projection (so each result can be
    matched to its history), and the names added (to strip from the answer); None if none are."""
    keys = [k for k in (table.hash, table.range) if k]
    if request.get("ProjectionExpression"):
        names = dict(request.get("ExpressionAttributeNames") or {})
        expr = str(request["ProjectionExpression"])
        try:
            tops = {names.get(str(seg[0]), str(seg[0])) for seg in (_Parser(p).path()[1] for p in expr.split(","))}
        except _ExprError:
            return None, frozenset()
        missing = [k for k in keys if k not in tops]
        if not missing:
            return None, frozenset()
        aliases = []
        for i, k in enumerate(missing):
            names[f"#fidelity_key{i}"] = k
            aliases.append(f"#fidelity_key{i}")
        return ({**request, "ProjectionExpression": ", ".join([expr, *aliases]), "ExpressionAttributeNames": names},
                frozenset(missing))
    if request.get("AttributesToGet"):
        wanted = list(request["AttributesToGet"])
        missing = [k for k in keys if k not in wanted]
        if missing:
            return {**request, "AttributesToGet": wanted + missing}, frozenset(missing)
    return None, frozenset()


def _strip(item: JsonDict, added: frozenset[str]) -> JsonDict:
    return {k: v for k, v in item.items() if k not in added} if added else item


def _index_project(item: JsonDict, table: _Table, index: _Index | None) -> JsonDict:
    if index is None or index.projection == "ALL":
        return item
    keep = {table.hash, table.range, index.hash, index.range} | set(index.include)
    return {k: v for k, v in item.items() if k in keep}


# ---- TTL deletes late --------------------------------------------------------------------------------

TTL_IGNORED_AGE = 5 * 365 * 86400  # DynamoDB ignores TTL values more than five years old


def _ttl_expired(ttl: float, now: float) -> bool:
    """Whether an item whose TTL attribute holds ``ttl`` (epoch seconds) is due for deletion at
    ``now``: it is past, and not so far past (five years) that DynamoDB ignores it."""
    if ttl > now:
        return False
    return not ttl < now - TTL_IGNORED_AGE


def _ttl_delay(delay: tuple[float, float], u: float) -> float:
    """How long after it is first seen expired an item is deleted: within the spec's ``ttl_delay``
    range, at ``u`` (a uniform draw fixed per item, so a job's items go late and in any order)."""
    lo, hi = delay
    return lo + (hi - lo) * u
