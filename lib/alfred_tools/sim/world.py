"""One simulated history: the stores, the processes (workers, sweeper, API requests), the users.

Everything is drawn from the seed: the limits, the fault profile, how many users and jobs, what
each job's agent does, when users cancel, answer or watch, when processes crash or pause. The
real runtime runs in it: ``JobService`` for every API request, ``entry.worker.handle_message`` and
``JobRunner`` (with its lease keeper and background writes) in every worker, ``Sweeper`` on its
schedule. Faults are on for the first part of the history (``fault_seconds``), then off, so
every liveness bound is measured from a quiet moment.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from alfred_jobs.adapters.memory import (
    MemoryAgentDataStore,
    MemoryConversationStore,
    MemoryEventLog,
    MemoryGateStore,
    MemoryJobStore,
    MemoryStreamSlots,
)
from alfred_jobs.adapters.push_memory import MemoryPushStore
from alfred_jobs.domain.events import replay
from alfred_jobs.domain.gate import Gate
from alfred_jobs.domain.models import ChatRequest, JobStatus, refold
from alfred_jobs.durability.runner import JobRunner, Outcome
from alfred_jobs.entry.worker import handle_message
from alfred_jobs.exceptions import ClientError, EventsExpired, RetryLater, StoreError, TooManyRequests
from alfred_jobs.ports import Deps
from alfred_jobs.service.jobs import JobService
from alfred_jobs.service.stream_slots import StreamCap, StreamLease
from alfred_jobs.service.sweeper import Sweeper
from alfred_jobs.service.watch import WatchHub
from alfred_tools.sim.agent import Observer, SimAgent
from alfred_tools.sim.aio import VirtualLoop
from alfred_tools.sim.kernel import EPOCH, Kernel, Process, SimClock, SimPending, SimTasks
from alfred_tools.sim.push import SimNotifier, shared_devices
from alfred_tools.sim.queue import QueueFaults, SimQueue
from alfred_tools.sim.settings import sim_settings
from alfred_tools.sim.store import (
    AGENT_DATA_WRITES,
    CONVERSATION_WRITES,
    PUSH_WRITES,
    FaultPlan,
    SimEventLog,
    SimGateStore,
    SimJobStore,
    Stats,
    Through,
    Wire,
)
from alfred_tools.sim.verbose import Labels

# Bounds, in virtual seconds (docs/testing.md says why each is what it is).
SETTLE_SECONDS = 600.0   # after faults stop, every job ends or waits on an open question
CANCEL_SECONDS = 180.0   # a cancel answered 202 ends its job (from when faults stopped, at worst)
# Guarantee 7: a cancel recorded this long before a step boundary stops the job there (the
# keeper polls every ``cancel_poll_seconds``; a boundary whose keeper is two periods behind reads
# the record itself; the rest is the boundary's own write, which can be slow).
CANCEL_BOUNDARY_SECONDS = 2 * 0.5 + 2.0
# Guarantee 7's "stops reply streaming within about a second": a running job's cancel is seen
# (by a step's ``ctx.cancelled()``, by the reply's check before each chunk) within two poll
# periods of landing. A check that goes on has a read of the record sent less than two periods
# before it (or it reads the record itself, strongly consistent, and sees the cancel); that read,
# strongly consistent, missed the cancel only if it was sent before the cancel landed. (A float's
# hundredth on top.)
CANCEL_SEEN_SECONDS = 2 * 0.5 + 0.01
# Once a job's way is clear (a slot free, its turn in its conversation), it starts within this:
# the hand-off sends it at once; a lost message is the sweeper's after a grace period and a sweep.
WAKEUP_GRACE_SECONDS = 10.0  # a startable job with no message for it this long lost its wake-up
HANDOFF_SECONDS = 30.0 + 2 * 72.0 + 30.0 + 16.0
# An API call with no answer by then is a lost answer to the client (status 0), which retries it
# as the web client retries a network error or a 5xx. Below API Gateway's 29 s integration limit
# (the API function's Timeout, tests/sim/test_world.py): no client waits on a request until the
# 504 it would get there, so the 504 needs no model of its own. A frozen request's process goes
# on, its writes landing late (more than AWS allows: a real API Lambda ends at its 29 s timeout,
# only a write already on the wire landing after it; the simulator's adversary is the stronger).
CLIENT_TIMEOUT = 10.0
# A worker's invocation budget (a Lambda's timeout), drawn per worker: None is a local worker
# without one; the short ones make hand-offs frequent, and the first part of an attempt, which
# always runs, sometimes overrun them (the Lambda is then killed at its timeout).
INVOCATION_BUDGETS = (None, None, 120.0, 30.0, 10.0, 7.0)
# A job handed on at its budget starts its next attempt as soon as a worker is free: a worker
# idle this long while it waits means its message or its lease was left behind.
HANDED_ON_SECONDS = 5.0
SLOT_WRITES = frozenset({"take", "renew", "release"})  # the stream slots' writes (a round trip each)
# The watch hub's poll pace (after something new, after a quiet spell), drawn per history: the
# stream's own (50-200 ms) in some, a coarser one in most. A poll is the stream's unit of work, so
# the coarse pace keeps a history's cost down (issue 24: 10,000 histories in 3 minutes); the stale
# reads it meets and the interleavings with the workers are the same kinds, only fewer of them.
WATCH_PACES = ((0.05, 0.2),) + ((0.25, 1.0),) * 7


@dataclass
class Config:
    """One history's shape, drawn from its seed."""

    users: int
    jobs: int
    workers: int
    max_running: int
    max_active: int
    fault_seconds: float
    plan: FaultPlan
    queue: QueueFaults
    crash_every: float       # mean seconds between process crashes while faults are on (0: none)
    pause_every: float       # mean seconds between process pauses (SIGSTOP) while faults are on
    api_crash: float         # share of API requests whose process dies mid-request
    flood: bool              # one user submits many jobs at once
    busy_queue: bool         # the queue is shared with a busy app: its backlog is never zero
    retention: int           # seconds a job lives (short in some histories: ids come back)
    reuse: bool              # a user reuses an Idempotency-Key after retention (guarantee 11)
    stream_cap: int = 20     # open streams per user across the stream processes (issue 26)
    slot_lease: float = 30.0  # a stream slot's lease (a killed stream process's slots free within it)
    watch_pace: tuple[float, float] = WATCH_PACES[0]  # the watch hub's poll intervals (min, max)
    ask_share: float = 0.25  # the share of jobs that ask their user (every one in question-heavy histories)


