"""DynamoDB's expression language, enough to judge an older version of an item as DynamoDB would.

A stale Query/Scan answer maps each item moto returned to the version an eventually consistent
read sees; that older version must still satisfy the request's ``KeyConditionExpression`` and
``FilterExpression`` (``_evaluate``, over a recursive-descent ``_Parser`` of the condition
grammar) and be cut to its ``ProjectionExpression`` / ``AttributesToGet`` (``_project``). Pure
functions of typed items (``{"S": ...}``, ``{"N": ...}``, ...); nothing here knows HTTP.
"""

from __future__ import annotations

import base64
import bisect
import re
from collections.abc import Mapping
from decimal import Decimal
from functools import lru_cache
from typing import Any

from alfred_tools.fidelity.basics import JsonDict


class _ExprError(ValueError):
    """An expression this evaluator does not understand."""


_TOKEN_RE = re.compile(r"\s*(\[\d+\]|<>|<=|>=|=|<|>|\(|\)|,|\.|#[A-Za-z0-9_]+|:[A-Za-z0-9_]+|[A-Za-z_][A-Za-z0-9_-]*)")
_FUNCTIONS = frozenset({"attribute_exists", "attribute_not_exists", "attribute_type", "begins_with", "contains"})
_COMPARATORS = frozenset({"=", "<>", "<", "<=", ">", ">="})


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise _ExprError(f"cannot read {text[pos:]!r}")
        out.append(m.group(1))
        pos = m.end()
    return out


class _Parser:
    """Recursive descent over DynamoDB's condition grammar, into nested tuples."""

    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self, ahead: int = 0) -> str | None:
        j = self.i + ahead
        return self.toks[j] if j < len(self.toks) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok.upper() != expected):
            raise _ExprError(f"expected {expected or 'more'}, found {tok!r}")
        self.i += 1
        return tok

    def keyword(self, word: str) -> bool:
        tok = self.peek()
        if tok is not None and tok.upper() == word:
            self.i += 1
            return True
        return False

    def parse(self) -> tuple[Any, ...]:
        node = self.or_()
        if self.peek() is not None:
            raise _ExprError(f"unexpected {self.peek()!r}")
        return node

    def or_(self) -> tuple[Any, ...]:
        node = self.and_()
        while self.keyword("OR"):
            node = ("or", node, self.and_())
        return node

    def and_(self) -> tuple[Any, ...]:
        node = self.not_()
        while self.keyword("AND"):
            node = ("and", node, self.not_())
        return node

    def not_(self) -> tuple[Any, ...]:
        if self.keyword("NOT"):
            return ("not", self.not_())
        return self.primary()

    def primary(self) -> tuple[Any, ...]:
        tok = self.peek()
        if tok == "(":
            self.take()
            node = self.or_()
            self.take(")")
            return node
        if tok is not None and tok.lower() in _FUNCTIONS and self.peek(1) == "(":
            self.take()
            self.take("(")
            args = [self.operand()]
            while self.peek() == ",":
                self.take()
                args.append(self.operand())
            self.take(")")
            return ("fn", tok.lower(), args)
        left = self.operand()
        if self.keyword("BETWEEN"):
            lo = self.operand()
            self.take("AND")
            return ("between", left, lo, self.operand())
        if self.keyword("IN"):
            self.take("(")
            items = [self.operand()]
            while self.peek() == ",":
                self.take()
                items.append(self.operand())
            self.take(")")
            return ("in", left, items)
        op = self.take()
        if op not in _COMPARATORS:
            raise _ExprError(f"expected a comparator, found {op!r}")
        return ("cmp", op, left, self.operand())

    def operand(self) -> tuple[Any, ...]:
        tok = self.peek()
        if tok is not None and tok.startswith(":"):
            self.take()
            return ("value", tok)
        if tok is not None and tok.lower() == "size" and self.peek(1) == "(":
            self.take()
            self.take("(")
            path = self.path()
            self.take(")")
            return ("size", path)
        return self.path()

    def path(self) -> tuple[Any, ...]:
        segments: list[str | int] = [self.name()]
        while True:
            tok = self.peek()
            if tok == ".":
                self.take()
                segments.append(self.name())
            elif tok is not None and tok.startswith("["):
                self.take()
                segments.append(int(tok[1:-1]))
            else:
                return ("path", segments)

    def name(self) -> str:
        tok = self.take()
        if not (tok.startswith("#") or tok[0].isalpha() or tok[0] == "_"):
            raise _ExprError(f"expected a name, found {tok!r}")
        return tok


