"""The watch hub over in-memory ports: one poller per job, fan-out, replay + live without gap."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from alfred_jobs.adapters.memory import MemoryEventLog, memory_deps
from alfred_jobs.domain.models import ChatRequest, Event, EventType, Job, JobStatus, fold
from alfred_jobs.durability.journal import Journal
from alfred_jobs.exceptions import EventsExpired
from alfred_jobs.ports import Deps
from alfred_jobs.service.jobs import JobService
from alfred_jobs.service.watch import Watcher, WatchHub

FAST = {"min_interval": 0.005, "max_interval": 0.02}


class World:
    """A memory stack with one job and a way to append its events."""

    def __init__(self) -> None:
        self.deps: Deps = memory_deps()
        self.journal = Journal(self.deps.log, self.deps.settings.retention_seconds)
        self.job = JobService(self.deps).submit("alice", ChatRequest(message="soup"), None).job
        self.seq = 0

    @property
    def log(self) -> MemoryEventLog:
        log = self.deps.log
        assert isinstance(log, MemoryEventLog)
        return log

    def append(self, n: int = 1, *, terminal: bool = False) -> list[Event]:
        out = []
        for i in range(n):
            self.seq += 1
            last = terminal and i == n - 1
            ev = Event.new(self.seq, EventType.COMPLETE if last else EventType.STEP,
                           {"output": {"reply": "ok"}} if last else
                           {"index": self.seq, "total": 99, "label": "x", "status": "completed"},
                           attempt=1, writer="w", at=time.time())
            self.journal.append(self.job.job_id, ev, self.job.expires_at)
            out.append(ev)
        return out

    def record(self) -> Job:
        """The job record as a reader would load it."""
        job = self.deps.jobs.get(self.job.job_id)
        assert job is not None
        return job

    def project(self) -> None:
        """Bring the record up to the log (what the runner's renewals and final save do)."""
        evs = self.journal.read_all(self.job.job_id)
        self.deps.jobs.save_projection(fold(self.record(), evs), owner=None)

    def hub(self, **kw: Any) -> WatchHub:
        return WatchHub(self.deps.log, self.deps.settings.retention_seconds, **{**FAST, **kw})


def run(coro: Awaitable[Any], timeout: float = 10.0) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(main())


async def drain(hub: WatchHub, job: Job, after: int, ready: asyncio.Event | None = None,
                on_watch: Callable[[Watcher], None] | None = None) -> list[int]:
    """All seqs a watcher from ``after`` receives until the end."""
    seqs: list[int] = []
    async with hub.watch(job, after) as w:
        if on_watch:
            on_watch(w)
        if ready is not None:
            ready.set()
        while not w.done:
            seqs += [e.seq for e in await w.next_batch(5.0)]
    return seqs


async def poller_tasks(job_id: str) -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == f"watch-{job_id}"]


def test_replay_of_a_finished_job_reads_the_store_once_however_many_watchers() -> None:
    # GIVEN a finished job of 30 events whose record still lags at seq 0
    def reads_for(n_watchers: int) -> tuple[int, list[list[int]]]:
        world = World()
        world.append(29)
        world.append(terminal=True)
        hub = world.hub()
        before = world.log.reads

        async def go() -> list[list[int]]:
            return list(await asyncio.gather(*(drain(hub, world.record(), 0) for _ in range(n_watchers))))

        got = run(go())
        return world.log.reads - before, got

    # WHEN 1 watcher and then 50 watchers replay it
    one, got_one = reads_for(1)
    fifty, got_fifty = reads_for(50)
    # THEN everyone gets 1..30 and the store was read exactly as often for 50 as for 1
    assert got_one == [list(range(1, 31))]
    assert all(seqs == list(range(1, 31)) for seqs in got_fifty) and len(got_fifty) == 50
    assert fifty == one and one <= 5  # probe 1, probe 1 more, then batches of 4, 16, 64


