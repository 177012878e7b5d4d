"""``alfred-jobs sim --seed N --verbose``: the default trace's history, each call line naming what
it is about (its job, its key, its faults, a gate write's gate), the same bytes each time."""

from __future__ import annotations

import argparse
import re
from collections import Counter

import pytest

from alfred_jobs.domain.gate import GateEntry
from alfred_tools.sim import cli
from alfred_tools.sim.history import Outcome, quiet_logs, run_one
from alfred_tools.sim.kernel import EPOCH
from alfred_tools.sim.verbose import Labels


def _traces(seed: int) -> tuple[list[str], list[str], Outcome, Outcome]:
    quiet_logs()
    default: list[str] = []
    verbose: list[str] = []
    a = run_one(seed, trace=default.append)
    b = run_one(seed, trace=verbose.append, verbose=True)
    return default, verbose, a, b


def _plain(line: str) -> str:
    """A verbose line without what ``--verbose`` adds: the call's ``(...)`` and the `` | ...`` tail."""
    return re.sub(r"\([^()]*\)(?= -> )", "", line.split(" | ")[0])


def _named_faults(lines: list[str]) -> Counter[str]:
    named: Counter[str] = Counter()
    for line in lines:
        m = re.search(r" \| faults: ([^|]*)", line)
        for fault in m.group(1).split(", ") if m else ():
            kind, _, more = fault.partition(" ")
            named[kind] += int(more[1:]) if more.startswith("x") else 1
    return named


def test_a_verbose_trace_replays_byte_for_byte_and_names_jobs_the_default_trace_does_not() -> None:
    quiet_logs()
    first: list[str] = []
    second: list[str] = []
    run_one(11, trace=first.append, verbose=True)
    run_one(11, trace=second.append, verbose=True)
    assert len(first) > 100 and first == second
    default: list[str] = []
    run_one(11, trace=default.append)
    created = {m.group(1) for line in first if (m := re.search(r"jobs\.create\(([0-9a-f]{8}) ", line))}
    assert len(created) >= 10
    # The default trace names a job only in its lease task's name (the id's first 8 hex chars):
    # a job without an Idempotency-Key has a counted id, whose first 8 are the seed's.
    assert created - set(re.findall(r"[0-9a-f]{8}", "\n".join(default)))


@pytest.mark.parametrize("seed", [2, 3])
def test_the_verbose_trace_is_the_default_history_call_for_call(seed: int) -> None:
    default, verbose, a, b = _traces(seed)
    assert [_plain(line) for line in verbose] == default
    assert (a.calls, a.switches, a.violations, a.faults) == (b.calls, b.switches, b.violations, b.faults)
    assert verbose != default


@pytest.mark.parametrize("seed", [2, 3])
def test_each_fault_is_named_on_the_call_it_struck(seed: int) -> None:
    """Seed 2 has hiccups and a lost delete (which the default trace does not show), seed 3 a
    freeze, throttles, a held write and an ambiguous one; both stale reads and duplicate sends.
    A call whose task is killed mid-call never gets its line, so a fault can go unnamed, never
    named twice."""
    _, verbose, a, _ = _traces(seed)
    named = _named_faults(verbose)
    assert set(named) == set(a.faults)
    assert all(named[kind] <= a.faults[kind] for kind in named)
    throttled = [line for line in verbose if "-> ! throttled" in line]
    assert bool(throttled) == bool(a.faults["throttled"])
    assert all("throttled" in line.split(" | faults: ")[1].split(", ") for line in throttled)


def test_each_gate_write_shows_the_users_gate_as_it_left_it() -> None:
    _, verbose, _, _ = _traces(11)
    takes = [line for line in verbose if re.search(r"gate\.take\(\S+ [0-9a-f]{8} .*-> Gate", line)]
    assert takes
    for line in takes:
        user, job = re.search(r"gate\.take\((\S+) ([0-9a-f]{8}) ", line).groups()  # type: ignore[union-attr]
        assert f"| gate {user}: " in line and f"{job} run " in line.split(" | gate ")[1]
    removes = [line for line in verbose if re.search(r"gate\.remove\(.*-> Gate", line)]
    assert removes and all(" | gate user" in line for line in removes)
    assert not any(" | gate " in line for line in verbose if re.search(r"gate\.(read|due_for_check~)\(", line))


def test_labels() -> None:
    labels = Labels(11)
    assert labels.id("0000000b" + "0" * 16 + "00000007") == "00000007"  # counted by World.new_id: its tail
    assert labels.id("138d5803" + "a" * 24) == "138d5803"  # keyed (a hash): its head
    entry = GateEntry("138d5803" + "a" * 24, "0100".ljust(32, "c"), "o1", running=True, attempt=2,
                      created_at=EPOCH + 5.25)
    assert labels.gate("user1", [entry]) == "gate user1: 138d5803 run a2 c5.250 conv 0100cccc"
    assert labels.gate("user1", []) == "gate user1: empty"
    assert labels.faults(["hiccup", "stale_read 0.12s"]) == "faults: hiccup, stale_read 0.12s"
    assert labels.faults(["stale_read 0.10s", "stale_read 1.20s"]) == "faults: stale_read x2"

    def take(user_id: str, entry: GateEntry, max_running: int, expires_at: int, *, attempt: int) -> None: ...

    assert (labels.args(("user1", entry, 2, int(EPOCH) + 600), {"attempt": 3}, take)
            == "user1 138d5803 run a2 c5.250 conv 0100cccc max_running=2 attempt=3")


def test_verbose_goes_with_one_seeds_trace(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    for argv in (["sim", "--seeds", "3", "--verbose"], ["sim", "--seed", "3", "--quiet", "--verbose"]):
        args = parser.parse_args(argv)
        assert args.func(args) == 2
        assert "--verbose" in capsys.readouterr().err
