"""The simulated store: the in-memory fakes' conditions, with AWS's timing, faults and staleness.

The conditions (conditional puts, leases, gate limits, expiry) are the in-memory fakes' own
(``alfred_jobs.adapters.memory``), which ``tests/contract`` holds to the DynamoDB adapters: the
simulator does not restate them. What it adds is what the fakes, like moto, leave out:

- **every call is a round trip**: the request travels (a switch point), the operation applies
  at once, the answer travels back (another switch point), each leg a seeded latency;
- **faults that reach the application after the SDK's retries** (``Faults``): a throttle or 5xx
  (``TransientStoreError``, nothing applied), a timeout that never landed, and the ambiguous
  write: applied, its answer lost, the SDK's retry meeting its own write (a conditional write then
  fails its condition: the adapters' "own write" paths), or every retry failing (applied, and
  the caller sees an error);
- **eventually consistent reads** (``consistent=False``, and the index reads ``find_due`` and
  ``list_for_user``, which DynamoDB serves only eventually): the item as it was a seeded lag ago
  (mostly milliseconds, sometimes past a second), from each item's version history.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from alfred_jobs.adapters.memory import MemoryEventLog, MemoryJobStore, page_of
from alfred_jobs.domain.events import StepPayload
from alfred_jobs.domain.models import Event, Job, JobStatus, SteerClaim
from alfred_jobs.exceptions import StoreError, TransientStoreError
from alfred_jobs.ports import JobPage
from alfred_tools.sim.kernel import Kernel, Process, Task
from alfred_tools.sim.verbose import Labels

# What a call is about, for the verbose trace: its arguments in short, and what to append (a
# gate write's gate as the write left it). Built only when the trace is verbose.
About = Callable[[], tuple[str, str]]


@dataclass
class FaultPlan:
    """How often each fault strikes a call, while faults are on (a history's profile)."""

    throttle: float = 0.0       # a read or write refused after the SDK's retries (nothing applied)
    lost_write: float = 0.0     # a write timed out and never landed
    ambiguous: float = 0.0      # a write applied whose answer was lost (the SDK retries it)
    stale: float = 0.0          # an eventually consistent read answered from the past
    long_lag: float = 0.0       # of those, the share that lag past half a second
    hiccup: float = 0.0         # the caller stalls before its request goes (GC, a busy CPU): 0.3-3 s
    freeze: float = 0.0         # its whole process freezes there (SIGSTOP, a frozen Lambda): 5-90 s
    held: float = 0.0           # a write's process freezes with it in flight, and wakes just after
                                # another process's request for the same job (a few requests on)


@dataclass
class Stats:
    calls: int = 0
    faults: Counter[str] = field(default_factory=Counter)


class Wire:
    """Every store and queue call goes through here: latency, faults, the trace."""

    def __init__(self, k: Kernel, plan: FaultPlan, stats: Stats) -> None:
        self.k = k
        self.plan = plan
        self.stats = stats
        self.faults_until = float("inf")  # virtual time at which faults stop
        self.holds: dict[str, list[_Hold]] = {}
        self._timers = Process("held-timers")
        self.rng = k.rng
        self.labels: Labels | None = None  # set for the verbose trace (``verbose.py``)
        self._struck: dict[Task | None, list[str]] = {}  # verbose: the faults of each task's call so far

    def latency(self) -> float:
        r = self.rng.random()
        return 0.002 + 0.004 * r if r < 0.95 else 0.05 + 0.5 * self.rng.random()

    def _fault(self, kind: str, p: float, always: bool = False) -> bool:
        """Whether ``kind`` strikes now. ``always``: a semantic of the service (an eventually
        consistent read, SQS's duplicate delivery), not a fault: it does not stop with the faults."""
        if p > 0 and (always or self.k.t < self.faults_until) and self.rng.random() < p:
            self.stats.faults[kind] += 1
            if self.labels is not None:
                self._struck.setdefault(self.k.current, []).append(kind)
            return True
        return False

    def lag(self) -> float:
        """How far in the past an eventually consistent read is answered from."""
        if not self._fault("stale_read", self.plan.stale, always=True):
            return 0.0
        lag = 0.5 + 1.5 * self.rng.random() if self.rng.random() < self.plan.long_lag else 0.3 * self.rng.random()
        if self.labels is not None:
            self._struck[self.k.current][-1] = f"stale_read {lag:.2f}s"
        return lag

    def call(self, name: str, write: bool, op: Callable[[], Any], key: str | None = None,
             about: About | None = None) -> Any:
        """One round trip: request, apply, answer (or the fault's version of it). ``key``: the
        job the call is about (for ``held`` writes); ``about``: its words in the verbose trace."""
        # The hottest path of a history: each fault's check is ``_fault``'s, inlined where its
        # probability is zero or faults are over (no draw is made then, as ``_fault`` makes none).
        k = self.k
        rng = self.rng
        self.stats.calls += 1
        plan = self.plan
        faulty = k.t < self.faults_until
        if faulty and write and key is not None and plan.held > 0 and self._fault("held", plan.held):
            self._hold(name, key, about)
            faulty = k.t < self.faults_until
        # Between the caller's last check and its request landing, anything can stall it: these
        # are the moments a fenced worker's late write or a step run past a cancel come from.
        if faulty and plan.hiccup > 0 and self._fault("hiccup", plan.hiccup):
            k.sleep(0.3 + 2.7 * rng.random())
        elif faulty and plan.freeze > 0 and self._fault("freeze", plan.freeze) and k.current is not None:
            until = k.t + rng.choice([5.0 + 20.0 * rng.random(), 30.0 + 60.0 * rng.random()])
            k.current.proc.paused_until = max(k.current.proc.paused_until, until)
            self._note(name, f"! process frozen until {until:.1f}", about)
        r = rng.random()  # the request's latency (``latency``)
        k.park(0.002 + 0.004 * r if r < 0.95 else 0.05 + 0.5 * rng.random())
        faulty = k.t < self.faults_until
        if faulty and plan.throttle > 0 and self._fault("throttled", plan.throttle):
            self._note(name, "! throttled", about)
            raise TransientStoreError(f"{name}: throttled (simulated, after the SDK's retries)")
        ambiguous = False
        if faulty and write:
            if plan.lost_write > 0 and self._fault("lost_write", plan.lost_write):
                k.sleep(1.0 + rng.random())
                self._note(name, "! timed out, not applied", about)
                raise TransientStoreError(f"{name}: timed out (simulated)")
            ambiguous = plan.ambiguous > 0 and self._fault("ambiguous", plan.ambiguous)
        try:
            result = op()
            error: BaseException | None = None
        except StoreError as exc:  # conditions and lease errors are answers, not faults
            result, error = None, exc
        except Exception as exc:
            result, error = None, exc
        if ambiguous:
            if self.rng.random() < 0.5:
                k.sleep(self.latency())
                self._note(name, "! applied, answer lost", about)
                raise TransientStoreError(f"{name}: applied, answer lost (simulated)")
            # The SDK's retry of the same request, after the lost answer.
            k.sleep(self.latency())
            try:
                result, error = op(), None
            except Exception as exc:
                result, error = None, exc
            self._note(name, f"~ applied, retried: {_brief(result, error)}", about)
        if key is not None and self.holds:
            self._nudge(key)
        r = rng.random()  # the answer's latency
        k.park(0.002 + 0.004 * r if r < 0.95 else 0.05 + 0.5 * rng.random())
        if k._trace is not None and not ambiguous:
            self._note(name, _brief(result, error), about)
        if error is not None:
            raise error
        return result

    def _hold(self, name: str, key: str, about: About | None) -> None:
        """Freeze the caller's process with this write in flight. It wakes (and the write lands)
        right after the ``after``-th request another process makes about the same job once
        ``at_least`` seconds have passed, or after two minutes: how a worker frozen past its lease
        comes to write in the middle of its successor's first steps."""
        k, task = self.k, self.k.current
        if task is None:
            return
        hold = _Hold(task, key, k.t + 5.0 + 85.0 * self.rng.random(), self.rng.randint(1, 3))
        self.holds.setdefault(key, []).append(hold)
        task.proc.paused_until = float("inf")
        self._note(name, f"! held in flight (process frozen) until {hold.at_least - k.t:.1f}s and "
                         f"{hold.after} requests about the job", about)

        def give_up() -> None:
            k.sleep(120.0)
            self._release(hold)

        k.spawn(self._timers, "held-timer", give_up)
        k.park(None)

    def _nudge(self, key: str) -> None:
        """Another request about ``key`` was served: it counts toward waking the processes held on
        it if it comes from a process of the same role (a worker's successor, not a page's poll)."""
        me = self.k.current
        for hold in list(self.holds.get(key, ())):
            if me is None or hold.task.proc is me.proc or self.k.t < hold.at_least:
                continue
            if _role(me.proc.name) != _role(hold.task.proc.name):
                continue
            hold.after -= 1
            if hold.after <= 0:
                self._release(hold)

    def _release(self, hold: _Hold) -> None:
        waiting = self.holds.get(hold.key, [])
        if hold not in waiting:
            return
        waiting.remove(hold)
        if not waiting:
            del self.holds[hold.key]
        hold.task.proc.paused_until = self.k.t
        self.k.wake(hold.task)
        if self.k._trace is not None:
            self.k.log(hold.task.name, f"wakes: its held {hold.key[:8]} write goes on")

    def _note(self, name: str, what: str, about: About | None = None) -> None:
        if self.k._trace is not None:
            cur = self.k.current
            if self.labels is not None:
                label, after = about() if about is not None else ("", "")
                struck = self._struck.pop(cur, None)
                name = f"{name}({label})"
                what += "".join(f" | {x}" for x in (self.labels.faults(struck) if struck else "", after) if x)
            self.k.log(cur.name if cur else "-", f"{name} -> {what}")

    def about(self, *args: Any, _of: Callable[..., Any] | None = None, **kwargs: Any) -> About:
        """A call's arguments (to ``_of``, which names its numbers), as the verbose trace shows
        them. Callers ask only ``if self.labels``: the default trace's calls pay nothing for it."""
        labels = self.labels
        assert labels is not None
        return lambda: (labels.args(args, kwargs, _of), "")


@dataclass(eq=False)
class _Hold:
    task: Task
    key: str
    at_least: float
    after: int


def _role(process: str) -> str:
    return process.rstrip("0123456789")


def _brief(result: Any, error: BaseException | None) -> str:
    if error is not None:
        return type(error).__name__
    if result is None:
        return "ok"
    if isinstance(result, Job):
        return f"job {result.status} seq={result.last_seq} att={result.attempts}"
    if isinstance(result, list):
        return f"{len(result)} items"
    return type(result).__name__


class Versions:
    """When each version of an item was written: what an eventually consistent read sees."""

    def __init__(self) -> None:
        self.at: dict[Any, list[float]] = {}
        self.values: dict[Any, list[Any]] = {}

    def record(self, key: Any, t: float, value: Any) -> None:
        ts = self.at.setdefault(key, [])
        vs = self.values.setdefault(key, [])
        if vs and vs[-1] == value:
            return
        ts.append(t)
        vs.append(value)

    def as_of(self, key: Any, t: float) -> Any:
        ts = self.at.get(key)
        if not ts:
            return None
        i = bisect.bisect_right(ts, t)
        return self.values[key][i - 1] if i else None


class SimJobStore:
    """``JobStore`` over ``MemoryJobStore``, through the wire; index reads are eventually consistent."""

    WRITES = ("create", "acquire_lease", "renew_lease", "release_lease", "save_projection",
              "request_cancel", "postpone", "postpone_waiting", "presume_queued", "delete_unstarted", "steer",
              "close_door", "claim_steer")

    def __init__(self, wire: Wire, inner: MemoryJobStore) -> None:
        self.wire = wire
        self.inner = inner
        self.versions = Versions()
        self.cancel_at: dict[str, float] = {}  # when each job's cancel flag landed
        self.taken: list[tuple[str, str, Any]] = []  # (job, owner, process) of each lease an acquire applied
        self.let_go: set[str] = set()  # owners whose worker asked to release their lease
        for name in self.WRITES:
            setattr(self, name, self._writer(name))

    def _writer(self, name: str) -> Callable[..., Any]:
        fn = getattr(self.inner, name)

        def call(job_id_or_job: Any, *args: Any, **kwargs: Any) -> Any:
            job_id = (job_id_or_job.job_id if isinstance(job_id_or_job, Job)
                      else job_id_or_job.message_id if isinstance(job_id_or_job, SteerClaim) else job_id_or_job)
            if name == "release_lease":
                self.let_go.add(args[0])

            def op() -> Any:
                try:
                    out = fn(job_id_or_job, *args, **kwargs)
                    if name == "acquire_lease":
                        rec = self.inner.items.get(job_id)
                        me = self.wire.k.current
                        if rec is not None and rec.lease_owner == args[0] and me is not None:
                            self.taken.append((job_id, args[0], me.proc))
                    if name == "create":
                        self.cancel_at.pop(job_id, None)  # a job id reused after retention
                    if name == "request_cancel":
                        self.cancel_at.setdefault(job_id, self.wire.k.t)
                    return out
                finally:
                    self._record(job_id)

            about = self.wire.about(job_id_or_job, *args, _of=fn, **kwargs) if self.wire.labels else None
            return self.wire.call(f"jobs.{name}", True, op, job_id, about)

        return call

    def _record(self, job_id: str) -> None:
        self.versions.record(job_id, self.wire.k.t, (self.inner.items.get(job_id), self.inner.due.get(job_id)))

    def get(self, job_id: str, consistent: bool = True) -> Job | None:
        lag = 0.0 if consistent else self.wire.lag()

        def op() -> Job | None:
            if lag:
                found = self.versions.as_of(job_id, self.wire.k.t - lag)
                job = found[0] if found else None
                return None if job is None or job.expired(self.wire.k.now()) else job
            return self.inner.get(job_id)

        about = self.wire.about(job_id) if self.wire.labels else None
        return self.wire.call("jobs.get" if consistent else "jobs.get~", False, op, job_id, about)

    def steer_claim(self, message_id: str) -> SteerClaim | None:
        about = self.wire.about(message_id) if self.wire.labels else None
        return self.wire.call("jobs.steer_claim", False, lambda: self.inner.steer_claim(message_id), message_id, about)

    def _stale_items(self) -> dict[str, tuple[Job | None, float | None]]:
        t = self.wire.k.t
        out = {}
        for job_id in self.versions.at:
            lag = self.wire.lag()
            out[job_id] = self.versions.as_of(job_id, t - lag) or (None, None)
        return out

    def find_due(self, now: float, limit: int) -> list[Job]:
        def op() -> list[Job]:
            items = self._stale_items()
            due = sorted(((d, j) for j, (job, d) in items.items() if job is not None and d is not None and d < now),
                         key=lambda dj: dj[0])
            return [items[j][0] for _, j in due[:limit]]

        return self.wire.call("jobs.find_due~", False, op)

    def list_for_user(self, user_id: str, statuses: frozenset[JobStatus] | None, limit: int,
                      start_key: dict[str, Any] | None, conversation_id: str | None = None) -> JobPage:
        def op() -> JobPage:
            jobs = [job for job, _ in self._stale_items().values() if job is not None]
            return page_of(jobs, user_id, statuses, limit, start_key, self.wire.k.now(), conversation_id)

        about = self.wire.about(user_id, conversation_id) if self.wire.labels else None
        return self.wire.call("jobs.list~", False, op, about=about)


class SimEventLog:
    """``EventLog`` over ``MemoryEventLog``; an eventually consistent read misses recent events."""

    def __init__(self, wire: Wire, inner: MemoryEventLog) -> None:
        self.wire = wire
        self.inner = inner
        self.written: dict[tuple[str, int], float] = {}  # when each live event landed
        # What the invariants read without a round trip: each job's events, when its terminal
        # event landed, and when each step's ``completed`` event did. A job id reused after
        # retention starts a new log at seq 1: its old entries go.
        self.by_job: dict[str, dict[int, Event]] = {}
        self.terminal: dict[str, float] = {}
        self.completed: dict[str, dict[int, float]] = {}

    def events_of(self, job_id: str) -> list[Event]:
        events = self.by_job.get(job_id, {})
        return [events[s] for s in sorted(events)]

    def append(self, job_id: str, event: Event, expires_at: int) -> None:
        def op() -> None:
            self.inner.append(job_id, event, expires_at)
            t = self.wire.k.t
            self.written[(job_id, event.seq)] = t
            if expires_at <= self.wire.k.now():
                return  # born expired (a late write of a job past its retention): no reader sees it
            if event.seq == 1:
                self.by_job[job_id], self.completed[job_id] = {}, {}
                self.terminal.pop(job_id, None)
            self.by_job.setdefault(job_id, {})[event.seq] = event
            if event.terminal:
                self.terminal.setdefault(job_id, t)
            p = event.payload
            if isinstance(p, StepPayload) and p.status == "completed":
                self.completed.setdefault(job_id, {}).setdefault(p.index, t)

        self.wire.call("log.append", True, op, job_id, self.wire.about(job_id, event) if self.wire.labels else None)

    def _visible(self, job_id: str, ev: Event | None, cutoff: float) -> Event | None:
        if ev is None:
            return None
        return ev if self.written.get((job_id, ev.seq), 0.0) <= cutoff else None

    def get(self, job_id: str, seq: int, consistent: bool = True) -> Event | None:
        lag = 0.0 if consistent else self.wire.lag()
        about = self.wire.about(job_id, seq=seq) if self.wire.labels else None
        return self.wire.call(
            "log.get", False, lambda: self._visible(job_id, self.inner.get(job_id, seq), self.wire.k.t - lag), job_id,
            about)

    def read_range(self, job_id: str, first: int, last: int, consistent: bool = True) -> list[Event]:
        lag = 0.0 if consistent else self.wire.lag()

        def op() -> list[Event]:
            cutoff = self.wire.k.t - lag
            return [e for e in self.inner.read_range(job_id, first, last)
                    if self._visible(job_id, e, cutoff) is not None]

        about = self.wire.about(job_id, seq=f"{first}..{last}") if self.wire.labels else None
        return self.wire.call("log.read" if consistent else "log.read~", False, op, job_id, about)


class Through:
    """Any other port over its fake, every method a round trip (``writes``: the ones that write)."""

    def __init__(self, wire: Wire, name: str, inner: Any, writes: frozenset[str]) -> None:
        self._wire = wire
        self._name = name
        self._inner = inner
        self._writes = writes

    def __getattr__(self, method: str) -> Any:
        fn = getattr(self._inner, method)
        if not callable(fn):
            return fn
        label, write = f"{self._name}.{method}", method in self._writes

        def call(*args: Any, **kwargs: Any) -> Any:
            about = self._wire.about(*args, _of=fn, **kwargs) if self._wire.labels else None
            return self._wire.call(label, write, lambda: fn(*args, **kwargs), about=about)

        return call


class SimGateStore(Through):
    """``GateStore`` over ``MemoryGateStore``; its check index (``due_for_check``) is read
    eventually consistently, from each gate's check time as it was a seeded lag ago."""

    def __init__(self, wire: Wire, inner: Any) -> None:
        super().__init__(wire, "gate", inner, GATE_WRITES)
        self._checks = Versions()

    def __getattr__(self, method: str) -> Any:
        if method not in GATE_WRITES:
            return super().__getattr__(method)
        fn = getattr(self._inner, method)

        def write(user_id: str, *args: Any, **kwargs: Any) -> Any:
            labels = self._wire.labels
            after: list[str] = []  # verbose: the gate as this write (each time it applied) left it

            def op() -> Any:
                try:
                    return fn(user_id, *args, **kwargs)
                finally:  # as it is applied (or refused): what the index holds from now on
                    self._checks.record(user_id, self._wire.k.t, self._inner.checks.get(user_id))
                    if labels is not None:
                        after.append(labels.gate(user_id, self._inner.read(user_id).entries))

            def about() -> tuple[str, str]:
                assert labels is not None
                return labels.args((user_id, *args), kwargs, fn), after[-1] if after else ""

            return self._wire.call(f"gate.{method}", True, op, about=about if labels else None)

        return write

    def due_for_check(self, now: float, limit: int) -> list[str]:
        def op() -> list[str]:
            t = self._wire.k.t
            seen = ((self._checks.as_of(u, t - self._wire.lag()), u) for u in self._checks.at)
            return [u for at, u in sorted((at, u) for at, u in seen if at is not None and at < now)][:limit]

        return self._wire.call("gate.due_for_check~", False, op)


GATE_WRITES = frozenset({"enroll", "take", "retake", "pause", "unpause", "remove", "check_later",
                         "unlist_if_empty"})
CONVERSATION_WRITES = frozenset({"commit_turn", "touch"})
AGENT_DATA_WRITES = frozenset({"record_step_effect", "record_usage"})
PUSH_WRITES = frozenset({"add", "remove"})

__all__ = ["AGENT_DATA_WRITES", "CONVERSATION_WRITES", "GATE_WRITES", "PUSH_WRITES", "FaultPlan", "SimEventLog",
           "SimGateStore", "SimJobStore", "Stats", "Through", "Versions", "Wire", "replace"]