def test_fifty_live_watchers_cost_the_reads_of_one() -> None:
    # GIVEN N watchers attached to a live job, WHEN 20 events land one at a time (each awaited by
    # every watcher before the next), THEN all see 1..21 and the read count does not grow with N
    def scenario(n: int) -> tuple[int, list[list[int]]]:
        world = World()
        hub = world.hub()

        async def watcher(i: int, ready: asyncio.Event) -> list[int]:
            seqs: list[int] = []
            async with hub.watch(world.record(), 0) as w:
                ready.set()
                while not w.done:
                    for e in await w.next_batch(5.0):
                        seqs.append(e.seq)
                        waiters[e.seq][i].set()
            return seqs

        waiters = {s: [asyncio.Event() for _ in range(n)] for s in range(1, 22)}

        async def go() -> list[list[int]]:
            readies = [asyncio.Event() for _ in range(n)]
            tasks = [asyncio.create_task(watcher(i, r)) for i, r in enumerate(readies)]
            await asyncio.gather(*(r.wait() for r in readies))
            for s in range(1, 22):
                await asyncio.to_thread(world.append, 1, terminal=s == 21)
                await asyncio.gather(*(e.wait() for e in waiters[s]))
            return list(await asyncio.gather(*tasks))

        before = world.log.reads
        got = run(go(), timeout=30)
        return world.log.reads - before, got

    one, got1 = scenario(1)
    fifty, got50 = scenario(50)
    assert got1 == [list(range(1, 22))]
    assert len(got50) == 50 and all(g == list(range(1, 22)) for g in got50)
    # Poll timing varies a little from run to run; 50 private pollers would cost ~50x.
    assert fifty <= one * 1.5 + 5, (one, fifty)


def test_a_watcher_joining_anywhere_gets_exactly_the_rest_while_events_stream() -> None:
    # GIVEN a job whose events are appended continuously by a writer thread
    world = World()
    hub = world.hub(max_buffer=40)  # small buffer: exercises trimming and store back-fill too
    total = 300

    def writer(started: threading.Event) -> None:
        started.set()
        for _ in range(total - 1):
            world.append(1)
        world.append(terminal=True)

    async def go() -> list[tuple[int, list[int]]]:
        first_ready = asyncio.Event()
        first = asyncio.create_task(drain(hub, world.record(), 0, first_ready))
        await first_ready.wait()
        started = threading.Event()
        wt = asyncio.create_task(asyncio.to_thread(writer, started))
        results: list[asyncio.Task[list[int]]] = []
        cursors: list[int] = []
        # WHEN watchers join at cursors behind, at and ahead of the shared poller, at various times
        for i in range(30):
            seen = world.seq
            cursor = [0, seen, max(0, seen - 3), seen // 2, seen + 2][i % 5]
            cursors.append(cursor)
            results.append(asyncio.create_task(drain(hub, world.record(), cursor)))
            await asyncio.sleep(0.002)  # spread the joins over the run (not synchronisation)
        await wt
        out = [(0, await first)]
        for c, t in zip(cursors, results, strict=True):
            out.append((c, await t))
        return out

    # THEN each receives exactly cursor+1..N, in order, no gap, no duplicate
    for cursor, seqs in run(go(), timeout=30):
        assert seqs == list(range(cursor + 1, total + 1)), f"cursor {cursor}"


def test_backfill_below_the_shared_buffer_is_read_once_for_all_watchers_behind() -> None:
    # GIVEN a live job with 50 events, its record at seq 50, and a watcher at seq 50 (buffer base 49)
    world = World()
    world.append(50)
    world.project()
    hub = world.hub()

    async def go() -> tuple[int, list[list[int]]]:
        ready = asyncio.Event()
        head = asyncio.create_task(drain(hub, world.record(), 50, ready))
        await ready.wait()
        stats = hub.stats(world.job.job_id)
        assert stats is not None and stats.base == 49
        reads_before = world.log.reads
        # WHEN 20 watchers from seq 0 join
        behind = [asyncio.create_task(drain(hub, world.record(), 0)) for _ in range(20)]
        await asyncio.sleep(0)
        await asyncio.to_thread(world.append, 1, terminal=True)
        got = list(await asyncio.gather(*behind))
        assert await head == [51]
        return world.log.reads - reads_before, got

    reads, got = run(go())
    # THEN they all get 1..51, and the gap below the buffer was read from the store once
    # (the rest are the shared poller's probes)
    assert all(g == list(range(1, 52)) for g in got)
    assert reads < 20, f"back-fill was read per watcher: {reads} reads"


def test_the_poller_stops_when_the_last_watcher_leaves() -> None:
    # GIVEN a job that never ends, watched by two watchers
    world = World()
    world.append(2)
    hub = world.hub()

    async def go() -> None:
        async with hub.watch(world.record(), 0) as a:
            assert [e.seq for e in await a.next_batch(5.0)] == [1, 2]
            async with hub.watch(world.record(), 0) as b:
                assert [e.seq for e in await b.next_batch(5.0)] == [1, 2]
                tasks = await poller_tasks(world.job.job_id)
                assert len(tasks) == 1, "one poller for two watchers"
                stats = hub.stats(world.job.job_id)
                assert stats is not None and stats.watchers == 2
            # WHEN one leaves, the poller keeps going for the other
            stats = hub.stats(world.job.job_id)
            assert stats is not None and stats.watchers == 1 and stats.polling
        # THEN after the last one leaves, the channel is gone and the poller task ends
        assert hub.stats(world.job.job_id) is None
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2.0)
        assert all(t.done() for t in tasks) and hub.pollers == 0
        reads = world.log.reads
        await asyncio.sleep(0.1)  # time in which a leaked poller would have read several times
        assert world.log.reads == reads

    run(go())