def r_busy(k: Kernel) -> Callable[[], int]:
    """Other traffic's share of a shared queue's backlog, as ``ApproximateNumberOfMessages`` says it."""
    return lambda: k.rng.randint(1, 40)


def draw_config(k: Kernel, min_jobs: int) -> Config:
    r = k.rng
    calm = r.random() < 0.15
    plan = FaultPlan() if calm else FaultPlan(
        throttle=r.choice([0.0, 0.005, 0.02]), lost_write=r.choice([0.0, 0.003, 0.01]),
        ambiguous=r.choice([0.0, 0.005, 0.02]), stale=r.choice([0.0, 0.2, 0.6]),
        long_lag=r.choice([0.0, 0.1, 0.3]))
    config = Config(
        users=r.randint(1, 4), jobs=min_jobs, workers=r.choice([1, 1, 2, 3]),
        max_running=r.randint(1, 2), max_active=r.randint(3, 8),
        fault_seconds=r.uniform(30, 120), plan=plan if calm else replace(
            plan, hiccup=r.choice([0.0, 0.01, 0.03]), freeze=r.choice([0.0, 0.001, 0.003]),
            held=r.choice([0.0, 0.01, 0.03])),
        queue=QueueFaults(duplicate=0.0 if calm else r.choice([0.0, 0.05, 0.2]),
                          lost_delete=0.0 if calm else r.choice([0.0, 0.05])),
        crash_every=0.0 if calm else r.choice([0.0, 20.0, 60.0]),
        pause_every=0.0 if calm else r.choice([0.0, 30.0, 90.0]),
        api_crash=0.0 if calm else r.choice([0.0, 0.03, 0.1]),
        flood=r.random() < 0.3, busy_queue=r.random() < 0.5,
        **({"retention": r.randint(150, 300), "reuse": True} if r.random() < 0.25
           else {"retention": 7 * 86400, "reuse": False}))
    config = replace(config, stream_cap=r.choice([2, 3, 5, 20]), slot_lease=r.choice([10.0, 30.0]),
                     watch_pace=r.choice(WATCH_PACES))
    return _question_heavy(k, config, calm)


QUESTION_HEAVY_SHARE = 1 / 8


def _question_heavy(k: Kernel, config: Config, calm: bool) -> Config:
    """In one history of eight every job asks its user: the pause, the answer's resume and the
    slot handed on while a question is open happen for every job, where the uniform draw (a
    quarter of the jobs ask) rarely makes two of them meet a fault at once. Such a history has
    one run slot per user more often (3 in 4), at least two workers (a redelivery and a successor
    racing the asker), and more ``held`` writes (a Lambda frozen with a write in flight: the same
    fault, struck more often). Drawn from a stream of its own, so that the other histories are the
    ones their seeds made before (the seeds the docs and ``OPEN_FINDINGS`` name replay as written).
    """
    aside = random.Random(f"question-heavy/{k.seed}")
    if aside.random() >= QUESTION_HEAVY_SHARE:
        return config
    max_running = 1 if aside.random() < 0.75 else config.max_running
    workers = max(config.workers, aside.choice([2, 3, 4]))
    held = aside.choice([0.01, 0.03, 0.05])
    return replace(config, ask_share=1.0, max_running=max_running, workers=workers,
                   plan=config.plan if calm else replace(config.plan, held=held))


def result_job(body: str) -> str:
    """The job id of a queue message's body (one the handler ran, so well formed)."""
    return str(json.loads(body)["job_id"])


@dataclass
class Accepted:
    user: str
    conversation: str
    at: float
    key: str | None = None
    sent: float = 0.0         # when its first submit went out
    abandoned: bool = False   # its user will never answer its question
    answered: bool = False


@dataclass
class SteerSent:
    """A message a user steered (``multitask: steer``), and every 202 it got (a repeat with its
    key must get the same): (steered, job id)."""

    user: str
    conversation: str
    key: str | None
    outcomes: list[tuple[bool, str]] = field(default_factory=list)
    at: float = 0.0  # when the first 202 came (the clock's time, as a record's created_at)


@dataclass
class Findings:
    violations: list[str] = field(default_factory=list)
    checks: dict[str, int] = field(default_factory=dict)

    def check(self, name: str, ok: bool, detail: Callable[[], str]) -> None:
        self.checks[name] = self.checks.get(name, 0) + 1
        if not ok:
            self.violations.append(f"[{name}] {detail()}")


