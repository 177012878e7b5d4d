"""Watching a job's event log: one shared poller per job per process, fanned out in memory.

    WatchHub (one per process / event loop)
    └── _Channel (one per watched job, while it has watchers)
        ├── poller task: Journal.read_after(head) in a thread, every 50-250 ms while the job is live
        ├── buffer: events base+1..head (shared replay; trimmed past ``max_buffer``)
        └── Watcher (one per SSE connection or long-poll request): its own cursor

Why no gap and no duplicate: a watcher never takes "the events the poller just saw". It owns a
cursor ``c`` and only ever asks the channel for ``c+1, c+2, ...``, sliced out of a buffer that
holds a contiguous run of seqs. Replay and live are the same operation; the only difference is
whether the seq is already in the buffer (served at once), below it (read from the store once,
under a lock, and prepended, so other watchers behind share that read) or above it (wait for
the poller). There is no junction to get wrong.

Why reads do not grow with watchers: the store is read by the poller (one probe per tick; a
probe is one GetItem on the next seq while nothing is new) and by back-fills below the buffer
(shared under the lock). Watchers read memory only.

The poller stops when it has seen the terminal event, or when the last watcher leaves; the
channel is dropped with its last watcher.

Admission, the one place streams and long-polls are capped: every SSE stream and long-poll holds
a ``Slot`` from ``WatchHub.admit`` while it is open, at most ``max_per_user`` per user and
``max_per_token`` per stream token (``ALFRED_MAX_STREAMS_PER_USER``, 20;
``ALFRED_MAX_STREAMS_PER_TOKEN``, 5); one more is ``TooManyRequests`` (429 ``too_many_streams``,
``Retry-After``). A slot is released when its stream ends, however it ends (the client went
away, the job ended, an error), and when its long-poll answers. The count is this process's:
what one process can enforce. The per-user cap across processes (Lambda: one request per
execution environment) is a slot in the stream slots table on top (``service/stream_slots.py``),
given back through ``Slot.also``; see docs/streaming.md, "Limits".
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from alfred_jobs.clock import Clock, SystemClock
from alfred_jobs.domain.models import Event, Job, JobStatus, fold
from alfred_jobs.durability.journal import Journal
from alfred_jobs.exceptions import EventsExpired, TooManyRequests
from alfred_jobs.observability import get_logger
from alfred_jobs.ports import EventLog

log = get_logger()

FIRST_EVENT_WINDOW = 2.0  # seconds a watched job with no event yet is polled at MIN_INTERVAL
MIN_INTERVAL = 0.05  # poll period right after something new (checkpoint -> client latency)
MAX_INTERVAL = 0.2  # poll period after a quiet spell (cost of an idle watched job: 5 GetItem/s)
ERROR_BACKOFF_MAX = 2.0
MAX_BUFFER = 5000  # events kept in memory per watched job
READ_LIMIT = 1000  # events per store read
MAX_PER_USER = 20  # open streams + long-polls of one user (Settings.max_streams_per_user)
MAX_PER_TOKEN = 5  # ... carried by one stream token (Settings.max_streams_per_token)
RETRY_AFTER_SECONDS = 5  # the Retry-After of a refused stream: a slot frees when one ends


@dataclass(frozen=True)
class ChannelStats:
    """What a channel is doing (for tests, benchmarks and health)."""

    watchers: int
    polling: bool
    base: int
    head: int
    end: int | None
    polls: int
    store_reads: int


class _Channel:
    """The shared state of one watched job inside one process."""

    def __init__(self, hub: WatchHub, job: Job, cursor: int, stream: bool = False) -> None:
        self.hub = hub
        self.job_id = job.job_id
        self.job = job  # the record, folded forward with every event the poller sees
        if job.terminal:
            # The terminal projection is written after the terminal event, so the record is exact.
            self.end: int | None = job.last_seq
            self.base = min(cursor, job.last_seq)
        else:
            # Start one below the record's head so the first read also sees the event at it: a
            # record can lag behind its log, and the last event may already be the terminal one.
            self.end = None
            self.base = max(0, min(cursor, job.last_seq - 1))
        # A reconnect mid-job brings a cursor past the record's head (the record lags its log by
        # the events since the keeper's last refresh): the client has seen those events, so they
        # exist, and the first read fetches them in one batch instead of probing them one by one.
        # (They are still read: the status is folded from them. A cursor from nowhere only makes
        # that batch come back short, and the read stops at the first missing seq.)
        self.hint = cursor
        # A stream serves frame by frame: its first read stops at the client's next event, so
        # that frame goes out without waiting for the rest of a long backlog (read right after),
        # and a read of its live tail returns the event it finds at once (``poll_forever``).
        # A long-poll answers with everything it finds in one response: no cut.
        self.frame_by_frame = stream
        self.events: list[Event] = []
        self.watchers = 0
        self.polls_started = 0
        self.polls_done = 0
        self.store_reads = 0
        self.changed = asyncio.Event()
        self.kick = asyncio.Event()
        self.woken = False  # a writer said it wrote (``WatchHub.wake``): the next read is strong
        self.backfill_lock = asyncio.Lock()
        self.task: asyncio.Task[None] | None = None

    @property
    def head(self) -> int:
        return self.base + len(self.events)

    @property
    def finished(self) -> bool:
        return self.end is not None and self.head >= self.end

    def stats(self) -> ChannelStats:
        return ChannelStats(watchers=self.watchers, polling=self.task is not None and not self.task.done(),
                            base=self.base, head=self.head, end=self.end, polls=self.polls_done,
                            store_reads=self.store_reads)

    def _notify(self) -> None:
        # Wake everyone waiting now; later waiters wait on a fresh event.
        self.changed.set()
        self.changed = asyncio.Event()

    def _add(self, evs: list[Event]) -> None:
        """Append events the poller read (contiguous from head+1)."""
        for ev in evs:
            if ev.seq != self.head + 1:
                break  # never happens with Journal.read_after; refuse a gap rather than serve one
            self.events.append(ev)
            if ev.terminal:
                self.end = ev.seq
                break
        self.job = fold(self.job, evs)
        if len(self.events) > self.hub.max_buffer:
            drop = len(self.events) - self.hub.max_buffer // 2
            del self.events[:drop]
            self.base += drop

    def slice(self, cursor: int, limit: int) -> list[Event]:
        """Buffered events cursor+1.. (at most ``limit``); ``cursor`` must be >= base."""
        start = cursor - self.base
        return self.events[start:start + limit]

    async def backfill(self, cursor: int, limit: int) -> list[Event]:
        """Events cursor+1..base, read from the store once and kept if the buffer has room."""
        async with self.backfill_lock:
            if cursor >= self.base:
                return []  # another watcher filled it meanwhile
            base = self.base
            want = base - cursor
            # Strongly consistent: these events exist (the buffer starts above them), and an
            # eventually consistent read could miss one that was written a moment ago, stop at
            # that hole and look like the events were gone.
            evs = await self._read(cursor, known_head=base, limit=min(want, max(limit, READ_LIMIT)),
                                   consistent=True)
            evs = [e for e in evs if e.seq <= base]
            if len(evs) == want and base == self.base and len(self.events) + want <= self.hub.max_buffer:
                self.events[:0] = evs
                self.base = cursor
                return []  # now in the buffer
            return evs[:limit]

    async def _read(self, after: int, *, known_head: int, limit: int, consistent: bool = False) -> list[Event]:
        self.store_reads += 1
        # The poller reads eventually consistent: a read that misses a just-written event stops at
        # that seq (reads are contiguous) and finds it next poll; nothing is skipped.
        return await asyncio.to_thread(self.hub.journal.read_after, self.job_id, after,
                                       known_head=known_head, limit=limit, consistent=consistent)

    async def poll_forever(self) -> None:
        """Read new events until the terminal one is in the buffer (or the task is cancelled)."""
        interval = self.hub.min_interval
        failures = 0
        opened = self.hub.clock.monotonic()
        quiet = True  # the last read found nothing
        while not self.finished:
            self.kick.clear()  # a kick that lands during this read makes the next one start at once
            # After a wake-up the write it announces has landed: a strongly consistent read sees it
            # (an eventually consistent one might not yet, and the event would wait for the poll).
            woken, self.woken = self.woken, False
            self.polls_started += 1
            known, limit = max(self.job.last_seq, self.head), READ_LIMIT
            if self.frame_by_frame and quiet and known <= self.head:
                # A stream's live tail after a quiet read: read the next event alone and serve
                # it at once, instead of after a second read that finds nothing yet (one round
                # trip sooner). A hit is cut short by the limit, so the next read, a whole one,
                # starts right away: a burst drains with the reads it took before.
                limit = 1
            if self.hint > self.head:
                # A reconnect: read through the client's next event in one batch (a stream serves
                # it at once; the rest of the log follows with the next read, right after).
                known = max(known, self.hint + 1)
                if self.frame_by_frame:
                    limit = self.hint + 1 - self.head
            self.hint = 0
            try:
                evs = await self._read(self.head, known_head=known, limit=limit, consistent=woken)
            except Exception:
                # Throttling, a 5xx, a dropped connection: keep watchers waiting (they get
                # heartbeats) and try again; the log is durable, nothing is lost by waiting.
                failures += 1
                log.warning("watch poll failed", exc_info=True, extra={"job_id": self.job_id})
                evs = []
                interval = min(ERROR_BACKOFF_MAX, self.hub.min_interval * 2 ** failures)
            else:
                failures = 0
                # Something new: the job is busy, look again soon. Nothing: back off gently, but
                # not while a just-submitted job has yet to start (its first event is a moment
                # away: the time to the first event is what a user waits on after sending).
                starting = self.head == 0 and self.hub.clock.monotonic() - opened < FIRST_EVENT_WINDOW
                interval = (self.hub.min_interval if evs or starting
                            else min(self.hub.max_interval, interval * 1.5))
            # Cut short by the limit: there may be more now, read again at once. The pace after
            # that read is still ``interval`` (never backed off from zero: a tight loop).
            wait = 0.0 if len(evs) >= limit else interval
            quiet = not evs
            self.polls_done += 1
            if evs:
                self._add(evs)
            self._notify()  # also wakes long-polls waiting for a read that started after them
            if self.finished:
                break
            try:
                await asyncio.wait_for(self.kick.wait(), wait)
            except TimeoutError:
                pass


class Watcher:
    """One consumer of a job's events from its own cursor."""

    def __init__(self, channel: _Channel, cursor: int) -> None:
        self._ch = channel
        self.cursor = cursor

    @property
    def done(self) -> bool:
        """True once this watcher has received the terminal event (or its cursor is past it)."""
        return self._ch.end is not None and self.cursor >= self._ch.end

    @property
    def job(self) -> Job:
        """The job record folded with every event the shared poller has seen."""
        return self._ch.job

    @property
    def status(self) -> JobStatus:
        return self._ch.job.status

    async def next_batch(self, timeout: float, limit: int = 500, *, fresh: bool = False) -> list[Event]:
        """The next events after the cursor, in order; ``[]`` when ``timeout`` passes or at the end.

        ``fresh``: never answer ``[]`` from memory alone; a store read that started after this call
        must have completed first (a long-poll with ``wait=0`` still sees what is stored).
        """
        ch = self._ch
        deadline = ch.hub.clock.monotonic() + timeout
        mark = ch.polls_started
        while True:
            if self.cursor < ch.base:
                evs = await ch.backfill(self.cursor, limit)
                if evs:
                    self.cursor = evs[-1].seq
                    return evs
                if self.cursor < ch.base:
                    # A strongly consistent read found a hole below events we hold: those events
                    # expired (retention is over). Never skip them silently (guarantee 3).
                    log.warning("events expired below the buffer", extra={"job_id": ch.job_id})
                    raise EventsExpired(f"events after {self.cursor} of this job have expired")
                continue
            evs = ch.slice(self.cursor, limit)
            if evs:
                self.cursor = evs[-1].seq
                return evs
            if self.done:
                return []
            remaining = deadline - ch.hub.clock.monotonic()
            need_fresh = fresh and ch.polls_done <= mark and not ch.finished
            if remaining <= 0 and not need_fresh:
                return []
            if need_fresh:
                ch.kick.set()
            changed = ch.changed
            try:
                await asyncio.wait_for(changed.wait(), max(remaining, 0.0) if not need_fresh else None)
            except TimeoutError:
                return []