def test_the_poller_stops_at_the_terminal_event_while_watchers_remain() -> None:
    world = World()
    world.append(3)
    hub = world.hub()

    async def go() -> None:
        async with hub.watch(world.record(), 0) as w:
            assert [e.seq for e in await w.next_batch(5.0)] == [1, 2, 3]
            tasks = await poller_tasks(world.job.job_id)
            await asyncio.to_thread(world.append, 1, terminal=True)
            assert [e.seq for e in await w.next_batch(5.0)] == [4]
            assert w.done and w.status is JobStatus.COMPLETE
            # the poller ends on its own once it has the terminal event
            await asyncio.wait_for(asyncio.gather(*tasks), 2.0)
            stats = hub.stats(world.job.job_id)
            assert stats is not None and not stats.polling and stats.end == 4
            assert await w.next_batch(0.01) == []

    run(go())


def test_reconnect_at_the_end_of_a_finished_job_closes_at_once_without_reads() -> None:
    world = World()
    world.append(4)
    world.append(terminal=True)
    world.project()
    hub = world.hub()
    before = world.log.reads

    async def go() -> None:
        for cursor in (5, 9):
            async with hub.watch(world.record(), cursor) as w:
                assert w.done
                assert await w.next_batch(5.0) == []
        assert hub.pollers == 0

    run(go(), timeout=2)
    assert world.log.reads == before


def test_a_lagging_record_still_ends_a_watcher_at_the_terminal_event() -> None:
    # GIVEN the terminal event is in the log but the record still says running at seq 4
    world = World()
    world.append(4)
    world.project()
    world.append(terminal=True)
    record = world.record()
    assert record.last_seq == 4 and not record.terminal
    hub = world.hub()

    async def go() -> list[int]:
        # WHEN a watcher resumes from the last seq (or beyond what the record knows)
        return await drain(hub, record, 5)

    # THEN it gets nothing more and ends (no hang)
    assert run(go(), timeout=3) == []