@lru_cache(maxsize=512)
def _parsed(text: str) -> tuple[Any, ...]:
    return _Parser(text).parse()


def _get_path(item: Mapping[str, Any], segments: list[str | int], names: Mapping[str, str]) -> Any:
    def resolve(seg: str) -> str:
        if seg.startswith("#"):
            if seg not in names:
                raise _ExprError(f"undefined name {seg}")
            return names[seg]
        return seg

    first = segments[0]
    cur: Any = item.get(resolve(first)) if isinstance(first, str) else None
    for seg in segments[1:]:
        if cur is None:
            return None
        if isinstance(seg, int):
            lst = cur.get("L") if isinstance(cur, dict) else None
            cur = lst[seg] if isinstance(lst, list) and seg < len(lst) else None
        else:
            mp = cur.get("M") if isinstance(cur, dict) else None
            cur = mp.get(resolve(seg)) if isinstance(mp, dict) else None
    return cur


def _norm(value: Any) -> Any:
    """A comparable form of a typed attribute value."""
    if not isinstance(value, dict) or not value:
        return value
    typ, raw = next(iter(value.items()))
    if typ == "N":
        return ("N", Decimal(str(raw)))
    if typ == "NS":
        return ("NS", frozenset(Decimal(str(x)) for x in raw))
    if typ in ("SS", "BS"):
        return (typ, frozenset(raw))
    if typ == "L":
        return ("L", tuple(_norm(x) for x in raw))
    if typ == "M":
        return ("M", tuple(sorted((k, _norm(v)) for k, v in raw.items())))
    if typ == "B":
        return ("B", base64.b64decode(raw) if isinstance(raw, str) else raw)
    return (typ, raw)


def _evaluate(text: str, item: Mapping[str, Any], names: Mapping[str, str], values: Mapping[str, Any]) -> bool:
    return _eval(_parsed(text), item, names, values)


