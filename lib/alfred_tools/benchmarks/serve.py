"""``python -m alfred_tools.benchmarks.serve PORT [--app dev|stream] [--min-interval S] [--max-interval S]``.

The job API and stream function served by uvicorn in their own process, as on a laptop or in the
stream container, with a ``RequestCounter`` on its clients and two bench-only routes:
``GET /bench/counts?reset=1`` (the AWS calls it made) and ``GET /bench/rss`` (its own RSS).
``--app stream`` serves the stream app alone (what the idle-connection RSS figure is about).
The poll intervals let the bench try other watcher settings without editing the code.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from typing import Any


def rss_kib(pid: int | str = "self") -> int:
    """Resident set size of a process from /proc (Linux), in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    """Serve until SIGTERM."""
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("--app", choices=("dev", "stream"), default="dev")
    p.add_argument("--min-interval", type=float, default=None)
    p.add_argument("--max-interval", type=float, default=None)
    args = p.parse_args()

    import uvicorn

    from alfred_jobs.entry.wiring import aws_deps, get_settings
    from alfred_jobs.service.watch import MAX_INTERVAL, MIN_INTERVAL, WatchHub
    from alfred_tools.benchmarks.counting import RequestCounter, install_process_wide

    counter = RequestCounter(marks=bool(os.environ.get("ALFRED_BENCH_MARKS")))
    install_process_wide(counter)
    # The bench holds up to 1,000 streams of one user on purpose (fan-out, idle memory): no caps,
    # neither the hub's nor the per-user slots across processes (docs/streaming.md, "Limits").
    deps = replace(aws_deps(get_settings()), stream_slots=None)
    hub = WatchHub(deps.log, deps.settings.retention_seconds,
                   min_interval=MIN_INTERVAL if args.min_interval is None else args.min_interval,
                   max_interval=MAX_INTERVAL if args.max_interval is None else args.max_interval,
                   max_per_user=10**9, max_per_token=10**9, clock=deps.clock,
                   wake_address=deps.settings.stream_wake_address)
    if args.app == "stream":
        from alfred_jobs.entry.http.stream_api import create_stream_app

        app = create_stream_app(deps, hub=hub)
    else:
        from alfred_tools.devstack import create_dev_app

        app = create_dev_app(deps)
        app.state.stream_hub = hub

    @app.get("/bench/counts", include_in_schema=False)
    def counts(reset: bool = False) -> dict[str, Any]:
        snap = counter.snapshot(reset=reset)
        snap.pop("trace", None)
        return snap

    @app.get("/bench/rss", include_in_schema=False)
    def rss() -> dict[str, int]:
        return {"rss_kib": rss_kib()}

    # Routes added after the static mount would be shadowed by it: move ours to the front.
    app.router.routes[:0] = [r for r in app.router.routes[-2:]]
    del app.router.routes[-2:]
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False,
                lifespan="off", backlog=4096, timeout_keep_alive=30)


if __name__ == "__main__":
    main()
