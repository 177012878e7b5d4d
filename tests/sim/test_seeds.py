"""The simulator in CI: a fixed seed set, every invariant over every history, and exact replay.

``ALFRED_SIM_SEEDS`` (default below) sets how many seeds run; each history has at least 10 jobs.
A failure names its seeds: ``alfred-jobs sim --seed N`` replays one with its trace.
"""

from __future__ import annotations

import os

from alfred_tools.sim.history import quiet_logs, run_many, run_one

CI_SEEDS = int(os.environ.get("ALFRED_SIM_SEEDS", "4000"))


def test_the_ci_seed_set_keeps_every_invariant() -> None:
    summary = run_many(range(1, CI_SEEDS + 1), processes=2)
    print(summary.report())
    assert summary.histories == CI_SEEDS
    assert summary.jobs >= 10 * CI_SEEDS
    assert not summary.failed, summary.report()


def test_a_seed_replays_byte_for_byte() -> None:
    quiet_logs()
    first: list[str] = []
    second: list[str] = []
    a = run_one(11, trace=first.append)
    b = run_one(11, trace=second.append)
    assert len(first) > 100 and first == second
    assert (a.calls, a.switches, a.violations) == (b.calls, b.switches, b.violations)


def test_different_seeds_make_different_histories() -> None:
    quiet_logs()
    traces = []
    for seed in (1, 2):
        lines: list[str] = []
        run_one(seed, trace=lines.append)
        traces.append(lines)
    assert traces[0] != traces[1]
