"""The simulated queue: SQS's at-least-once delivery, with its visibility timeout and DLQ.

- a message becomes visible after its delay; a receive hides it for the visibility timeout and
  hands out a new receipt handle (only the newest one deletes or extends it, as SQS's does);
- a message whose visibility runs out while its worker still runs is delivered again, to
  whichever worker asks next (a second worker gets the same message);
- past ``max_receives`` receives it moves to the dead-letter queue instead (redrive policy);
- faults: a send delivered twice (at-least-once), a delete that is lost (the message comes back),
  and receives in any order among the visible messages (standard queues do not keep order).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from alfred_tools.sim.kernel import Kernel, SimSignal
from alfred_tools.sim.store import About, Wire


@dataclass
class QueueFaults:
    duplicate: float = 0.0     # a send stored twice
    lost_delete: float = 0.0   # a delete acknowledged and not applied


@dataclass
class Message:
    mid: int
    body: str
    visible_at: float
    receives: int = 0
    receipt: str = ""
    sent: float = 0.0  # when it was sent (virtual time)


@dataclass
class Delivered:
    body: str
    receipt: str
    receives: int


@dataclass
class SimQueue:
    """``JobQueue`` (what the runtime sends) and the consumer side (what the simulated event
    source mapping receives and deletes)."""

    k: Kernel
    wire: Wire
    visibility_timeout: float = 720.0
    max_receives: int = 5
    faults: QueueFaults = field(default_factory=QueueFaults)
    messages: dict[int, Message] = field(default_factory=dict)
    dead: list[tuple[str, str]] = field(default_factory=list)  # (job id or body, reason)
    redriven: list[tuple[str, float]] = field(default_factory=list)  # (job id, when sent): the redrive's
    sends: int = 0
    others: Callable[[], int] | None = None  # other traffic in a shared queue (its backlog)
    _n: int = 0
    _arrivals: SimSignal | None = None

    def _arrived(self) -> SimSignal:
        if self._arrivals is None:
            self._arrivals = SimSignal(self.k)
        return self._arrivals

    # ---- JobQueue --------------------------------------------------------------------------

    def send(self, job_id: str, delay_seconds: int = 0, *, next_up: bool = False) -> None:
        body = json.dumps({"job_id": job_id, **({"next_up": True} if next_up else {})})

        def op() -> None:
            copies = 2 if self.wire._fault("duplicate_message", self.faults.duplicate, always=True) else 1
            for _ in range(copies):
                self._n += 1
                self.messages[self._n] = Message(self._n, body, self.k.t + delay_seconds, sent=self.k.t)
            self.sends += 1
            if delay_seconds == 0:
                self._wake_consumers()

        about = self.wire.about(job_id, delay=delay_seconds or None, next_up=next_up) if self.wire.labels else None
        self.wire.call("sqs.send", True, op, about=about)

    def holds(self, job_id: str) -> bool:
        """Whether a message for ``job_id`` is in the queue (visible, delayed or in flight)."""
        return any(job_id in m.body for m in self.messages.values())

    def backlog(self) -> int:
        def op() -> int:
            mine = sum(1 for m in self.messages.values() if m.visible_at <= self.k.t)
            return mine + (self.others() if self.others is not None else 0)

        return self.wire.call("sqs.backlog", False, op)

    def change_visibility(self, receipt_handle: str, seconds: int) -> None:
        def op() -> None:
            m = self._by_receipt(receipt_handle)
            if m is not None:
                m.visible_at = self.k.t + seconds

        about = self._about(receipt_handle, seconds) if self.wire.labels else None
        self.wire.call("sqs.visibility", True, op, about=about)

    def dead_letter(self, job_id: str, body: str, reason: str) -> None:
        about = self.wire.about(job_id, reason) if self.wire.labels else None
        self.wire.call("sqs.dead_letter", True, lambda: self.dead.append((job_id, reason)), about=about)

    # ---- the consumer side -----------------------------------------------------------------

    def _by_receipt(self, receipt: str) -> Message | None:
        mid = int(receipt.split(":", 1)[0])
        m = self.messages.get(mid)
        return m if m is not None and m.receipt == receipt else None

    def _about(self, receipt: str, *more: Any) -> About:
        """The verbose trace's words for a call on a receipt: the job of its message, as the call
        is made (a delete takes the message away)."""
        m = self._by_receipt(receipt)
        job_id = json.loads(m.body).get("job_id", "-") if m is not None else "-"
        return self.wire.about(job_id, f"receipt={receipt}", *more)

    def _wake_consumers(self) -> None:
        signal, self._arrivals = self._arrivals, None
        if signal is not None:
            signal.set()

    def receive(self, limit: int, wait: float) -> list[Delivered]:
        """Long-poll: the visible messages (any order, at most ``limit``), waiting up to ``wait``."""
        got = self._take(limit)
        if not got:
            soonest = min((m.visible_at for m in self.messages.values()), default=None)
            timeout = wait if soonest is None else max(0.0, min(wait, soonest - self.k.t))
            self._arrived().wait(timeout)
            got = self._take(limit)
        return got

    def _take(self, limit: int) -> list[Delivered]:
        visible = [m for m in self.messages.values() if m.visible_at <= self.k.t]
        self.k.rng.shuffle(visible)
        out = []
        for m in visible[:limit]:
            if m.receives >= self.max_receives:
                del self.messages[m.mid]  # the redrive policy moves it to the DLQ
                job_id = json.loads(m.body).get("job_id", "-")
                self.dead.append((job_id, "max_receive_count"))
                self.redriven.append((job_id, m.sent))
                continue
            m.receives += 1
            m.receipt = f"{m.mid}:{m.receives}"
            m.visible_at = self.k.t + self.visibility_timeout
            out.append(Delivered(m.body, m.receipt, m.receives))
        return out

    def delete(self, receipt: str) -> None:
        def op() -> None:
            if self.wire._fault("lost_delete", self.faults.lost_delete):
                return
            m = self._by_receipt(receipt)
            if m is not None:
                del self.messages[m.mid]

        about = self._about(receipt) if self.wire.labels else None
        self.wire.call("sqs.delete", True, op, about=about)

    def in_flight(self) -> list[dict[str, Any]]:
        return [json.loads(m.body) for m in self.messages.values()]
