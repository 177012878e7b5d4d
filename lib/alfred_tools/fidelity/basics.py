"""What every part of the faithful proxy shares, and none of it is about AWS or HTTP.

``JsonDict`` (a decoded JSON object: a request payload, a reply body, a DynamoDB item),
``_Draws`` (the seeded draws every random choice of the proxy comes from, so that a run can be
replayed from its ``seed``) and ``_Lru`` (the bounded map that keeps receipt handles and
per-request fault counts from growing without end).
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter, OrderedDict
from typing import Any

JsonDict = dict[str, Any]


def _unit(seed: int, key: str, n: int) -> float:
    digest = hashlib.blake2b(f"{seed}:{key}:{n}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class _Draws:
    """Seeded uniform draws: the n-th draw for a purpose is a function of (seed, purpose, n)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._n: Counter[str] = Counter()
        self._lock = threading.Lock()

    def next(self, purpose: str) -> float:
        with self._lock:
            n = self._n[purpose]
            self._n[purpose] = n + 1
        return _unit(self.seed, purpose, n)

    def fixed(self, purpose: str) -> float:
        """A draw that depends on the purpose only (e.g. one item's TTL delay)."""
        return _unit(self.seed, purpose, 0)

    def reseed(self, seed: int) -> None:
        """Start again from ``seed``: every purpose's count of draws back at zero."""
        with self._lock:
            self.seed = seed
            self._n.clear()


class _Lru(OrderedDict[str, Any]):
    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap

    def put(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.cap:
            self.popitem(last=False)