class World:
    def __init__(self, seed: int, trace: Callable[[str], None] | None = None, min_jobs: int = 10,
                 verbose: bool = False) -> None:
        self.seed = seed
        self.k = k = Kernel(seed, trace)
        self.cfg = cfg = draw_config(k, min_jobs)
        self.settings = sim_settings({
            "max_running_per_user": cfg.max_running, "max_active_per_user": cfg.max_active,
            "retention_seconds": cfg.retention, "input_timeout_seconds": min(86400.0, cfg.retention / 2),
            "agent": "demo", "deployment": "local", "auth_mode": "local",
            "max_streams_per_user": cfg.stream_cap, "stream_slot_lease_seconds": cfg.slot_lease})
        self.stats = Stats()
        self.wire = Wire(k, cfg.plan, self.stats)
        self.wire.faults_until = cfg.fault_seconds
        if verbose and trace is not None:
            self.wire.labels = Labels(seed)
        clock = SimClock(k)
        s = self.settings
        self.inner_jobs = MemoryJobStore(s.pending_grace_seconds, clock=clock)
        self.inner_log = MemoryEventLog(clock=clock)
        self.inner_gates = MemoryGateStore(clock=clock)
        self.inner_conversations = MemoryConversationStore(clock=clock)
        self.jobs = SimJobStore(self.wire, self.inner_jobs)
        self.log = SimEventLog(self.wire, self.inner_log)
        self.gates = SimGateStore(self.wire, self.inner_gates)
        self.conversations = Through(self.wire, "conv", self.inner_conversations, CONVERSATION_WRITES)
        self.agent_data = Through(self.wire, "agent", MemoryAgentDataStore(clock=clock), AGENT_DATA_WRITES)
        self.inner_push = MemoryPushStore(s.max_push_subscriptions, clock)
        self.push = Through(self.wire, "push", self.inner_push, PUSH_WRITES)
        self.inner_slots = CheckedSlots(self, clock)
        self.stream_slots = Through(self.wire, "slots", self.inner_slots, SLOT_WRITES)
        self.notifier = SimNotifier(wire=self.wire, store=self.inner_push)
        self.queue = SimQueue(k, self.wire, visibility_timeout=720.0, max_receives=5, faults=cfg.queue,
                              others=r_busy(k) if cfg.busy_queue else None)
        self.seen = Observer()
        self.found = Findings()
        self.accepted: dict[str, Accepted] = {}
        self.cancels: dict[str, float] = {}  # job -> when a cancel was answered 202
        self.steers: dict[str, SteerSent] = {}  # the text of each steered message (unique) -> what it got
        self.users_left = 0
        self.api_calls = 0
        self.status_counts: dict[int, int] = {}
        self._ids = 0
        self.workers: list[Process] = []
        self.quiet_at: float | None = None
        self.stream = Stream(self)
        self.clear_since: dict[str, float] = {}
        self.late: set[str] = set()
        self.handoffs_checked = False
        self.cleared_in_faults: set[str] = set()
        self.idle_since: dict[str, float] = {}  # worker -> since when it waits on the queue
        # job -> (when handed on, ``jobs.taken``'s length as its handing delivery began)
        self.handed: dict[str, tuple[float, int]] = {}

    # ---- processes -------------------------------------------------------------------------

    def deps(self, proc: Process) -> Deps:
        return Deps(settings=self.settings, jobs=self.jobs, log=self.log,
                    conversations=self.conversations, queue=self.queue,
                    agent_data=self.agent_data, gates=self.gates,
                    push=self.push, notifier=self.notifier, stream_slots=self.stream_slots,
                    clock=SimClock(self.k), tasks=SimTasks(self.k, proc), new_id=self.new_id)

    def new_id(self) -> str:
        self._ids += 1
        return f"{self.seed & 0xFFFFFFFF:08x}{self._ids:024x}"

    @property
    def faulty(self) -> bool:
        return self.k.t < self.cfg.fault_seconds

    def start_worker(self, n: int) -> Process:
        proc = Process(f"worker{n}")
        deps = self.deps(proc)
        runner = JobRunner(deps, SimAgent(deps.clock, self.seen, self._entering, self._going_on))
        budget = self.k.rng.choice(INVOCATION_BUDGETS)
        invocations = [0]

        def loop() -> None:
            while True:
                self.idle_since[proc.name] = self.k.t
                for d in self.queue.receive(1, 20.0):
                    self.idle_since.pop(proc.name, None)
                    invocations[0] += 1
                    until = None if budget is None else self.k.t + budget
                    if until is not None:
                        self.k.spawn(Process("lambda"), f"lambda/{proc.name}",
                                     lambda n=invocations[0], until=until: self._timeout(proc, invocations, n, until),
                                     delay=budget)
                    try:
                        mark = len(self.jobs.taken)
                        result = handle_message(deps, runner, d.body, d.receipt, d.receives, until)
                        self._no_lease_left(proc, mark)
                        if result is not None and result.outcome is Outcome.HANDED_ON and not self.faulty:
                            self.handed[result_job(d.body)] = (self.k.t, mark)
                        self.queue.delete(d.receipt)
                    except RetryLater:
                        pass
                    except StoreError:
                        pass  # a failed delete: the message comes back
                    finally:
                        invocations[0] += 1  # this invocation is over: its timeout kills nothing

        self.k.spawn(proc, f"{proc.name}/poll", loop)
        return proc

    def _timeout(self, proc: Process, invocations: list[int], n: int, until: float) -> None:
        """The Lambda timeout of invocation ``n``: if it still runs, its process is killed (and a
        new one takes its place, as Lambda starts another execution environment)."""
        if proc.dead or invocations[0] != n:
            return
        self.k.log("lambda", f"TIMEOUT {proc.name} at {until:.1f}: killed")
        self.k.kill(proc)
        # A kill is a crash, faults or not: a wake-up the killed process was about to send (a
        # finalize's hand-off) is the sweeper's to repair, not lost by the protocol. The ways clear
        # at the next check are taken as cleared in faults (sim seed 2423: a worker killed at its
        # timeout as it finished a cancel; the next job of the user waited for the sweeper).
        self.handoffs_checked = False
        self.idle_since.pop(proc.name, None)
        if proc in self.workers:
            self.workers[self.workers.index(proc)] = self.start_worker(len(self.workers) + self.k.rng.randrange(1000))

    def _no_lease_left(self, proc: Process, mark: int) -> None:
        """A delivery handled: the leases it took are released, handed to a successor or ended
        with the job. A live lease its own worker left behind (and never asked to release) holds
        the job for a lease period with nobody running it, and costs an attempt: issue 12's
        ``acquire_lease`` meeting its own lease on the SDK's retry dropped the delivery so."""
        now = self.k.now()
        for job_id, owner, taker in self.jobs.taken[mark:]:
            if taker is not proc:
                continue
            rec = self.inner_jobs.items.get(job_id)
            left = (rec is not None and rec.lease_owner == owner and rec.lease_live(now)
                    and not rec.terminal and not rec.expired(now) and owner not in self.jobs.let_go)
            self.found.check("no_lease_left_behind", not left,
                             lambda job_id=job_id: f"a worker left its own live lease on {job_id}")  # type: ignore[misc]

    def start_sweeper(self) -> None:
        def schedule() -> None:
            n = 0
            while True:
                self.k.sleep(self.settings.sweep_seconds * (0.8 + 0.4 * self.k.rng.random()))
                n += 1
                proc = Process(f"sweeper{n}")
                sweeper = Sweeper(self.deps(proc))
                self.k.spawn(proc, f"sweeper{n}", lambda s=sweeper: self._sweep(s))
                if self.faulty and self.cfg.crash_every and self.k.rng.random() < 0.2:
                    self.k.spawn(Process("chaos"), "chaos", lambda p=proc: self._kill_later(p, 0.0, 0.05))

        self.k.spawn(Process("scheduler"), "scheduler", schedule)

    @staticmethod
    def _sweep(sweeper: Sweeper) -> None:
        try:
            sweeper.sweep()
        except StoreError:
            pass  # the invocation fails (its index read did); the next one runs on schedule

    def _kill_later(self, proc: Process, lo: float, hi: float) -> None:
        self.k.sleep(lo + (hi - lo) * self.k.rng.random())
        if not proc.dead:
            self.k.log("chaos", f"SIGKILL {proc.name}")
            self.k.kill(proc)

    def start_chaos(self) -> None:
        cfg, r = self.cfg, self.k.rng

        def crashes() -> None:
            while self.faulty:
                self.k.sleep(r.expovariate(1 / cfg.crash_every))
                if not self.faulty:
                    return
                i = r.randrange(len(self.workers))
                self.k.log("chaos", f"SIGKILL {self.workers[i].name}")
                self.k.kill(self.workers[i])
                self.k.sleep(r.uniform(0.5, 5.0))
                self.workers[i] = self.start_worker(len(self.workers) + r.randrange(1000))

        def pauses() -> None:
            while self.faulty:
                self.k.sleep(r.expovariate(1 / cfg.pause_every))
                if not self.faulty:
                    return
                w = r.choice(self.workers)
                until = self.k.t + r.choice([r.uniform(1, 10), r.uniform(25, 90)])
                self.k.log("chaos", f"SIGSTOP {w.name} until {until:.1f}")
                w.paused_until = until

        def stream_crashes() -> None:
            while self.faulty:
                self.k.sleep(r.expovariate(1 / (2 * cfg.crash_every)))
                if self.faulty:
                    self.stream.crash()

        chaos = Process("chaos")
        if cfg.crash_every:
            self.k.spawn(chaos, "chaos/crash", crashes)
            self.k.spawn(chaos, "chaos/crash-stream", stream_crashes)
        if cfg.pause_every:
            self.k.spawn(chaos, "chaos/pause", pauses)

    # ---- the API, as a client sees it -------------------------------------------------------

    def api(self, what: str, fn: Callable[[JobService], Any]) -> tuple[int, Any]:
        """One HTTP request on a process of its own: (status, value or error); status 0 when no
        answer came (the process died, or took too long)."""
        self.api_calls += 1
        proc = Process(f"api{self.api_calls}")
        service = JobService(self.deps(proc))
        out: list[tuple[int, Any]] = []
        faulty = self.faulty

        def request() -> None:
            try:
                out.append((200, fn(service)))
            except ClientError as exc:
                out.append((exc.status, exc))
            except StoreError as exc:
                out.append((503, exc))
            except Exception as exc:
                out.append((500, exc))

        task = self.k.spawn(proc, f"api{self.api_calls}/{what}", request, quiet=True)
        if faulty and self.k.rng.random() < self.cfg.api_crash:
            self.k.spawn(Process("chaos"), "chaos", lambda: self._kill_later(proc, 0.0, 0.03))
        try:
            SimPending(self.k, task).result(CLIENT_TIMEOUT)
        except TimeoutError:
            pass
        except BaseException:
            pass
        status, value = out[0] if out else (0, None)
        self.status_counts[status] = self.status_counts.get(status, 0) + 1
        self.found.check("no_5xx_unless_the_store_fails", status != 500 and (status != 503 or faulty),
                         lambda: f"{what} answered {status}: {value!r} at t={self.k.t:.2f} (faults on: {faulty})")
        return status, value

    # ---- users -------------------------------------------------------------------------------

    def start_users(self) -> None:
        cfg, r = self.cfg, self.k.rng
        counts = [1] * cfg.users
        for _ in range(cfg.jobs - cfg.users):
            counts[r.randrange(cfg.users)] += 1
        flooder = r.randrange(cfg.users) if cfg.flood else -1
        for u in range(cfg.users):
            self.users_left += 1
            self.k.spawn(Process(f"user{u}"), f"user{u}", lambda u=u, n=counts[u]: self._user(u, n, u == flooder))
        self.k.spawn(Process("devices"), "devices",
                     lambda: shared_devices(self.k, self.push, cfg.users, lambda: self.users_left > 0))

    def _message(self) -> str:
        r = self.k.rng
        parts = [f"steps={r.randint(0, 4)}", f"think={r.uniform(0.2, 3):.2f}", f"step={r.uniform(0.2, 4):.2f}",
                 f"chunks={r.randint(1, 8)}"]
        if r.random() < self.cfg.ask_share:
            parts.append(f"ask={r.randint(1, 3)}")
            if r.random() < 0.5:
                parts.append(f"ask_after={r.uniform(0.2, 3):.2f}")
        if r.random() < 0.1:
            parts.append(f"flaky={r.randint(1, 3)}")
        return "sim " + " ".join(parts)

    def _user(self, u: int, n: int, flood: bool) -> None:
        r = self.k.rng
        user = f"user{u}"
        conversations: list[str] = []
        followers = []
        for i in range(n):
            self.k.sleep(r.uniform(0, 0.5) if flood else r.uniform(0, 15))
            if conversations and r.random() < 0.6:
                conv = r.choice(conversations)
            else:
                conv = f"{u:02d}{len(conversations):02d}".ljust(32, "c")
                conversations.append(conv)
            multitask = r.choices(["enqueue", "reject", "interrupt"], [0.6, 0.2, 0.2])[0]
            req = ChatRequest.model_validate({"message": self._message(), "conversation_id": conv,
                                              "multitask": multitask})
            key = f"{user}-{i}" if r.random() < 0.8 else None
            proc = Process(f"{user}.{i}")
            followers.append(self.k.spawn(proc, f"{user}.{i}", lambda req=req, key=key: self._job(user, req, key)))
        for f in followers:
            SimPending(self.k, f).join()
        if self.cfg.reuse and conversations and r.random() < 0.7:
            self._reuse(user, conversations[0])
        self.users_left -= 1

    def _reuse(self, user: str, conversation: str) -> None:
        """Submit again with the user's first Idempotency-Key once its job expired: a new job."""
        key = f"{user}-0"
        old = next((j for j, a in self.accepted.items() if a.key == key), None)
        if old is None:
            return
        rec = self.inner_jobs.items.get(old)
        if rec is None:
            return
        self.k.sleep(max(0.0, rec.expires_at - self.k.now()) + self.k.rng.uniform(1, 30))
        req = ChatRequest.model_validate({"message": self._message(), "conversation_id": conversation})
        self._job(user, req, key, reuse=True)

    def _job(self, user: str, req: ChatRequest, key: str | None, reuse: bool = False) -> None:
        r = self.k.rng
        job_id = None
        sent = self.k.t
        for attempt in range(8):
            status, value = self.api("submit", lambda s: s.submit(user, req, key))
            if reuse:
                self.found.check("key_free_after_retention", status != 409,
                                 lambda status=status, value=value: f"{user} reused {key} after retention: "  # type: ignore[misc]
                                                                    f"{status} {value!r}")
            if status == 200:
                job_id = value.job.job_id
                break
            if key is None:
                return  # no key: the user would type it again, as a new message
            if status == 429 and isinstance(value, TooManyRequests):
                self.k.sleep(value.retry_after)
            elif status in (0, 500, 503):
                self.k.sleep(min(30.0, 2.0 ** attempt) * (0.5 + r.random()))
            else:
                return  # 409 (reject) and other 4xx: the client shows it
        if job_id is None:
            return
        if req.multitask == "steer" and self._steered(user, req, key, value):
            return  # it joined a job under way: that job's own actors follow it
        if reuse or job_id not in self.accepted:
            self.accepted[job_id] = Accepted(user, req.conversation_id or "", self.k.t, key=key, sent=sent)
            self.cancels.pop(job_id, None)
        if r.random() < 0.15:
            self.k.spawn(Process(f"cancel-{job_id[-4:]}"), "cancel", lambda: self._cancel(user, job_id))
        if r.random() < 0.15:
            self.k.spawn(Process(f"watch-{job_id[-4:]}"), "watch", lambda: self._watch(job_id))
        if req.multitask != "steer" and r.random() < 0.3:
            conv = req.conversation_id or self.accepted[job_id].conversation
            self.k.spawn(Process(f"steer-{job_id[-4:]}"), "steer", lambda: self._steer(user, conv))
        self._follow(user, job_id)

    # ---- steering (guarantee 15) ---------------------------------------------------------------

    def _steer(self, user: str, conversation: str) -> None:
        """A user adds a message to the conversation's job at a random moment of it (before it
        starts, while it thinks, acts, asks or replies, or after it ended), with an Idempotency-Key
        or without, resent like the web outbox; its text is unique, so the invariants find it."""
        r = self.k.rng
        self.k.sleep(r.choice([r.uniform(0, 2), r.uniform(0, 20), r.uniform(10, 60)]))
        n = len(self.steers)
        text = f"{self._message()} #steer-{user}-{n}"
        key = f"{user}-steer-{n}" if r.random() < 0.7 else None
        self.steers[text] = SteerSent(user, conversation, key)
        req = ChatRequest.model_validate({"message": text, "conversation_id": conversation, "multitask": "steer"})
        self._job(user, req, key)

    def _steered(self, user: str, req: ChatRequest, key: str | None, first: Any) -> bool:
        """Record a steer's 202 (and, with a key, maybe a repeat's: a double tap, a resend after a
        lost answer); whether it joined a job under way."""
        sent = self.steers[req.message]
        sent.outcomes.append((bool(first.steered), first.job.job_id))
        sent.at = sent.at or self.k.now()
        if key is not None and self.k.rng.random() < 0.3:
            self.k.sleep(self.k.rng.uniform(0, 30))
            status, again = self.api("submit", lambda s: s.submit(user, req, key))
            if status == 200:
                sent.outcomes.append((bool(again.steered), again.job.job_id))
        return bool(first.steered)

    def _cancel(self, user: str, job_id: str, delay: float | None = None) -> None:
        self.k.sleep(self.k.rng.uniform(0, 25) if delay is None else delay)
        for _ in range(4):
            status, value = self.api("cancel", lambda s: s.cancel(user, job_id))
            if status == 200:
                _, done = value
                if not done:
                    self.cancels.setdefault(job_id, self.k.t)  # the 202
                self.accepted[job_id].abandoned = True  # who pressed Stop answers no question
                return
            if status not in (0, 503):
                return
            self.k.sleep(2.0)

    def _follow(self, user: str, job_id: str) -> None:
        """Poll the job as the page does, answering its questions (late, twice, or never)."""
        r, a = self.k.rng, self.accepted[job_id]
        while True:
            self.k.sleep(r.uniform(2, 8))
            status, job = self.api("get", lambda s: s.get(user, job_id))
            if status != 200:
                continue
            if job.terminal:
                return
            if job.status is JobStatus.RUNNING and not a.abandoned and r.random() < 0.04:
                self._cancel(user, job_id, delay=0.0)  # Stop, pressed while the page shows it running
                continue
            if job.status is JobStatus.WAITING:
                if a.abandoned:
                    return
                if r.random() < 0.3:
                    self._two_devices(job_id)
                if r.random() < 0.15:
                    a.abandoned = True
                    return
                self.k.sleep(r.choice([r.uniform(0, 3), r.uniform(10, 60)]))
                self._answer(user, job_id)
                if r.random() < 0.1:
                    self._answer(user, job_id)  # a second device answers too

    def _answer(self, user: str, job_id: str) -> None:
        def question(s: JobService) -> str | None:
            q = replay(s.journal.read_all(job_id)).question
            return q.input_id if q else None

        status, input_id = self.api("question", question)
        if status == 200 and input_id:
            status, _ = self.api("answer", lambda s: s.answer(user, job_id, input_id, True))
            if status == 200:
                self.accepted[job_id].answered = True

    def _watch(self, job_id: str) -> None:
        """A page that opens the job's stream from a random cursor, and reconnects now and then."""
        r = self.k.rng
        for _ in range(r.choice([1, 1, 2, 3])):  # a second device, a reopened tab
            self.k.sleep(r.uniform(0, 15))
            job = self.inner_jobs.items.get(job_id)
            head = max(self.log.by_job.get(job_id, {0: None}))
            top = max(head, job.last_seq if job else 0)
            # Most reconnects come from a page that had seen everything (its cursor is the head);
            # the rest from anywhere.
            cursor = top if r.random() < 0.5 else r.randint(0, top)
            self.stream.open(job_id, cursor)

    def _two_devices(self, job_id: str) -> None:
        """The push of a question opens the job on two devices at once: one at the head, the other
        a moment later from further back. The record shows the question at once, so the first
        page's buffer starts just below it, and the second page's events are read below that
        buffer while the last of them may be under a second old: none may be missed (issue 12's
        strongly consistent backfill)."""
        r = self.k.rng
        job = self.inner_jobs.items.get(job_id)
        if job is None:
            return
        head = max(self.log.by_job.get(job_id, {0: None}))
        self.stream.open(job_id, max(head, job.last_seq))
        below = job.last_seq - 2
        if below >= 0:
            self.stream.open(job_id, r.choice([0, r.randint(0, below), below]), delay=r.uniform(0.02, 0.3))

    # ---- safety, checked as it happens ------------------------------------------------------

    def _entering(self, job_id: str, user_id: str, step: int, attempt: int) -> None:
        """An agent call starts: no more than ``max_running`` of the user's jobs run at once, a
        step whose ``completed`` event is in the log never runs again (guarantee 4), and none
        starts well after a cancel landed (guarantee 7).

        A call of an attempt older than the record's (a process paused between its last check and
        the call, woken after another worker took the job over) is not held to the last two: no
        check can be atomic with the call after it, which is why steps carry idempotency keys.
        """
        rec = self.inner_jobs.items.get(job_id)
        if rec is not None and attempt < rec.attempts:
            return
        # While the store fails, a boundary whose cancel read is refused goes on (the next one
        # reads again): one step more. With the store healthy, the bound holds.
        cancelled = self.jobs.cancel_at.get(job_id)
        late = self.k.t - cancelled if cancelled is not None and not self.faulty else 0.0
        self.found.check("cancel_stops_at_the_next_boundary", late <= CANCEL_BOUNDARY_SECONDS,
                         lambda: f"the agent starts on {job_id} (step {step}) {late:.2f}s after its cancel landed")
        if step:
            self.found.check("completed_step_never_runs_again", step not in self.log.completed.get(job_id, {}),
                             lambda: f"step {step} of {job_id} starts again after it completed")
        now = self.k.now()
        others = set()
        for (j, att), n in self.seen.inside.items():
            if n <= 0 or j == job_id:
                continue
            rec = self.inner_jobs.items.get(j)
            if rec is None or rec.user_id != user_id or rec.terminal or not rec.lease_live(now):
                continue
            if att != rec.attempts:
                # An earlier attempt's call: its process was killed inside it (the call never
                # leaves), or it is paused and fenced; the job's slot is the current attempt's,
                # which counts while it is inside. (Seed 4020: attempts 1 and 2 killed mid-step,
                # attempt 3 stopped at the boundary that found the job past its retention and
                # handed its slot on, its lease left to run out: the job was counted as running.)
                continue
            if j in self.log.terminal:
                continue
            others.add(j)
        self.found.check("max_running_per_user", len(others) < self.settings.max_running_per_user,
                         lambda: f"{job_id} starts while {sorted(others)} of {user_id} run")

    def _going_on(self, job_id: str, attempt: int, where: str, at: float) -> None:
        """The job went on at ``at`` (a step asked ``ctx.cancelled()``, or the reply's chunk was
        taken) with no cancel seen: with the store healthy, a cancel is seen within about a second
        of landing (guarantee 7: it stops reply streaming within about a second; the keeper polls
        every ``cancel_poll_seconds``, strongly consistent, and a check whose keeper is two periods
        behind reads the record itself). An attempt older than the record's is not held to it, as
        in ``_entering``."""
        cancelled = self.jobs.cancel_at.get(job_id)
        if cancelled is None or self.faulty:
            return
        rec = self.inner_jobs.items.get(job_id)
        if rec is not None and attempt < rec.attempts:
            return
        late = at - max(cancelled, self.cfg.fault_seconds)
        self.found.check("cancel_seen_within_a_second", late <= CANCEL_SEEN_SECONDS,
                         lambda: f"{job_id} goes on in {where} at {at:.2f}, {late:.2f}s after its cancel landed")

    def run(self) -> None:
        for n in range(self.cfg.workers):
            self.workers.append(self.start_worker(n))
        self.start_sweeper()
        self.stream.start()
        self.start_chaos()
        self.start_users()
        self.k.spawn(Process("monitor"), "monitor", self._monitor)
        horizon = self.cfg.fault_seconds + SETTLE_SECONDS + 600.0
        self.k.run(horizon, stop=lambda: self.quiet_at is not None)

    def _monitor(self) -> None:
        """Checks the active limit every second and the hand-offs every two, and ends the history
        once it is quiet (every user done, every job ended and finalized or waiting on a question
        nobody will answer), looked at every five."""
        n = 0
        while True:
            self.k.sleep(1.0)
            n += 1
            for user, (entries, _) in self.inner_gates.gates.items():
                self.found.check("gate_within_max_active", len(entries) <= self.settings.max_active_per_user,
                                 lambda user=user, entries=entries: f"{user}'s gate holds {len(entries)} entries")  # type: ignore[misc]
            self.stream.check_slots()
            if not self.faulty and n % 2 == 0:
                self._check_handoffs()
                self._check_handed_on()
            if self.faulty or self.users_left or n % 5:
                continue
            if self.k.t > self.cfg.fault_seconds + SETTLE_SECONDS or self._quiet():
                self.quiet_at = self.k.t
                return

    def _check_handoffs(self) -> None:
        """A user's next job starts within ``HANDOFF_SECONDS`` of its way clearing (for ways that
        cleared after the faults stopped)."""
        now = self.k.now()
        clear = set()
        for user in self.inner_gates.gates:
            entries = self.inner_gates._live(user)
            gate = Gate(tuple(entries.values()), sum(e.running for e in entries.values()))
            for e in gate.startable(self.settings.max_running_per_user):
                rec = self.inner_jobs.items.get(e.job_id)
                if rec is None or rec.expired(now) or rec.terminal or rec.lease_live(now):
                    continue
                if e.job_id in self.log.terminal:
                    continue  # ended, its finalize under way
                clear.add(e.job_id)
                if not self.handoffs_checked:
                    self.cleared_in_faults.add(e.job_id)  # its wake-up may have been lost to a fault
                since = self.clear_since.setdefault(e.job_id, self.k.t)
                if (self.k.t - since > WAKEUP_GRACE_SECONDS and e.job_id not in self.cleared_in_faults
                        and e.job_id not in self.late and not self.queue.holds(e.job_id)):
                    # Nothing will start it but the sweeper's repair, a backstop for lost messages:
                    # with the faults over, a wake-up (the hand-off's message, a give-back's
                    # resend) was dropped by the protocol itself.
                    self.late.add(e.job_id)
                    self.found.check("no_wakeup_lost", False,
                                     lambda e=e, since=since: f"{e.job_id}'s way has been clear since "  # type: ignore[misc]
                                                              f"{since:.1f} with no message to start it")
                if self.k.t - since > HANDOFF_SECONDS and e.job_id not in self.late:
                    self.late.add(e.job_id)
                    self.found.check("next_job_starts_once_its_way_is_clear", False,
                                     lambda e=e, since=since: f"{e.job_id}'s way has been clear since "  # type: ignore[misc]
                                                              f"{since:.1f}; nothing started it")
        for job_id in list(self.clear_since):
            if job_id not in clear:
                del self.clear_since[job_id]
        self.handoffs_checked = True

    def _check_handed_on(self) -> None:
        """A job handed on at its invocation's budget (after the faults stopped) starts its next
        attempt as soon as a worker is free: never a worker idle for ``HANDED_ON_SECONDS`` while
        it waits (that would be its message or its lease left behind: a lease period, or the
        sweeper's grace period, lost)."""
        now = self.k.now()
        for job_id, (at, mark) in list(self.handed.items()):
            rec = self.inner_jobs.items.get(job_id)
            if (rec is None or rec.terminal or rec.expired(now) or job_id in self.log.terminal
                    or sum(j == job_id for j, _, _ in self.jobs.taken[mark:]) > 1):  # the handing one's, and a next
                del self.handed[job_id]
                continue
            idle = [w.name for w in self.workers if not w.dead and w.paused_until <= self.k.t
                    and self.idle_since.get(w.name, self.k.t) <= self.k.t - HANDED_ON_SECONDS
                    and self.k.t - at > HANDED_ON_SECONDS]
            if idle:
                del self.handed[job_id]
                self.found.check("handed_on_job_resumes_at_once", False,
                                 lambda job_id=job_id, at=at, idle=idle: f"{job_id} was handed on at {at:.1f}; "  # type: ignore[misc]
                                                                         f"{idle} idle since, and it has not started")
            else:
                self.found.check("handed_on_job_resumes_at_once", True, lambda: "")

    def _state(self, job_id: str) -> tuple[Any, Any]:
        rec = self.inner_jobs.items.get(job_id)
        if rec is None or rec.expired(self.k.now()):
            return None, None
        events = self.log.events_of(job_id)
        return refold(rec, events), replay(events)

    def _settled(self, job_id: str) -> bool:
        rec = self.inner_jobs.items.get(job_id)
        if rec is None or rec.terminal or rec.expired(self.k.now()):
            return True
        job, state = self._state(job_id)
        if job is None or job.terminal:
            return True
        a = self.accepted.get(job_id)
        if job.status is JobStatus.PENDING and self.behind_a_question(job.user_id, job_id):
            return True
        if job.status is JobStatus.PENDING and a is None and self.waits_for_room(job.user_id, job_id):
            return True
        return (job.status is JobStatus.WAITING and state.question is not None
                and (a is None or a.abandoned) and job_id not in self.cancels)

    def waits_for_room(self, user: str, job_id: str) -> bool:
        """Whether ``job_id`` (its submit never answered) has no entry because its user's gate is
        full of jobs that wait on their questions: by design it is enrolled when there is room."""
        entries = self.inner_gates._live(user)
        return job_id not in entries and len(entries) >= self.settings.max_active_per_user and all(
            self._settled(e) for e in entries)

    def behind_a_question(self, user: str, job_id: str) -> bool:
        """Whether an earlier job of ``job_id``'s conversation waits on its user's answer: by
        design the conversation's next message waits for it (or for the question to expire)."""
        entries = self.inner_gates._live(user)
        me = entries.get(job_id)
        if me is None:
            return False
        for e in entries.values():
            if e.conversation_id == me.conversation_id and e.asking and e.job_id != job_id:
                job, state = self._state(e.job_id)
                if job is not None and not job.terminal and state.question is not None:
                    return True
        return False

    def _quiet(self) -> bool:
        if not all(self._settled(j) and self._finalized(j) for j in self.inner_jobs.items):
            return False
        return self._gates_clean()

    def _finalized(self, job_id: str) -> bool:
        """Whether a job its log ended has its record ended too: until then its finalize (a
        failure's dead letter, its turn, its terminal projection) is still owed, and the protocol
        owes it within a grace period and a sweep (whoever ends a job nobody holds moves its sweep
        deadline a grace period on before the terminal event; the sweeper then sends it and a
        worker finalizes). Seed 16182 at 2e09054 was quiet before that: a sweeper frozen after an
        ending's gate removal, its dead letter not sent yet, and ``failed_jobs_are_parked`` looked
        30 s after the terminal event, as the job's deadline came due."""
        rec = self.inner_jobs.items.get(job_id)
        if rec is None or rec.terminal or rec.expired(self.k.now()):
            return True
        return job_id not in self.log.terminal

    def _gates_clean(self) -> bool:
        for user in self.inner_gates.gates:
            for job_id in self.inner_gates._live(user):
                job, _ = self._state(job_id)
                if job is None or job.terminal:
                    return False
        return True


