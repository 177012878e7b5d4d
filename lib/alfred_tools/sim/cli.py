"""``alfred-jobs sim``: replay one seed with its trace, run a seed range, or search for some minutes."""

from __future__ import annotations

import argparse
import random
import sys
import time
from typing import Any


def main(args: argparse.Namespace) -> int:
    """Run the simulator as the arguments say; 0 when every invariant held, 1 otherwise."""
    from alfred_tools.sim.history import quiet_logs, run_many, run_one  # greenlet: only when asked for

    quiet_logs()
    if args.verbose and (args.seed is None or args.quiet):
        print("--verbose is for a trace: with --seed, without --quiet", file=sys.stderr)
        return 2
    if args.seed is not None:
        lines: list[str] = []
        outcome = run_one(args.seed, trace=lines.append, min_jobs=args.min_jobs, verbose=args.verbose)
        out = sys.stdout
        if not args.quiet:
            out.write("\n".join(lines) + "\n")
        out.write(f"seed {outcome.seed}: {outcome.jobs} jobs, {outcome.calls} store and queue calls, "
                  f"{outcome.virtual_seconds:.1f} virtual seconds\n")
        for v in outcome.violations:
            out.write(f"VIOLATION {v}\n")
        if outcome.error:
            out.write(f"ERROR {outcome.error}\n")
        out.write("every invariant held\n" if outcome.ok else "FAILED\n")
        return 0 if outcome.ok else 1
    deadline = None
    if args.minutes is not None:
        deadline = time.monotonic() + 60 * args.minutes
        first = args.first if args.first is not None else random.SystemRandom().randrange(1 << 40)
        seeds = iter(range(first, first + (1 << 62)))
    else:
        first = args.first if args.first is not None else 1
        seeds = iter(range(first, first + args.seeds))

    def progress(s: Any) -> None:
        if args.progress and s.histories % 200 < 8:
            print(f"... {s.histories} histories, {len(s.failed)} failed, {s.wall_seconds:.0f} s", file=sys.stderr)

    summary = run_many(seeds, processes=args.processes, deadline=deadline, stop_at_first=args.stop_at_first,
                       progress=progress)
    print(f"seeds from {first}")
    print(summary.report())
    return 0 if not summary.failed else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``sim`` subcommand."""
    s = sub.add_parser("sim", help="the deterministic simulation: replay a seed, or run many")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--seed", type=int, help="run one history and print its trace (the same, byte for byte, each time)")
    g.add_argument("--seeds", type=int, default=200, help="run this many seeds (from --first, default 1)")
    g.add_argument("--minutes", type=float, help="run random seeds (or from --first) until the time is up")
    s.add_argument("--first", type=int, help="the first seed of --seeds or --minutes")
    s.add_argument("--processes", type=int, help="processes to run histories in (default: the CPU count)")
    s.add_argument("--min-jobs", type=int, default=10, help="jobs per history, at least")
    s.add_argument("--stop-at-first", action="store_true", help="stop at the first failing history")
    s.add_argument("--quiet", action="store_true", help="with --seed: no trace, only the outcome")
    s.add_argument("--verbose", action="store_true",
                   help="with --seed: each call line names its job, its key, its faults, and a gate write's gate")
    s.add_argument("--progress", action="store_true", help="print progress on stderr")
    s.set_defaults(func=main)