def _eval(node: tuple[Any, ...], item: Mapping[str, Any], names: Mapping[str, str],
          values: Mapping[str, Any]) -> bool:
    kind = node[0]
    if kind == "or":
        return _eval(node[1], item, names, values) or _eval(node[2], item, names, values)
    if kind == "and":
        return _eval(node[1], item, names, values) and _eval(node[2], item, names, values)
    if kind == "not":
        return not _eval(node[1], item, names, values)

    def operand(n: tuple[Any, ...]) -> Any:
        if n[0] == "value":
            if n[1] not in values:
                raise _ExprError(f"undefined value {n[1]}")
            return values[n[1]]
        if n[0] == "size":
            v = _get_path(item, n[1][1], names)
            if not isinstance(v, dict) or not v:
                return None
            typ, raw = next(iter(v.items()))
            size = len(base64.b64decode(raw)) if typ == "B" else len(raw) if typ != "N" else None
            return None if size is None else {"N": str(size)}
        return _get_path(item, n[1], names)

    if kind == "cmp":
        left, right = _norm(operand(node[2])), _norm(operand(node[3]))
        if left is None or right is None:
            return False
        op = node[1]
        if op == "=":
            return bool(left == right)
        if op == "<>":
            return bool(left != right)
        if left[0] != right[0] or left[0] not in ("N", "S", "B"):
            return False
        a, b = left[1], right[1]
        return bool({"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op])
    if kind == "between":
        v, lo, hi = (_norm(operand(n)) for n in node[1:])
        if v is None or lo is None or hi is None or not (v[0] == lo[0] == hi[0]) or v[0] not in ("N", "S", "B"):
            return False
        return bool(lo[1] <= v[1] <= hi[1])
    if kind == "in":
        v = _norm(operand(node[1]))
        return v is not None and any(v == _norm(operand(n)) for n in node[2])
    if kind == "fn":
        name, args = node[1], node[2]
        if name in ("attribute_exists", "attribute_not_exists"):
            present = operand(args[0]) is not None
            return present if name == "attribute_exists" else not present
        first, second = _norm(operand(args[0])), _norm(operand(args[1]))
        if first is None or second is None:
            return False
        if name == "attribute_type":
            return bool(first[0] == second[1])
        if name == "begins_with":
            return first[0] == second[0] and first[0] in ("S", "B") and bool(first[1].startswith(second[1]))
        if name == "contains":
            if first[0] == second[0] and first[0] in ("S", "B"):
                return bool(second[1] in first[1])
            if first[0] in ("SS", "NS", "BS"):
                return bool(second[1] in first[1])
            if first[0] == "L":
                return second in first[1]
            return False
    raise _ExprError(f"cannot evaluate {kind}")


def _project(item: JsonDict, request: Mapping[str, Any]) -> JsonDict:
    """Apply a request's ProjectionExpression / AttributesToGet to a (full) item, as DynamoDB does:
    nested paths keep just the part named (``m.a`` gives ``{"m": {"M": {"a": ...}}}``)."""
    if request.get("ProjectionExpression"):
        names = request.get("ExpressionAttributeNames") or {}
        out: JsonDict = {}
        order: dict[int, list[int]] = {}
        for part in str(request["ProjectionExpression"]).split(","):
            _copy_path(item, out, _Parser(part).path()[1], names, order)
        return out
    if request.get("AttributesToGet"):
        wanted = set(request["AttributesToGet"])
        return {k: v for k, v in item.items() if k in wanted}
    return item


def _copy_path(src: Mapping[str, Any], dst: JsonDict, segments: list[str | int], names: Mapping[str, str],
               order: dict[int, list[int]]) -> None:
    """Copy the part of ``src`` at ``segments`` into ``dst``; list elements keep their index order
    (``order``: the source indexes already in each projected list)."""
    first = segments[0]
    if not isinstance(first, str):
        return
    name = names.get(first, first)
    if name not in src:
        return
    value = src[name]
    if len(segments) == 1:
        dst[name] = value
        return
    if dst.get(name) is value:
        return  # the whole attribute is projected already
    nxt = segments[1]
    if isinstance(nxt, int):
        elements = value.get("L") if isinstance(value, dict) else None
        if not isinstance(elements, list) or nxt >= len(elements):
            return
        holder = dst.setdefault(name, {"L": []}).get("L")
        if not isinstance(holder, list):
            return
        taken = order.setdefault(id(holder), [])
        if nxt in taken:
            if len(segments) == 2:
                holder[taken.index(nxt)] = elements[nxt]
            elif isinstance(holder[taken.index(nxt)], dict) and "M" in holder[taken.index(nxt)]:
                _copy_path({"\x00": elements[nxt]}, {"\x00": holder[taken.index(nxt)]}, ["\x00", *segments[2:]],
                           names, order)
            return
        element = elements[nxt]
        if len(segments) > 2:
            sub: JsonDict = {}
            _copy_path({"\x00": element}, sub, ["\x00", *segments[2:]], names, order)
            if "\x00" not in sub:
                return
            element = sub["\x00"]
        at = bisect.bisect(taken, nxt)
        taken.insert(at, nxt)
        holder.insert(at, element)
        return
    members = value.get("M") if isinstance(value, dict) else None
    if not isinstance(members, dict):
        return
    holder_map = dst.setdefault(name, {"M": {}}).get("M")
    if isinstance(holder_map, dict):
        _copy_path(members, holder_map, segments[1:], names, order)