class CheckedSlots(MemoryStreamSlots):
    """The slot store, checked where it decides: a take is refused only while the user holds the
    cap of live slots (an expired one counts as free: a killed stream's slot comes back)."""

    def __init__(self, w: World, clock: SimClock) -> None:
        super().__init__(clock)
        self.w = w

    def take(self, user_id: str, holder: str, cap: int, until: float) -> bool:
        taken = super().take(user_id, holder, cap, until)
        live = len(self.holders(user_id))
        self.w.found.check("stream_slots_refused_only_at_the_cap", taken or live >= cap,
                           lambda: f"a stream of {user_id} was refused a slot while it held {live} of {cap}")
        return taken


@dataclass(eq=False)
class StreamHost:
    """One stream process, as far as its connections can tell: killed at ``killed`` (virtual)."""

    name: str
    killed: float | None = None


class Stream:
    """The stream function: the real ``WatchHub`` on an asyncio loop in virtual time, serving
    watchers that check every event arrives once, in order, from their cursor (guarantee 3).

    Each connection holds a slot of its user's (``StreamCap``, over the simulated store with its
    faults), renewed as the SSE handler renews it (``stream_api.sse_stream``: between batches,
    every third of a lease period) and given back when it ends. Chaos kills the stream process
    its connections run in (``StreamHost``: asyncio allows one running loop per thread, so the
    hosts share the loop, and a killed host's connections stop at their next step without giving
    anything back, their store calls in flight landing or not, as a SIGKILL leaves them); new
    connections go to a new host. Checked every second: never more than the cap of live slots per
    user, nor of open streams holding one; a killed host's slots read as free within one lease
    period of its death, never renewed after it."""

    def __init__(self, w: World) -> None:
        self.w = w
        self.proc = Process("stream")
        self.loop: VirtualLoop | None = None
        self.hub: WatchHub | None = None
        self.open_watchers = 0
        self.host = StreamHost("stream1")
        self.hosts = 1
        self.streaming: dict[str, tuple[str, StreamHost]] = {}  # holder -> (user, its host): open streams
        self.dead: list[tuple[str, str, float]] = []  # (user, holder, killed at): a killed host's slots
        self.refused = 0

    def start(self) -> None:
        def host() -> None:
            self.loop = VirtualLoop(self.w.k, self.proc)
            pace = self.w.cfg.watch_pace
            self.hub = WatchHub(self.w.log, self.w.settings.retention_seconds, clock=SimClock(self.w.k),
                                min_interval=pace[0], max_interval=pace[1])
            forever = self._forever()
            try:
                self.loop.run_until_complete(forever)
            finally:
                forever.close()  # the history ended with the loop parked in it

        self.w.k.spawn(self.proc, "stream/loop", host)

    def crash(self) -> None:
        """SIGKILL the current stream host (its connections die holding their slots); new
        connections go to a new one."""
        w, dead = self.w, self.host
        w.k.log("chaos", f"SIGKILL {dead.name}")
        dead.killed = w.k.now()
        for holder, (user, host) in list(self.streaming.items()):
            if host is dead:
                del self.streaming[holder]
                self.dead.append((user, holder, dead.killed))
        self.hosts += 1
        self.host = StreamHost(f"stream{self.hosts}")

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(3600.0)

    def open(self, job_id: str, cursor: int, delay: float = 0.0) -> None:
        """A client connects (from a user's task: handed to the loop, as a request would be)."""
        loop = self.loop
        if loop is None:
            return
        self.open_watchers += 1
        host = self.host
        loop.call_soon_threadsafe(lambda: loop.create_task(self._watcher(job_id, cursor, host, delay)))

    def check_slots(self) -> None:
        w, now = self.w, self.w.k.now()
        cap, lease = w.settings.max_streams_per_user, w.settings.stream_slot_lease_seconds
        for user in list(w.inner_slots.slots):
            live = w.inner_slots.holders(user)
            w.found.check("stream_slots_within_cap", len(live) <= cap,
                          lambda user=user, live=live: f"{user} holds {len(live)} live stream slots (cap {cap})")  # type: ignore[misc]
            streaming = [h for h, (u, _) in self.streaming.items() if u == user and h in live]
            w.found.check("stream_slots_within_cap", len(streaming) <= cap,
                          lambda user=user, streaming=streaming: f"{user} has {len(streaming)} open streams holding "  # type: ignore[misc]
                                                                 f"slots (cap {cap})")
        # Once faults stop (and a renewal they failed has been tried again), an open stream on a
        # live host holds its slot with a third of a lease or more in hand: renewed every third,
        # so two renewals can fail before it runs out (a process frozen lately excepted).
        if w.k.t > w.cfg.fault_seconds + 2.0 and self.proc.paused_until < w.k.t - lease:
            for holder, (user, _) in self.streaming.items():
                until = w.inner_slots.slots.get(user, {}).get(holder, 0.0)
                w.found.check("open_streams_hold_their_slots", until > now + lease / 3,
                              lambda user=user, holder=holder, until=until: (  # type: ignore[misc]
                                  f"{user}'s stream {holder} is open; its slot's lease ended at {until - EPOCH:.1f}"))
        left = []
        for user, holder, killed in self.dead:
            until = w.inner_slots.slots.get(user, {}).get(holder)
            w.found.check("killed_stream_slots_free_within_a_lease", until is None or until <= killed + lease,
                          lambda user=user, holder=holder, killed=killed, until=until: (  # type: ignore[misc]
                              f"{user}'s slot {holder} of a stream process killed at {killed - EPOCH:.1f} "
                              f"is held until {(until or 0) - EPOCH:.1f}"))
            if now <= killed + lease:
                left.append((user, holder, killed))
        self.dead = left

    async def _take(self, user: str, host: StreamHost) -> StreamLease | None:
        """A slot for one connection: a 429 waits its Retry-After, a 503 a moment; None to give up
        (or the host died meanwhile: a slot it took is left to its lease)."""
        w = self.w
        cap = StreamCap(w.stream_slots, w.settings.max_streams_per_user, w.settings.stream_slot_lease_seconds,
                        SimClock(w.k), w.new_id)
        for _ in range(20):
            faulty = w.faulty  # when the request went (a fault's answer can come after they stop)
            try:
                lease: StreamLease = await asyncio.to_thread(cap.take, user)
            except TooManyRequests as refused:
                self.refused += 1
                await asyncio.sleep(refused.retry_after)
            except StoreError:
                w.found.check("no_5xx_unless_the_store_fails", faulty,
                              lambda: f"a stream of {user} was refused its slot with a 5xx after faults stopped")
                await asyncio.sleep(1.0)
            else:
                if host.killed is not None:
                    self.dead.append((user, lease.holder, host.killed))
                    return None
                return lease
            if host.killed is not None:
                return None
        return None

    async def _watcher(self, job_id: str, cursor: int, host: StreamHost, delay: float = 0.0) -> None:
        w, r = self.w, self.w.k.rng
        try:
            if delay:
                await asyncio.sleep(delay)
            for _ in range(50):  # connections
                job = await asyncio.to_thread(w.jobs.get, job_id)
                if job is None or host.killed is not None:
                    return
                lease = await self._take(job.user_id, host)
                if lease is None or self.hub is None:
                    return
                self.streaming[lease.holder] = (job.user_id, host)
                idle = 0.0
                closed = False
                try:
                    async with self.hub.watch(job, cursor, stream=True) as watcher:
                        while idle < 20.0 and host.killed is None:
                            wait = min(10.0, lease.seconds_to_renewal())
                            try:
                                evs = await watcher.next_batch(wait)
                            except EventsExpired:
                                rec = w.inner_jobs.items.get(job_id)
                                w.found.check("watchers_see_each_event_once_in_order",
                                              rec is None or rec.expired(w.k.now()),
                                              lambda c=cursor: f"a watcher of {job_id} after {c} was told its "  # type: ignore[misc]
                                                               f"events expired; they had not")
                                return
                            if host.killed is not None:
                                return
                            idle = idle + wait if not evs else 0.0
                            for ev in evs:
                                truth = w.inner_log.items.get((job_id, ev.seq))
                                w.found.check("watchers_see_each_event_once_in_order",
                                              ev.seq == cursor + 1 and truth is not None and truth.id == ev.id,
                                              lambda ev=ev, c=cursor: (  # type: ignore[misc]
                                                  f"a watcher of {job_id} after {c} got seq {ev.seq}"))
                                cursor = ev.seq
                            if watcher.done:
                                return
                            if lease.due and not await asyncio.to_thread(lease.renew):
                                break  # the slot is lost for good: the stream ends, the page reconnects
                            if evs and r.random() < 0.1:
                                break  # the network blinks: reconnect from the cursor
                        else:
                            return  # nothing for a while (the page was closed), or the host died
                except GeneratorExit:
                    closed = True  # the history ended with this stream open (the coroutine is collected)
                    raise
                finally:
                    if host.killed is None and not closed:  # a killed host gives nothing back: its lease frees it
                        self.streaming.pop(lease.holder, None)
                        await asyncio.to_thread(lease.release)
                if host.killed is not None:
                    return
                await asyncio.sleep(r.uniform(0.1, 3.0))
        except StoreError:
            return
        finally:
            self.open_watchers -= 1