def test_long_poll_returns_at_once_when_events_exist() -> None:
    world = World()
    world.append(3)
    hub = world.hub(min_interval=5.0, max_interval=5.0)  # a slow poller: only kicks make it read

    async def go() -> None:
        evs, w = await hub.events_after(world.record(), 1, 0.0)
        assert [e.seq for e in evs] == [2, 3] and not w.done
        # with a channel already held (its poller asleep), new stored events are still seen at once
        async with hub.watch(world.record(), 0) as holder:
            await holder.next_batch(5.0)
            await asyncio.to_thread(world.append, 1)
            evs, w = await hub.events_after(world.record(), 3, 0.0)
            assert [e.seq for e in evs] == [4]

    run(go(), timeout=4)


def test_long_poll_waits_and_returns_empty_at_the_deadline() -> None:
    world = World()
    world.append(1)
    hub = world.hub()

    async def go() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        evs, w = await hub.events_after(world.record(), 1, 0.3)
        assert evs == [] and not w.done
        return loop.time() - t0

    elapsed = run(go())
    assert 0.3 <= elapsed < 1.5


def test_long_poll_returns_early_when_an_event_lands() -> None:
    world = World()
    hub = world.hub()

    async def go() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        poll = asyncio.create_task(hub.events_after(world.record(), 0, 10.0))
        while hub.stats(world.job.job_id) is None:
            await asyncio.sleep(0)  # let the long-poll register (a scheduling turn, not a delay)
        await asyncio.to_thread(world.append, 1, terminal=True)
        evs, w = await poll
        assert [e.seq for e in evs] == [1] and w.done and w.status is JobStatus.COMPLETE
        return loop.time() - t0

    assert run(go()) < 2.0


class FlakyLog:
    """The event log port, failing its first ``failures`` reads (throttling, a dropped connection)."""

    def __init__(self, inner: MemoryEventLog, failures: int) -> None:
        self.inner = inner
        self.left = failures

    def _maybe_fail(self) -> None:
        if self.left > 0:
            self.left -= 1
            raise RuntimeError("throttled")

    def append(self, job_id: str, event: Event, expires_at: int) -> None:
        self.inner.append(job_id, event, expires_at)

    def get(self, job_id: str, seq: int, consistent: bool = True) -> Event | None:
        self._maybe_fail()
        return self.inner.get(job_id, seq, consistent)

    def read_range(self, job_id: str, first: int, last: int, consistent: bool = True) -> list[Event]:
        self._maybe_fail()
        return self.inner.read_range(job_id, first, last, consistent)


def test_a_failing_store_is_retried_and_watchers_keep_waiting() -> None:
    world = World()
    world.append(1)
    world.append(terminal=True)
    flaky = FlakyLog(world.log, failures=3)
    hub = WatchHub(flaky, world.deps.settings.retention_seconds, **FAST)
    assert run(drain(hub, world.record(), 0), timeout=5) == [1, 2]
    assert flaky.left == 0


@pytest.mark.parametrize("after", [0, 2])
def test_status_is_folded_from_the_log(after: int) -> None:
    world = World()
    job = world.record()
    ev = Event.new(1, EventType.STATUS, {"status": "running"}, attempt=1, writer="w", at=time.time())
    world.journal.append(job.job_id, ev, job.expires_at)
    world.seq = 1
    world.append(1)
    hub = world.hub()

    async def go() -> JobStatus:
        _, w = await hub.events_after(replace(job), after, 0.0)
        return w.status

    assert run(go()) is JobStatus.RUNNING


class StaleLog(MemoryEventLog):
    """Eventually consistent reads that miss some events which exist (DynamoDB may answer an
    event written under a second ago as absent); strongly consistent reads see everything."""

    def __init__(self, hidden: set[int]) -> None:
        super().__init__()
        self.hidden = hidden

    def get(self, job_id: str, seq: int, consistent: bool = True) -> Event | None:
        return None if not consistent and seq in self.hidden else super().get(job_id, seq, consistent)

    def read_range(self, job_id: str, first: int, last: int, consistent: bool = True) -> list[Event]:
        got = super().read_range(job_id, first, last, consistent)
        return got if consistent else [e for e in got if e.seq not in self.hidden]


