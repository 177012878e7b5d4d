"""Time and background work are ports (issue 24): no runtime module reads the wall clock, starts a
thread or a pool, or waits on a threading primitive between tasks, except through
``alfred_jobs.clock`` (``Deps.clock``, ``Deps.tasks``). The simulator (``alfred_tools.sim``) runs
the runtime in virtual time on its own clock and tasks; one ``time.time()`` behind its back and a
seed no longer decides the run.

The check reads every module of ``lib/alfred_jobs`` with ``ast`` (never imports it) and refuses:

- ``import time`` / ``from time import ...``, and any ``time.<name>``;
- ``concurrent.futures`` (and ``_thread``, ``multiprocessing``, ``queue``, ``sched``), however imported;
- ``threading.<name>`` and ``from threading import <name>`` beyond ``THREADING_ALLOWED`` (a lock held
  inside one call, a thread-local), so no ``Thread``, ``Event``, ``Timer``, ``Condition``,
  ``Semaphore``, ``Barrier``, ``current_thread``...;
- ``datetime.now()``, ``datetime.utcnow()``, ``datetime.today()``, ``date.today()``;
- ``asyncio`` (its sleeps, waits and ``to_thread``), outside the modules ``EXEMPT`` lists.

``clock.py`` itself is the one module that may: it holds the ports and their real defaults. Every
other exemption is listed in ``EXEMPT`` with its reason, and an exemption no longer used fails too.
The last tests check that the injected clock is the one read (the fakes', the tokens').
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from alfred_jobs.adapters.memory import memory_deps
from alfred_jobs.exceptions import Unauthorized
from alfred_jobs.service.auth import issue_stream_token, verify_stream_token
from alfred_jobs.settings import Settings
from tests.support.clocks import ShiftedClock

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ROOT / "lib" / "alfred_jobs"
PORTS = "clock.py"  # the ports and the real clock and threads: not checked

FORBIDDEN_MODULES = {"time", "concurrent", "_thread", "multiprocessing", "queue", "sched"}
THREADING_ALLOWED = {
    "Lock": "mutual exclusion inside one call (never held across a store call or a wait)",
    "RLock": "the same, re-entrant (the memory fakes, the metrics buffer)",
    "local": "a per-thread slot (the Bedrock agent's current job), neither a thread nor a wait",
}
CLOCK_READS = {"now", "utcnow", "today"}  # on ``datetime`` or ``date``

# (module, what) -> why it may stay. ``what`` is a module name as the violation names it.
EXEMPT: dict[tuple[str, str], str] = {
    ("service/watch.py", "asyncio"):
        "the stream app's pollers run on its event loop: their pauses are asyncio waits and their "
        "store reads go to asyncio's executor (asyncio.to_thread); intervals and deadlines are read "
        "on the injected clock (WatchHub's clock). The simulator drives the synchronous runtime.",
    ("entry/http/stream_api.py", "asyncio"):
        "the stream app's request handlers are async: a blocking store read goes to asyncio's "
        "executor (asyncio.to_thread), as every ASGI app's does.",
}


def violations(source: str) -> set[tuple[int, str, str]]:
    """``(line, what, detail)`` for every forbidden use in ``source``; ``what`` is the module
    concerned (``time``, ``threading``, ``datetime``, ``asyncio``...)."""
    found: set[tuple[int, str, str]] = set()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in FORBIDDEN_MODULES or top == "asyncio":
                    found.add((node.lineno, top, f"import {alias.name}"))
                elif alias.name == "threading" and alias.asname not in (None, "threading"):
                    found.add((node.lineno, "threading", f"import threading as {alias.asname}"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            top = node.module.split(".")[0]
            if top in FORBIDDEN_MODULES or top == "asyncio":
                found.add((node.lineno, top, f"from {node.module} import ..."))
            elif top == "threading":
                for alias in node.names:
                    if alias.name not in THREADING_ALLOWED:
                        found.add((node.lineno, "threading", f"from threading import {alias.name}"))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            owner, name = node.value.id, node.attr
            if owner == "time":
                found.add((node.lineno, "time", f"time.{name}"))
            elif owner == "threading" and name not in THREADING_ALLOWED:
                found.add((node.lineno, "threading", f"threading.{name}"))
            elif owner == "asyncio":
                found.add((node.lineno, "asyncio", f"asyncio.{name}"))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in CLOCK_READS:
            receiver = node.func.value
            named = (receiver.id if isinstance(receiver, ast.Name)
                     else receiver.attr if isinstance(receiver, ast.Attribute) else "")
            if named in {"datetime", "date"}:
                found.add((node.lineno, "datetime", f"{named}.{node.func.attr}()"))
    return found


def runtime_modules() -> list[Path]:
    return sorted(p for p in RUNTIME.rglob("*.py") if p.relative_to(RUNTIME).as_posix() != PORTS)


def test_the_check_reads_the_runtime() -> None:
    names = {p.relative_to(RUNTIME).as_posix() for p in runtime_modules()}
    assert {"durability/runner.py", "durability/lease.py", "service/jobs.py", "adapters/aws.py"} <= names
    assert PORTS not in names


def test_no_runtime_module_reads_the_clock_or_starts_a_thread_but_through_the_ports() -> None:
    bad = []
    for path in runtime_modules():
        module = path.relative_to(RUNTIME).as_posix()
        for line, what, detail in sorted(violations(path.read_text(encoding="utf-8"))):
            if (module, what) not in EXEMPT:
                bad.append(f"lib/alfred_jobs/{module}:{line}: {detail}")
    assert not bad, ("read the time and start background work through deps.clock / deps.tasks "
                     "(alfred_jobs.clock), or list an exemption with its reason:\n" + "\n".join(bad))


def test_every_exemption_is_still_needed() -> None:
    used = {(path.relative_to(RUNTIME).as_posix(), what)
            for path in runtime_modules() for _, what, _ in violations(path.read_text(encoding="utf-8"))}
    assert set(EXEMPT) <= used, f"exemptions nothing needs any more: {sorted(set(EXEMPT) - used)}"


@pytest.mark.parametrize("source", [
    "import time\n",
    "import time as t\n",
    "from time import monotonic\n",
    "x = time.time()\n",
    "time.sleep(1)\n",
    "from concurrent.futures import ThreadPoolExecutor\n",
    "import concurrent.futures\n",
    "from concurrent import futures\n",
    "import threading\nthreading.Thread(target=print).start()\n",
    "import threading\nstop = threading.Event()\n",
    "import threading\nthreading.Timer(1, print).start()\n",
    "from threading import Thread\n",
    "import threading as th\nth.Thread(target=print).start()\n",
    "from datetime import datetime\nstamp = datetime.now()\n",
    "import datetime\nstamp = datetime.datetime.utcnow()\n",
    "from datetime import date\nday = date.today()\n",
    "import asyncio\n",
    "import queue\n",
])
def test_the_check_refuses(source: str) -> None:
    assert violations(source)


@pytest.mark.parametrize("source", [
    "import threading\nlock = threading.Lock()\n",
    "from threading import RLock\n",
    "from datetime import UTC, datetime\nstamp = datetime.fromtimestamp(0, UTC)\n",
    "now = deps.clock.now()\n",
    "pending = deps.tasks.submit(print)\n",
])
def test_the_check_lets_pass(source: str) -> None:
    assert not violations(source)


# ---- the injected clock is the one read ----------------------------------------------------------


def test_memory_deps_builds_every_fake_on_its_clock() -> None:
    clock = ShiftedClock()
    deps = memory_deps(clock=clock)
    fakes = [deps.jobs, deps.log, deps.conversations, deps.agent_data, deps.gates, deps.push]
    assert deps.clock is clock and all(getattr(f, "clock", None) is clock for f in fakes)


def test_tokens_are_checked_on_the_callers_clock() -> None:
    settings = Settings()
    clock = ShiftedClock()
    token = issue_stream_token(settings, "alice", "a" * 32, clock=clock)
    assert verify_stream_token(settings, token, "a" * 32, clock=clock) == "alice"
    clock.offset = settings.stream_token_seconds  # the token's exp, on this clock
    with pytest.raises(Unauthorized) as expired:
        verify_stream_token(settings, token, "a" * 32, clock=clock)
    assert expired.value.code == "token_expired"
    clock.offset = -60  # before its iat: not valid yet, as PyJWT would say
    with pytest.raises(Unauthorized) as early:
        verify_stream_token(settings, token, "a" * 32, clock=clock)
    assert early.value.code == "invalid_token"
