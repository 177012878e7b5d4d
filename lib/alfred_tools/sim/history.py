"""Running histories: one seed (with its trace), a seed range, or random seeds for some minutes."""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field

from alfred_tools.sim.invariants import check_end
from alfred_tools.sim.world import World


@dataclass
class Outcome:
    """What one history covered and found."""

    seed: int
    violations: list[str]
    jobs: int
    calls: int
    switches: int
    virtual_seconds: float
    faults: Counter[str] = field(default_factory=Counter)
    checks: Counter[str] = field(default_factory=Counter)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.violations and self.error is None


def quiet_logs() -> None:
    """The runtime logs every retry and takeover; thousands of histories would drown in them."""
    logging.disable(logging.CRITICAL)


def run_one(seed: int, trace: Callable[[str], None] | None = None, min_jobs: int = 10,
            verbose: bool = False) -> Outcome:
    """Run the history of ``seed`` to quiescence and check every invariant (``verbose``: the
    trace names what each call is about, ``verbose.py``; the history is the same)."""
    w = World(seed, trace, min_jobs=min_jobs, verbose=verbose)
    error = None
    try:
        w.run()
        if w.k.failure is not None:
            error = f"{type(w.k.failure).__name__}: {w.k.failure}"
        else:
            check_end(w)
    finally:
        w.k.close()
    jobs = w.cfg.jobs  # submitted (a refused or lost submit leaves no record)
    return Outcome(seed, list(w.found.violations), jobs, w.stats.calls, w.k.switches, w.k.t,
                   Counter(w.stats.faults), Counter(w.found.checks), error)


def _run_quiet(seed: int) -> Outcome:
    quiet_logs()
    return run_one(seed)


@dataclass
class Summary:
    histories: int = 0
    jobs: int = 0
    calls: int = 0
    virtual_seconds: float = 0.0
    faults: Counter[str] = field(default_factory=Counter)
    checks: Counter[str] = field(default_factory=Counter)
    failed: list[Outcome] = field(default_factory=list)
    wall_seconds: float = 0.0
    # Each invariant that failed: the first seed (in the order results came back) and when.
    first: dict[str, tuple[int, float]] = field(default_factory=dict)

    def add(self, o: Outcome) -> None:
        self.histories += 1
        self.jobs += o.jobs
        self.calls += o.calls
        self.virtual_seconds += o.virtual_seconds
        self.faults.update(o.faults)
        self.checks.update(o.checks)
        if not o.ok:
            self.failed.append(o)
            names = {v.split("]", 1)[0].lstrip("[") for v in o.violations}
            if o.error:
                names.add("escaped_error")
            for name in names:
                self.first.setdefault(name, (o.seed, self.wall_seconds))

    def report(self) -> str:
        w = max(self.wall_seconds, 1e-9)
        lines = [
            f"histories: {self.histories} ({self.histories / w:.1f}/s), jobs: {self.jobs}, "
            f"store and queue calls: {self.calls} ({self.calls / w:.0f}/s), "
            f"virtual time: {self.virtual_seconds / 3600:.1f} h in {self.wall_seconds:.1f} s",
            "faults: " + (", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"),
            "invariants checked: " + ", ".join(f"{k} {v}" for k, v in sorted(self.checks.items())),
        ]
        for name, (seed, at) in sorted(self.first.items(), key=lambda kv: kv[1][1]):
            lines.append(f"  {name}: first failing seed {seed}, found after {at:.1f} s")
        if self.failed:
            lines.append(f"FAILED: {len(self.failed)} histories; first seeds: "
                         + ", ".join(str(o.seed) for o in self.failed[:10]))
            first = self.failed[0]
            lines += [f"  seed {first.seed}: {v}" for v in first.violations[:5]]
            if first.error:
                lines.append(f"  seed {first.seed}: {first.error}")
            lines.append(f"replay: alfred-jobs sim --seed {first.seed}")
        else:
            lines.append("every invariant held")
        return "\n".join(lines)


def run_many(seeds: Iterable[int], processes: int | None = None, deadline: float | None = None,
             stop_at_first: bool = False, progress: Callable[[Summary], None] | None = None) -> Summary:
    """Run ``seeds`` in ``processes`` processes (the CPU count by default) until done or ``deadline``."""
    summary = Summary()
    started = time.monotonic()
    procs = processes or os.cpu_count() or 1
    it = iter(seeds)
    # A fresh process now and then: a long search should not carry one process's heap for hours.
    # Each is forked from a server that has imported the simulator already (a spawned process
    # would import the runtime again: half a second, a dozen times per 10,000 histories).
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    with ProcessPoolExecutor(max_workers=procs, max_tasks_per_child=100, mp_context=ctx,
                             initializer=_start_child) as pool:
        batch = 8
        pending = set()
        for _ in range(procs * 2):
            chunk = [s for _, s in zip(range(batch), it, strict=False)]
            if chunk:
                pending.add(pool.submit(_run_chunk, chunk))
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            done = min(finished, key=id)
            summary.wall_seconds = time.monotonic() - started
            for o in done.result():
                summary.add(o)
            pending.discard(done)
            summary.wall_seconds = time.monotonic() - started
            if progress is not None:
                progress(summary)
            if (deadline is not None and time.monotonic() > deadline) or (stop_at_first and summary.failed):
                for p in pending:
                    p.cancel()
                break
            chunk = [s for _, s in zip(range(batch), it, strict=False)]
            if chunk:
                pending.add(pool.submit(_run_chunk, chunk))
    summary.wall_seconds = time.monotonic() - started
    summary.failed.sort(key=lambda o: o.seed)
    return summary


def _start_child() -> None:
    """A pool process: what it has imported is never garbage, and it collects between histories.

    A history makes cycles (greenlets, asyncio tasks, tracebacks) that only the cyclic collector
    frees, and the collector's automatic passes, triggered by allocations, would walk every
    object of the runtime again and again in the middle of a history. One pass after each
    history walks that history's objects alone.
    """
    quiet_logs()
    gc.freeze()
    gc.disable()


def _run_chunk(seeds: list[int]) -> list[Outcome]:
    out = []
    for s in seeds:
        out.append(_run_quiet(s))
        if not gc.isenabled():
            gc.collect()
    return out