def test_a_stale_backfill_never_skips_events_below_the_buffer() -> None:
    """Regression (issue 12, bug 1): the backfill below the shared buffer read eventually
    consistent; a stale miss stopped it at the hole and the watcher jumped to the buffer's base,
    never receiving the events in between."""
    # GIVEN a running job with 30 events, a first watcher holding the buffer at 29.., and a store
    # whose eventually consistent reads still miss event 10 (written a moment ago)
    world = World()
    stale = StaleLog(hidden=set())
    world.deps = replace(world.deps, log=stale)
    world.journal = Journal(stale, world.deps.settings.retention_seconds)
    world.append(30)
    world.project()
    hub = world.hub()

    async def go() -> list[int]:
        ready = asyncio.Event()
        head = asyncio.create_task(drain(hub, world.record(), 30, ready))
        await ready.wait()
        stale.hidden.add(10)
        # WHEN a second watcher joins from seq 0
        behind = asyncio.create_task(drain(hub, world.record(), 0))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(world.append, 1, terminal=True)
        assert await head == [31]
        return await behind

    # THEN it receives every event 1..31, event 10 included
    assert run(go()) == list(range(1, 32))


def test_a_hole_that_is_really_there_below_the_buffer_is_an_error_not_a_skip() -> None:
    """Events past retention cannot be replayed: the watcher is told (410), never silently moved on."""
    world = World()
    world.append(30)
    world.project()
    hub = world.hub()
    log = world.log

    async def go() -> None:
        ready = asyncio.Event()
        head = asyncio.create_task(drain(hub, world.record(), 30, ready))
        await ready.wait()
        log.expiry[(world.job.job_id, 5)] = 0  # expired (as if TTL were due)
        async with hub.watch(world.record(), 0) as w:
            first = await w.next_batch(1.0)
            assert [e.seq for e in first] == [1, 2, 3, 4]
            with pytest.raises(EventsExpired):
                await w.next_batch(1.0)
        await asyncio.to_thread(world.append, 1, terminal=True)
        await head

    run(go())


class CountingLog(MemoryEventLog):
    """Counts the store calls a reader makes (each ``read_range`` is one GetItem/BatchGetItem)."""

    def __init__(self) -> None:
        super().__init__()
        self.ranges: list[tuple[int, int]] = []

    def read_range(self, job_id: str, first: int, last: int, consistent: bool = True) -> list[Event]:
        self.ranges.append((first, last))
        return super().read_range(job_id, first, last, consistent)


def test_a_stream_reconnect_reads_through_its_cursor_in_one_batch_and_serves_the_next_frame_first() -> None:
    # GIVEN a job 30 events in, whose record still says 1 (the record lags its log mid-job)
    world = World()
    counting = CountingLog()
    world.deps = replace(world.deps, log=counting)
    world.journal = Journal(counting, world.deps.settings.retention_seconds)
    world.append(30)
    assert world.record().last_seq == 0

    async def reconnect(stream: bool) -> list[int]:
        counting.ranges.clear()
        hub = world.hub(min_interval=5.0, max_interval=5.0)
        async with hub.watch(world.record(), 20, stream=stream) as w:
            return [e.seq for e in await w.next_batch(5.0)]

    # WHEN a stream reconnects with Last-Event-ID: 20
    # THEN one read fetched 1..21 (the events it folds the status from, and its next frame), and
    # frame 21 is served before the rest of the backlog is read
    assert run(reconnect(stream=True), timeout=4) == [21]
    assert counting.ranges[0] == (1, 21) and len(counting.ranges) == 1
    # AND a long-poll from the same cursor answers with everything there is, in one response
    assert run(reconnect(stream=False), timeout=4) == list(range(21, 31))
    assert counting.ranges[0] == (1, 21)