class Slot:
    """One admitted stream or long-poll; ``release`` (or leaving the ``with`` block) gives it back,
    once however often it is called."""

    def __init__(self, hub: WatchHub, user: str, token_key: str | None) -> None:
        self._hub = hub
        self.user = user
        self._token_key = token_key
        self.released = False
        self._then: list[Callable[[], object]] = []

    def also(self, give_back: Callable[[], object]) -> None:
        """Run ``give_back`` on release too (it must not block: it starts the store write of the
        stream's slot in the background, ``Deps.tasks``)."""
        self._then.append(give_back)

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self._hub._give_back(self.user, self._token_key)
        for give_back in self._then:
            try:
                give_back()
            except Exception:  # a pool shutting down: the slot's lease frees it
                log.warning("giving back a stream slot failed", exc_info=True)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class WatchHub:
    """The per-process registry of watched jobs: one poller per job, however many watchers; and
    the admission of streams and long-polls (``admit``: per-user and per-token caps)."""

    def __init__(self, log: EventLog, retention_seconds: int, *, min_interval: float = MIN_INTERVAL,
                 max_interval: float = MAX_INTERVAL, max_buffer: int = MAX_BUFFER,
                 max_per_user: int = MAX_PER_USER, max_per_token: int = MAX_PER_TOKEN,
                 clock: Clock | None = None, wake_address: str | None = None) -> None:
        self.journal = Journal(log, retention_seconds)
        # Intervals and deadlines on ``clock`` (``deps.clock``; the waits themselves are asyncio's).
        self.clock = clock or SystemClock()
        self.min_interval = min_interval
        self.max_interval = max(min_interval, max_interval)
        self.max_buffer = max(10, max_buffer)
        self.max_per_user = max_per_user
        self.max_per_token = max_per_token
        self._channels: dict[str, _Channel] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._per_user: Counter[str] = Counter()
        self._per_token: Counter[str] = Counter()
        # Wake-ups from the writers (``Settings.stream_wake_address``, ``adapters/wake.py``):
        # listened for on this process's loop from the first watch on.
        self.wake_address = wake_address
        self._wakes: asyncio.DatagramTransport | None = None

    # ---- admission ----------------------------------------------------------------------------

    def admit(self, user: str, token: str | None = None) -> Slot:
        """A slot for one stream or long-poll of ``user`` (carrying stream ``token``, if any), or
        ``TooManyRequests`` if the user or the token already holds its cap of open ones.

        Synchronous and without an await: on the event loop, check-and-take is atomic.
        """
        token_key = hashlib.sha256(token.encode()).hexdigest()[:32] if token else None
        if self._per_user[user] >= self.max_per_user:
            raise TooManyRequests(f"too many open streams and long-polls for this user (at most "
                                  f"{self.max_per_user}); close one or retry later",
                                  code="too_many_streams", retry_after=RETRY_AFTER_SECONDS)
        if token_key is not None and self._per_token[token_key] >= self.max_per_token:
            raise TooManyRequests(f"too many open streams with this stream token (at most "
                                  f"{self.max_per_token}); close one or retry later",
                                  code="too_many_streams", retry_after=RETRY_AFTER_SECONDS)
        self._per_user[user] += 1
        if token_key is not None:
            self._per_token[token_key] += 1
        return Slot(self, user, token_key)

    def _give_back(self, user: str, token_key: str | None) -> None:
        self._per_user[user] -= 1
        if self._per_user[user] <= 0:
            del self._per_user[user]
        if token_key is not None:
            self._per_token[token_key] -= 1
            if self._per_token[token_key] <= 0:
                del self._per_token[token_key]

    def open_slots(self, user: str | None = None) -> int:
        """Streams and long-polls admitted and not yet released (of ``user``, or of everyone)."""
        return self._per_user[user] if user is not None else sum(self._per_user.values())

    # ---- wake-ups ------------------------------------------------------------------------------

    def wake(self, job_id: str) -> None:
        """A writer wrote an event of ``job_id``: its poller, if this process has one, reads now
        (strongly consistent) instead of at its next poll. Only ever earlier, never instead: the
        poll goes on at its own cadence, so a lost wake-up delays nothing."""
        ch = self._channels.get(job_id)
        if ch is not None:
            ch.woken = True
            ch.kick.set()

    async def _listen_for_wakes(self) -> None:
        """Bind the wake-up address on this loop, once; a bind that fails (the address taken by
        another stream process on this machine) leaves this one polling, as without it."""
        if self.wake_address is None or self._wakes is not None:
            return
        hub = self

        class _Wakes(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
                hub.wake(data.decode(errors="replace"))

        host, _, port = self.wake_address.rpartition(":")
        address, self.wake_address = self.wake_address, None  # one try per hub
        try:
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                _Wakes, local_addr=(host or "127.0.0.1", int(port)))
        except OSError as exc:
            log.warning("not listening for wake-ups; polling only", extra={"address": address, "error": str(exc)})
            return
        self._wakes = transport

    # ---- watching ------------------------------------------------------------------------------

    @asynccontextmanager
    async def watch(self, job: Job, after: int, *, stream: bool = False) -> AsyncIterator[Watcher]:
        """Watch ``job`` from cursor ``after`` (``stream``: an SSE stream, served frame by frame);
        leaving the block releases everything at once."""
        await self._listen_for_wakes()
        ch = self._channels.get(job.job_id)
        if ch is None:
            ch = _Channel(self, job, after, stream)
            self._channels[job.job_id] = ch
        ch.watchers += 1
        if ch.task is None and not ch.finished:
            ch.task = asyncio.create_task(ch.poll_forever(), name=f"watch-{job.job_id}")
            self._tasks.add(ch.task)
            ch.task.add_done_callback(self._tasks.discard)
        try:
            yield Watcher(ch, after)
        finally:
            # Runs on a client disconnect too (the response task is cancelled): the last watcher
            # out stops the poller and drops the buffer. No await here, so a cancellation that
            # is still being delivered cannot skip the clean-up.
            ch.watchers -= 1
            if ch.watchers == 0:
                if self._channels.get(job.job_id) is ch:
                    del self._channels[job.job_id]
                if ch.task is not None and not ch.task.done():
                    ch.task.cancel()

    async def events_after(self, job: Job, after: int, wait: float, limit: int = 500,
                           ) -> tuple[list[Event], Watcher]:
        """Events with seq > ``after``; if none, wait up to ``wait`` seconds (the long-poll)."""
        async with self.watch(job, after) as w:
            evs = await w.next_batch(wait, limit, fresh=True)
            return evs, w

    def stats(self, job_id: str) -> ChannelStats | None:
        """The channel of ``job_id`` if anyone is watching it in this process."""
        ch = self._channels.get(job_id)
        return ch.stats() if ch else None

    @property
    def watched_jobs(self) -> int:
        return len(self._channels)

    def total_watchers(self) -> int:
        return sum(ch.watchers for ch in self._channels.values())

    @property
    def pollers(self) -> int:
        """Poller tasks not yet finished (a cancelled one counts until its read returns)."""
        return len(self._tasks)
