"""The simulator in CI: a fixed seed set, every invariant over every history, and exact replay.

``ALFRED_SIM_SEEDS`` (default below) sets how many seeds run; each history has at least 10 jobs.
A failure names its seeds: ``alfred-jobs sim --seed N`` replays one with its trace.
"""

from __future__ import annotations

import os

import pytest

from alfred_tools.sim.history import quiet_logs, run_many, run_one

CI_SEEDS = int(os.environ.get("ALFRED_SIM_SEEDS", "10000"))

# Protocol findings of the CI seed set not fixed yet: seed -> the invariant it breaks. Each is a
# history that breaks a guarantee (replay it with ``alfred-jobs sim --seed N``), listed so that the
# rest of the set guards against new ones meanwhile; the test fails if a listed seed breaks
# anything else, and asks for the entry's removal once its seed passes. A change to the simulator
# or the runtime moves the histories: the list is that of the commit that wrote it.
OPEN_FINDINGS: dict[int, str] = {}


def _broken(violations: list[str], error: str | None) -> set[str]:
    names = {v.split("]", 1)[0].lstrip("[") for v in violations}
    return names | ({"escaped_error"} if error else set())


# The suite's 300 s per test bounds a hang; this test is CPU work that scales with the machine's
# load (151 s idle on 2 cores, about twice that beside a CPU hog on both), and a history that
# never moves virtual time on ends as a ``Livelock`` finding, not a hang. Its bound is the
# machine's share, not a guess of its speed.
@pytest.mark.timeout(1800)
def test_the_ci_seed_set_keeps_every_invariant() -> None:
    summary = run_many(range(1, CI_SEEDS + 1), processes=2)
    print(summary.report())
    assert summary.histories == CI_SEEDS
    assert summary.jobs >= 10 * CI_SEEDS
    open_ = {s: name for s, name in OPEN_FINDINGS.items() if s <= CI_SEEDS}
    unexpected = [o for o in summary.failed if _broken(o.violations, o.error) != {open_.get(o.seed)}]
    assert not unexpected, summary.report()
    fixed = sorted(set(open_) - {o.seed for o in summary.failed})
    assert not fixed, f"seeds {fixed} keep every invariant now: take them out of OPEN_FINDINGS"


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
