"""The simulator's kernel: virtual time, seeded scheduling, and the runtime's ports over them.

Every simulated task (a worker's poll loop, a lease keeper, a user) is a greenlet. Exactly one
runs at a time; it runs until it calls a port (a store or queue call, a sleep, a wait), which
parks it with a wake-up time and hands control back here. The scheduler then runs the parked
task with the earliest wake-up, ties broken by the seeded generator. So the seed decides every
interleaving, virtual time advances only when every task waits (an hour of protocol costs what
its calls cost), and a history replays exactly.

A *process* is a group of tasks that crash together (``Process.kill``: none of them ever runs
again, mid-call or not, as with SIGKILL) or stop and resume together (``pause``: SIGSTOP, a
long GC pause). Tasks a killed process had parked are simply never woken.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from greenlet import GreenletExit, getcurrent, greenlet

T = TypeVar("T")

# Virtual epoch: 2026-12-07 00:00 UTC, so records carry plausible dates.
EPOCH = 1_796_601_600.0


class Deadlock(Exception):
    """A task waited with nobody left to wake it: the history cannot go on."""


@dataclass(slots=True)
class Process:
    """A group of tasks that crash or pause together."""

    name: str
    dead: bool = False
    paused_until: float = 0.0
    tasks: list[Task] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class Task:
    name: str
    proc: Process
    glet: greenlet
    token: int = 0  # bumped each time the task parks: a stale wake-up carries an older one
    done: bool = False
    result: Any = None
    error: BaseException | None = None
    joiners: list[Task] = field(default_factory=list)
    quiet: bool = False  # its error is its caller's to take (``Pending.result``), not a finding


LIVELOCK_PARKS = 100_000  # a whole history makes a few thousand calls


class Livelock(Exception):
    """The history's tasks kept waiting without virtual time moving on."""


