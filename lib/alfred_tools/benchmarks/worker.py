"""``python -m alfred_tools.benchmarks.worker N COUNTS_FILE``: a local worker that counts its AWS calls.

The same worker as ``python -m alfred_tools.local_worker`` (the local event source mapping and the
Lambda handler), with a ``RequestCounter`` on every client it builds. SIGUSR1 writes the counts
(and the call trace) to ``COUNTS_FILE`` and starts counting afresh; so does a normal exit.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from alfred_tools.benchmarks.counting import RequestCounter, dump, install_process_wide


def main() -> None:
    """Run the counted worker until SIGTERM."""
    concurrency = int(sys.argv[1])
    path = sys.argv[2]
    counter = RequestCounter(trace=True, marks=bool(os.environ.get("ALFRED_BENCH_MARKS")))
    install_process_wide(counter)

    def on_usr1(signum: int, frame: Any) -> None:
        dump(counter, path)

    signal.signal(signal.SIGUSR1, on_usr1)
    # The first snapshot says "ready": only now may the harness send SIGUSR1 (before the handler is
    # installed, SIGUSR1 would kill the process).
    dump(counter, path)
    from alfred_jobs.entry.wiring import get_settings
    from alfred_tools.local_worker import run_worker_threads

    try:
        run_worker_threads(get_settings(), concurrency)
    finally:
        dump(counter, path)


if __name__ == "__main__":
    main()
