"""The simulator's kernel: virtual time, waits with timeouts, background tasks, crashes, pauses."""

from __future__ import annotations

from alfred_tools.sim.kernel import Kernel, Livelock, Process, SimClock, SimTasks


def test_time_advances_only_as_tasks_sleep_and_ties_follow_the_seed() -> None:
    def order(seed: int) -> list[str]:
        k, out = Kernel(seed), []
        for name in "abcd":
            k.spawn(Process(name), name, lambda n=name: (k.sleep(1.0), out.append(n)))
        k.run(10.0)
        assert k.t == 10.0
        return out

    assert order(1) == order(1)  # the seed decides
    assert {tuple(order(s)) for s in range(20)} != {tuple(order(1))}  # and different seeds differ


def test_a_signal_wakes_its_waiter_or_the_timeout_does() -> None:
    k = Kernel(0)
    clock = SimClock(k)
    sig = clock.signal()
    seen: list[tuple[bool, float]] = []
    k.spawn(Process("w"), "w", lambda: seen.append((sig.wait(5.0), k.t)))
    k.spawn(Process("s"), "s", lambda: (k.sleep(2.0), sig.set()))
    k.spawn(Process("t"), "t", lambda: seen.append((clock.signal().wait(3.0), k.t)))
    k.run(100.0)
    assert sorted(seen) == [(False, 3.0), (True, 2.0)]


def test_submitted_work_returns_its_value_or_raises_its_error() -> None:
    k = Kernel(0)
    proc = Process("p")
    tasks = SimTasks(k, proc)
    got: list[object] = []

    def boom() -> int:
        k.sleep(1.0)
        raise ValueError("no")

    def main() -> None:
        ok = tasks.submit(lambda: (k.sleep(2.0), 7)[1])
        bad = tasks.submit(boom)
        got.append(ok.result())
        try:
            bad.result()
        except ValueError as exc:
            got.append(str(exc))

    k.spawn(proc, "main", main)
    k.run(10.0)
    assert got == [7, "no"] and k.failure is None


def test_a_killed_process_never_runs_again_and_a_paused_one_runs_late() -> None:
    k = Kernel(0)
    victim, sleeper = Process("victim"), Process("sleeper")
    ran: list[str] = []
    k.spawn(victim, "v", lambda: (k.sleep(5.0), ran.append("victim")))
    k.spawn(sleeper, "s", lambda: (k.sleep(1.0), ran.append(f"sleeper at {k.t}")))
    k.spawn(Process("chaos"), "c", lambda: (k.sleep(0.5), k.kill(victim), setattr(sleeper, "paused_until", 30.0)))
    k.run(100.0)
    assert ran == ["sleeper at 30.0"]


def test_an_escaped_error_is_a_finding() -> None:
    k = Kernel(0)
    k.spawn(Process("p"), "p", lambda: 1 / 0)
    k.run(1.0)
    assert isinstance(k.failure, ZeroDivisionError)


def test_asyncio_runs_in_virtual_time_with_its_executor_on_simulated_tasks() -> None:
    import asyncio

    from alfred_tools.sim.aio import VirtualLoop

    k = Kernel(0)
    proc = Process("stream")
    seen: list[tuple[str, float]] = []

    async def main() -> None:
        await asyncio.sleep(5.0)
        seen.append(("slept", k.t))
        value = await asyncio.to_thread(lambda: (k.sleep(2.0), 3)[1])
        seen.append((f"read {value}", k.t))
        try:
            await asyncio.wait_for(asyncio.Event().wait(), 1.5)
        except TimeoutError:
            seen.append(("timed out", k.t))

    def host() -> None:
        loop = VirtualLoop(k, proc)
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    k.spawn(proc, "loop", host)
    k.run(100.0)
    assert k.failure is None
    assert seen == [("slept", 5.0), ("read 3", 7.0), ("timed out", 8.5)]


def test_waits_that_never_move_time_on_are_a_finding_not_a_hang() -> None:
    """Sim seed 198: a stream waited 1.8e-15 s over and over; its loop took the timer for due
    at once (within the clock's resolution) and the history spun at one instant for ever."""
    k = Kernel(0)

    def spin() -> None:
        k.sleep(14.990160875615786)
        while True:
            k.sleep(0.0)

    k.spawn(Process("s"), "s", spin)
    k.run(100.0)
    assert isinstance(k.failure, Livelock)
    k.close()


def test_a_history_ending_before_the_loop_steps_a_task_leaves_no_coroutine_never_awaited() -> None:
    """The stream's loop is parked, not closed, when a history ends (``Stream.start``). A task it
    has scheduled but not yet stepped (``wait_for`` wraps the event's ``wait()`` in one) holds a
    coroutine that never ran: left to the collector, it warned ``coroutine 'Event.wait' was never
    awaited`` after the history (history.py's ``gc.collect``)."""
    import asyncio
    import gc
    import warnings

    from alfred_tools.sim.aio import VirtualLoop

    k = Kernel(0)
    proc = Process("stream")
    waiting: list[bool] = []

    async def main() -> None:
        ev = asyncio.Event()
        waiting.append(True)
        await asyncio.wait_for(ev.wait(), 0)  # the wait becomes a task, run at the loop's next turn

    def host() -> None:
        loop = VirtualLoop(k, proc)
        forever = main()
        try:
            loop.run_until_complete(forever)
        finally:
            forever.close()  # as ``Stream.start``: the history ended with the loop parked in it

    k.spawn(proc, "loop", host)
    # The history ends at the loop's next turn, before it steps the wait's task
    k.run(100.0, stop=lambda: bool(waiting))
    k.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []
