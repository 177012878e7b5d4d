"""The fidelity spec: which AWS behaviours the proxy puts back, at what rates, from what seed.

``FidelitySpec`` is parsed from ``ALFRED_FIDELITY_SPEC`` / ``--spec`` (``aws;seed=7;stale_ms=200;
ambiguous.UpdateItem=0.1``); ``PROFILES`` are the named specs (``aws``, ``off``). It also holds
``_random_fault``, the pure choice of which random fault (if any) a draw gives an operation under
a spec, and ``_setting_text``, one key's value in the spec format. Nothing here knows HTTP.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

RATE_KINDS = ("ambiguous", "throttle", "5xx", "sqs_duplicate", "sqs_lost_delete", "sqs_stale_receipt")
AMBIGUOUS_OPS = frozenset({"PutItem", "UpdateItem", "DeleteItem", "SendMessage", "DeleteMessage",
                           "DeleteMessageBatch", "ChangeMessageVisibility", "ChangeMessageVisibilityBatch"})
FAULTED_SERVICES = frozenset({"dynamodb", "sqs"})
PROFILES: dict[str, str] = {
    "aws": ("stale_ms=500;ttl_delay=0-3;ambiguous=0.03;ambiguous_close=0.5;throttle=0.01;5xx=0.01;"
            "sqs_duplicate=0.05;sqs_lost_delete=0.05;sqs_stale_receipt=1;exempt=inspector"),
    "off": "",
}
DEFAULT_PROFILE = "aws"
MAX_RANDOM_FAULTS = 2  # per request (botocore invocation): its retries then settle


class FidelitySpecError(ValueError):
    """A fidelity spec string is not in the documented format."""


@dataclass(frozen=True)
class FidelitySpec:
    """What the proxy does; parsed from ``seed=7;stale_ms=500;ttl_delay=0-3;...``.

    Keys: ``seed`` (int), ``stale_ms`` (max staleness of eventually consistent reads),
    ``ttl_delay`` (seconds, ``a-b`` or ``x``: each expired item is deleted that long after it is
    first seen expired), ``ttl_scan`` / ``ttl_rescan`` (seconds between TTL scans of a table
    with known expiries / of every TTL table), rates in 0..1 for ``ambiguous``, ``throttle``,
    ``5xx``, ``sqs_duplicate``, ``sqs_lost_delete``, ``sqs_stale_receipt`` (with per-operation
    overrides ``kind.Operation=rate``), ``ambiguous_close`` (share of ambiguous faults answered
    by closing the connection instead of a 500) and ``exempt=akid1,akid2``. A bare word is a
    profile (``aws``, ``off``); later clauses override earlier ones.
    """

    seed: int = 0
    stale_ms: float = 0.0
    ttl_delay: tuple[float, float] = (0.0, 0.0)
    ttl_scan: float = 0.5
    ttl_rescan: float = 30.0
    ambiguous_close: float = 0.0
    rates: Mapping[str, float] = field(default_factory=dict)
    overrides: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    exempt: frozenset[str] = frozenset()

    def rate(self, kind: str, operation: str) -> float:
        per_op = self.overrides.get(kind)
        if per_op is not None and operation in per_op:
            return per_op[operation]
        return self.rates.get(kind, 0.0)

    @classmethod
    def parse(cls, text: str | None, base: FidelitySpec | None = None) -> FidelitySpec:
        """Apply the clauses of ``text`` over ``base`` (default: everything off)."""
        b = base or cls()
        d: dict[str, Any] = {"seed": b.seed, "stale_ms": b.stale_ms, "ttl_delay": b.ttl_delay,
                             "ttl_scan": b.ttl_scan, "ttl_rescan": b.ttl_rescan,
                             "ambiguous_close": b.ambiguous_close, "exempt": b.exempt}
        rates = dict(b.rates)
        overrides = {k: dict(v) for k, v in b.overrides.items()}
        for raw in (text or "").split(";"):
            clause = raw.strip()
            if clause.startswith("profile="):
                clause = clause.partition("=")[2].strip()
            if not clause:
                continue
            if "=" not in clause:
                if clause not in PROFILES:
                    raise FidelitySpecError(f"unknown profile {clause!r} (known: {', '.join(PROFILES)})")
                spec = cls.parse(PROFILES[clause])
                d = {"seed": spec.seed, "stale_ms": spec.stale_ms, "ttl_delay": spec.ttl_delay,
                     "ttl_scan": spec.ttl_scan, "ttl_rescan": spec.ttl_rescan,
                     "ambiguous_close": spec.ambiguous_close, "exempt": spec.exempt}
                rates, overrides = dict(spec.rates), {k: dict(v) for k, v in spec.overrides.items()}
                continue
            key, _, value = (s.strip() for s in clause.partition("="))
            try:
                if key == "seed":
                    d["seed"] = int(value)
                elif key in ("stale_ms", "ttl_scan", "ttl_rescan"):
                    d[key] = _non_negative(value)
                elif key == "ambiguous_close":
                    d[key] = _rate(value)
                elif key == "ttl_delay":
                    lo, sep, hi = value.partition("-")
                    pair = (_non_negative(lo), _non_negative(hi if sep else lo))
                    if pair[1] < pair[0]:
                        raise FidelitySpecError(f"ttl_delay range is backwards: {clause!r}")
                    d["ttl_delay"] = pair
                elif key == "exempt":
                    d["exempt"] = frozenset(p.strip() for p in value.split(",") if p.strip())
                elif key in RATE_KINDS:
                    rates[key] = _rate(value)
                elif "." in key and key.partition(".")[0] in RATE_KINDS and key.partition(".")[2].isalnum():
                    kind, _, op = key.partition(".")
                    overrides.setdefault(kind, {})[op] = _rate(value)
                else:
                    raise FidelitySpecError(f"unknown key {key!r}")
            except ValueError as exc:
                if isinstance(exc, FidelitySpecError):
                    raise
                raise FidelitySpecError(f"bad value in {clause!r}: {exc}") from None
        return cls(rates=rates, overrides=overrides, **d)

    def describe(self) -> str:
        """The spec in its own format (what to paste to replay it)."""
        parts = [f"seed={self.seed}", f"stale_ms={self.stale_ms:g}",
                 f"ttl_delay={self.ttl_delay[0]:g}-{self.ttl_delay[1]:g}", f"ttl_scan={self.ttl_scan:g}",
                 f"ttl_rescan={self.ttl_rescan:g}", f"ambiguous_close={self.ambiguous_close:g}"]
        parts += [f"{k}={self.rates[k]:g}" for k in RATE_KINDS if k in self.rates]
        parts += [f"{k}.{op}={r:g}" for k in sorted(self.overrides) for op, r in sorted(self.overrides[k].items())]
        if self.exempt:
            parts.append("exempt=" + ",".join(sorted(self.exempt)))
        return ";".join(parts)


def _non_negative(value: str) -> float:
    v = float(value)
    if v < 0:
        raise FidelitySpecError(f"must not be negative: {value!r}")
    return v


def _rate(value: str) -> float:
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise FidelitySpecError(f"rate must be within 0..1: {value!r}")
    return v


def default_spec_text() -> str:
    return os.environ.get("ALFRED_FIDELITY_SPEC") or DEFAULT_PROFILE


def _random_fault(spec: FidelitySpec, op: str, u: float) -> str | None:
    """The random fault a uniform draw ``u`` in [0, 1) gives operation ``op`` under ``spec``:
    ``throttle``, ``5xx``, ``ambiguous`` (writes in ``AMBIGUOUS_OPS`` only) or ``lost_delete``
    (``DeleteMessage`` only), each taking its rate's share of [0, 1) in that order; None for none."""
    edge = 0.0
    for kind in ("throttle", "5xx", "ambiguous", "lost_delete"):
        if kind == "ambiguous" and op not in AMBIGUOUS_OPS:
            continue
        if kind == "lost_delete":
            if op != "DeleteMessage":
                continue
            edge += spec.rate("sqs_lost_delete", op)
        else:
            edge += spec.rate(kind, op)
        if u < edge:
            return kind
    return None


def _setting_text(spec: FidelitySpec, name: str) -> str:
    """The value of one key of ``spec``, in the spec format."""
    current = dict(c.split("=", 1) for c in spec.describe().split(";"))
    if name in current:
        return current[name]
    if name in RATE_KINDS:
        return "0"
    kind = name.split(".", 1)[0]
    if "." in name and kind in RATE_KINDS:
        return current.get(kind, "0")  # an operation's override put back: its kind's rate again
    if name == "exempt":
        return ""
    raise FidelitySpecError(f"unknown key {name!r}")
