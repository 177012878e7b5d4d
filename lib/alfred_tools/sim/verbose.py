"""What ``alfred-jobs sim --seed N --verbose`` adds to each store and queue call line.

The default trace says which call a task made and what it got (``gate.take -> Gate``), not what
it was about. The verbose line inserts that after the call's name, as the call's arguments in
short (``gate.take(user0 3f1ac0de run a1 c5.255 conv 0100cccc max_running=1 attempt=1)``), and
appends after `` | `` the faults that struck the call and, after a gate write, the user's gate
as that write left it. It only formats: it reads the fakes' state and draws nothing from the
seed's generator, so a verbose history is the default one, call for call (docs/simulation.md).
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from alfred_jobs.domain.events import Event
from alfred_jobs.domain.gate import GateEntry
from alfred_jobs.domain.models import Job, SteerClaim
from alfred_jobs.domain.push import PushMessage
from alfred_tools.sim.kernel import EPOCH

_HEX = frozenset("0123456789abcdef")


class Labels:
    """The short names of one history's ids, arguments, gates and faults."""

    def __init__(self, seed: int) -> None:
        # ``World.new_id`` counts ids after the seed's 8 hex digits: their tail tells them apart.
        self._counted = f"{seed & 0xFFFFFFFF:08x}"

    def id(self, s: str) -> str:
        """8 hex chars: a keyed id's head (a hash; the lease task's name uses it too), a counted
        id's tail."""
        return s[-8:] if s.startswith(self._counted) else s[:8]

    def args(self, args: tuple[Any, ...], kwargs: dict[str, Any], of: Callable[..., Any] | None = None) -> str:
        """The arguments of a call to ``of``: ids and records as themselves, a number or a flag
        by its parameter's name (``max_running=2``) where ``of`` tells it."""
        named = dict(kwargs)
        if of is not None:
            bound = inspect.signature(of).bind(*args, **kwargs).arguments
            names = list(bound)[:len(args)]
            plain = [a for a, n in zip(args, names, strict=True) if not isinstance(a, int | float)]
            named = {n: a for a, n in zip(args, names, strict=True) if isinstance(a, int | float)} | named
            args = tuple(plain)
        parts = [self.arg(a) for a in args]
        parts += [(name if value is True else "") if isinstance(value, bool) else
                  (f"{name}={text}" if (text := self.arg(value)) else "") for name, value in named.items()]
        return " ".join(p for p in parts if p)

    def arg(self, a: Any) -> str:
        """One argument in short; "" for what says nothing about the call (texts, TTLs, durations)."""
        if isinstance(a, Job):
            return f"{self.id(a.job_id)} {a.status} a{a.attempts} seq={a.last_seq} c{a.created_at - EPOCH:.3f}"
        if isinstance(a, GateEntry):
            return self.entry(a)
        if isinstance(a, Event):
            return self.event(a)
        if isinstance(a, SteerClaim):
            return f"{self.id(a.message_id)}->{self.id(a.target) if a.target else '-'}"
        if isinstance(a, PushMessage):
            return f"{self.id(a.job_id)} seq={a.seq}"
        if isinstance(a, str):
            if len(a) == 32 and _HEX.issuperset(a):
                return self.id(a)
            return a if len(a) <= 20 and not any(c.isspace() for c in a) else ""  # not texts, nor times
        if isinstance(a, bool) or not isinstance(a, int | float):
            return ""
        if a >= 1e9:  # epoch seconds: a float is a time the call is about, an int a TTL
            return f"@{a - EPOCH:.3f}" if isinstance(a, float) else ""
        return str(a) if isinstance(a, int) else ""

    def event(self, e: Event) -> str:
        status = e.data.get("status")
        return f"seq={e.seq} {e.type}{f' {status}' if isinstance(status, str) else ''} a{e.attempt}"

    def entry(self, e: GateEntry) -> str:
        state = "run" if e.running else "ask" if e.asking else "wait"
        made = f" c{e.created_at - EPOCH:.3f}" if e.created_at else ""
        return f"{self.id(e.job_id)} {state} a{e.attempt}{made} conv {self.id(e.conversation_id)}"

    def gate(self, user_id: str, entries: Iterable[GateEntry]) -> str:
        listed = "; ".join(self.entry(e) for e in sorted(entries, key=lambda e: e.order))
        return f"gate {user_id}: {listed or 'empty'}"

    @staticmethod
    def faults(struck: list[str]) -> str:
        """``faults: hiccup, stale_read 0.12s``; a kind that struck more than once (an index read's
        items) as ``stale_read x5``."""
        kinds = Counter(s.split(" ", 1)[0] for s in struck)
        named: dict[str, str] = {}
        for s in struck:
            kind = s.split(" ", 1)[0]
            named.setdefault(kind, s if kinds[kind] == 1 else f"{kind} x{kinds[kind]}")
        return "faults: " + ", ".join(named.values())