class Kernel:
    """Virtual time and the run queue."""

    def __init__(self, seed: int, trace: Callable[[str], None] | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.t = 0.0  # virtual seconds since the start
        self._heap: list[tuple[float, float, int, Task, int]] = []
        self._n = 0
        self._main = getcurrent()
        self.current: Task | None = None
        self.switches = 0
        self._trace = trace
        self.failure: BaseException | None = None  # an exception a task let escape (a bug)
        self._same_instant = 0  # timed waits in a row that did not move time on (see ``park``)
        self.procs: dict[int, Process] = {}
        # What the running ``run`` call stops at (``park`` takes the scheduler's next pick itself
        # when that pick is the parking task: see ``park``).
        self._until = -1.0
        self._stop: Callable[[], bool] | None = None

    # ---- time -----------------------------------------------------------------------------

    def now(self) -> float:
        return EPOCH + self.t

    def log(self, actor: str, what: str) -> None:
        if self._trace is not None:
            self._trace(f"{self.t:10.3f} {actor:<14} {what}")

    # ---- tasks ----------------------------------------------------------------------------

    def spawn(self, proc: Process, name: str, fn: Callable[[], Any], delay: float = 0.0,
              quiet: bool = False) -> Task:
        """Start ``fn`` as a task of ``proc`` after ``delay`` virtual seconds."""
        task: Task

        def body() -> None:
            try:
                task.result = fn()
            except GreenletExit:
                pass
            except BaseException as exc:
                task.error = exc
                if self.failure is None and not task.proc.dead and not task.quiet:
                    self.failure = exc
            finally:
                task.done = True
                for j in task.joiners:
                    self._wake(j, 0.0)
                task.joiners.clear()

        task = Task(name, proc, greenlet(body, self._main), quiet=quiet)
        proc.tasks.append(task)
        self.procs[id(proc)] = proc
        self._n += 1
        heapq.heappush(self._heap, (self.t + (delay if delay > 0.0 else 0.0), self.rng.random(), self._n, task, 0))
        return task

    def _wake(self, task: Task, delay: float) -> None:
        self._n += 1
        heapq.heappush(self._heap, (self.t + max(0.0, delay), self.rng.random(), self._n, task, task.token))

    def park(self, delay: float | None) -> None:
        """Park the current task: until ``delay`` seconds pass (None: until another task wakes it)."""
        task = self.current
        assert task is not None, "park() outside a task"
        if task.proc.dead:
            raise GreenletExit()
        task.token += 1
        if delay is not None:
            at = self.t + (delay if delay > 0.0 else 0.0)
            if at > self.t:
                self._same_instant = 0
            else:
                self._same_instant += 1
                if self._same_instant > LIVELOCK_PARKS and self.failure is None:
                    # Tasks that wait without time ever moving on (a wait of 1e-15 s is one: the
                    # float clock does not move) would spin here for ever: a finding, not a hang.
                    self.failure = Livelock(f"{self._same_instant} waits at {self.t:.3f} s without time "
                                            f"moving on (the last by {task.name})")
            self._n += 1
            tie = self.rng.random()
            heap = self._heap
            # The scheduler would pick this very task next (its wake-up comes strictly first, its
            # process is not paused, the run goes on): go on without the two switches through the
            # scheduler. Every draw and count is the same as with them, so the trace is too.
            if (at <= self._until and self.failure is None
                    and (not heap or at < heap[0][0] or (at == heap[0][0] and tie < heap[0][1]))
                    and task.proc.paused_until <= at and not (self._stop is not None and self._stop())):
                if at > self.t:
                    self.t = at
                self.switches += 1
                return
            heapq.heappush(heap, (at, tie, self._n, task, task.token))
        self._main.switch()
        if task.proc.dead:
            raise GreenletExit()

    def wake(self, task: Task) -> None:
        """Make a parked task runnable now (its pending timer, if any, becomes stale)."""
        self._n += 1
        heapq.heappush(self._heap, (self.t, self.rng.random(), self._n, task, task.token))

    def sleep(self, seconds: float) -> None:
        self.park(seconds if seconds > 0.0 else 0.0)

    def run(self, until: float, stop: Callable[[], bool] | None = None) -> None:
        """Run tasks until virtual time ``until``, no task is runnable, or ``stop()`` says so."""
        heap = self._heap
        self._until, self._stop = until, stop
        while heap and self.failure is None:
            at, _, _, task, token = heap[0]
            if at > until:
                break
            heapq.heappop(heap)
            if task.done or task.proc.dead or token != task.token:
                continue
            if task.proc.paused_until > at:
                # Look again when the pause ends, or within a second (a pause can be cut short).
                self._n += 1
                heapq.heappush(heap, (min(task.proc.paused_until, at + 1.0), self.rng.random(), self._n, task, token))
                continue
            self.t = max(self.t, at)
            self.current = task
            self.switches += 1
            task.glet.switch()
            self.current = None
            if stop is not None and stop():
                break
        self._until, self._stop = -1.0, None
        if not heap or heap[0][0] > until:
            self.t = max(self.t, until)

    def kill(self, proc: Process) -> None:
        """SIGKILL: no task of ``proc`` runs again."""
        proc.dead = True
        for task in proc.tasks:
            for j in task.joiners:
                self.wake(j)

    def close(self) -> None:
        """End every task still parked, so none outlives the history (their ``finally`` blocks see
        a dead process and leave at once), and drop them: a suspended greenlet is never collected."""
        for p in self.procs.values():
            p.dead = True
        for p in list(self.procs.values()):
            for task in p.tasks:
                if not task.done and not task.glet.dead:
                    try:
                        task.glet.throw(GreenletExit())
                    except BaseException:  # a dead process's last gasp
                        pass
                task.joiners.clear()
            p.tasks.clear()
        self.procs.clear()
        self._heap.clear()


# ---- the runtime's ports over the kernel ------------------------------------------------------


class SimSignal:
    """``Signal`` in virtual time."""

    def __init__(self, k: Kernel) -> None:
        self.k = k
        self.flag = False
        self.waiters: list[Task] = []

    def set(self) -> None:
        self.flag = True
        waiters, self.waiters = self.waiters, []
        for w in waiters:
            self.k.wake(w)

    def is_set(self) -> bool:
        return self.flag

    def wait(self, timeout: float | None = None) -> bool:
        if self.flag:
            return True
        me = self.k.current
        assert me is not None
        self.waiters.append(me)
        try:
            self.k.park(timeout)
        finally:
            if me in self.waiters:
                self.waiters.remove(me)
        return self.flag


class SimClock:
    """``Clock`` in virtual time, as one process sees it (``skew``: its clock runs ahead)."""

    def __init__(self, k: Kernel, skew: float = 0.0) -> None:
        self.k = k
        self.skew = skew

    def now(self) -> float:
        return self.k.now() + self.skew

    def monotonic(self) -> float:
        return self.k.t

    def sleep(self, seconds: float) -> None:
        self.k.sleep(seconds)

    def signal(self) -> SimSignal:
        return SimSignal(self.k)


class SimPending:
    """``Pending`` of a task started by ``SimTasks.submit``."""

    def __init__(self, k: Kernel, task: Task) -> None:
        self.k = k
        self.task = task

    def done(self) -> bool:
        return self.task.done

    def result(self, timeout: float | None = None) -> Any:
        if not self.task.done:
            me = self.k.current
            assert me is not None
            self.task.joiners.append(me)
            try:
                self.k.park(timeout)
            finally:
                if me in self.task.joiners:
                    self.task.joiners.remove(me)
            if not self.task.done:
                if self.task.proc.dead:
                    raise GreenletExit()
                raise TimeoutError("simulated task did not finish in time")
        if self.task.error is not None:
            raise self.task.error
        return self.task.result

    def join(self, timeout: float | None = None) -> None:
        if self.k.current is self.task:
            return
        try:
            self.result(timeout)
        except TimeoutError:
            pass
        except Exception:
            pass

    def is_alive(self) -> bool:
        return not self.task.done


class SimTasks:
    """``Tasks`` whose work runs as tasks of one process."""

    def __init__(self, k: Kernel, proc: Process) -> None:
        self.k = k
        self.proc = proc

    def _spawn(self, fn: Callable[..., Any], *args: Any, name: str) -> SimPending:
        # The task starts when the scheduler picks it: the caller goes on first.
        return SimPending(self.k, self.k.spawn(self.proc, name, lambda: fn(*args), quiet=True))

    def submit(self, fn: Callable[..., T], *args: Any) -> SimPending:
        return self._spawn(fn, *args, name=f"{self.proc.name}/bg")

    def start(self, fn: Callable[[], None], name: str) -> SimPending:
        return self._spawn(fn, name=f"{self.proc.name}/{name}")