class TimedLog(MemoryEventLog):
    """Records when each read happened; the read of ``hold`` waits until ``release`` is set."""

    def __init__(self, hold: int) -> None:
        super().__init__()
        self.timeline: list[tuple[int, float]] = []
        self.hold = hold
        self.release = threading.Event()
        self.enough = threading.Event()  # set once 6 reads have been made
        self.lock = threading.Lock()

    def read_range(self, job_id: str, first: int, last: int, consistent: bool = True) -> list[Event]:
        if first == self.hold:
            self.release.wait(10)
        with self.lock:
            self.timeline.append((first, time.monotonic()))
            if len(self.timeline) >= 6:
                self.enough.set()
        return super().read_range(job_id, first, last, consistent)


def test_a_stream_serves_a_live_event_from_the_read_that_found_it_and_keeps_its_pace_after() -> None:
    # GIVEN a stream on a running job whose log has one event, and a store whose read of the next
    # seq does not answer until released
    world = World()
    timed = TimedLog(hold=2)
    world.deps = replace(world.deps, log=timed)
    world.journal = Journal(timed, world.deps.settings.retention_seconds)
    world.append(1)
    pace = 0.05

    async def watch() -> list[int]:
        hub = world.hub(min_interval=pace, max_interval=4 * pace)
        async with hub.watch(world.record(), 0, stream=True) as w:
            # WHEN the poller reads the live tail
            got = [e.seq for e in await w.next_batch(5.0)]
            # THEN event 1 is served before the store has answered the read after it
            assert not timed.release.is_set()
            timed.release.set()
            # AND with nothing more to find, the reads that follow keep the poll's pace
            assert await asyncio.to_thread(timed.enough.wait, 10)
            return got

    assert run(watch(), timeout=8) == [1]
    misses = [t for first, t in timed.timeline if first == 2]
    gaps = [b - a for a, b in itertools.pairwise(misses[1:])]  # the first miss may come at once
    assert gaps and min(gaps) >= 0.9 * pace, gaps


class ConsistencyLog(MemoryEventLog):
    """Records whether each read asked for a strongly consistent answer."""

    def __init__(self) -> None:
        super().__init__()
        self.consistent: list[bool] = []

    def get(self, job_id: str, seq: int, consistent: bool = True) -> Event | None:
        self.consistent.append(consistent)
        return super().get(job_id, seq, consistent)

    def read_range(self, job_id: str, first: int, last: int, consistent: bool = True) -> list[Event]:
        self.consistent.append(consistent)
        return super().read_range(job_id, first, last, consistent)


def test_a_writer_wakes_the_stream_which_reads_at_once_and_strongly_consistent() -> None:
    # GIVEN a hub that polls every 30 s and listens for wake-ups, and a writer that sends them
    # (issue 28: the first token waits on the stream's next poll otherwise)
    import socket

    from alfred_jobs.adapters.wake import WakingEventLog

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    log = ConsistencyLog()
    world = World()
    world.deps = replace(world.deps, log=log)
    hub = WatchHub(log, world.deps.settings.retention_seconds, min_interval=30, max_interval=30,
                   wake_address=address)
    writer = Journal(WakingEventLog(log, address), world.deps.settings.retention_seconds)

    async def go() -> tuple[list[Event], float]:
        async with hub.watch(world.job, 0, stream=True) as w:
            assert await w.next_batch(0, fresh=True) == []  # its first read found nothing
            reads = len(log.consistent)
            # WHEN the worker writes the first event (and wakes the stream)
            ev = Event.new(1, EventType.STATUS, {"status": "running"}, attempt=1, writer="w", at=time.time())
            t0 = time.monotonic()
            writer.append(world.job.job_id, ev, world.job.expires_at)
            got = await w.next_batch(5.0)
            # THEN the stream read it at once (not 30 s later), strongly consistent
            assert log.consistent[reads] is True
            return got, time.monotonic() - t0

    got, took = run(go())
    assert [e.seq for e in got] == [1]
    assert took < 5.0
