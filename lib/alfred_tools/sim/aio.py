"""An asyncio event loop in virtual time, so the stream's watch hub runs in the simulation as it is.

The loop runs inside one simulated task. Where a real loop blocks in ``select`` until a timer is
due or a file is ready, this one parks its task on a signal for the virtual time until the next
timer; ``call_soon_threadsafe`` (how work finished elsewhere reports back) sets that signal.
``run_in_executor`` (``asyncio.to_thread``: the hub's store reads) runs the function as a task of
the same simulated process, so its store calls interleave with everything else, as a thread's do.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from greenlet import GreenletExit

from alfred_tools.sim.kernel import Kernel, Process, Task


class _Selector:
    """What ``BaseEventLoop._run_once`` asks of a selector: wait up to ``timeout``."""

    def __init__(self, k: Kernel) -> None:
        self.k = k
        self.waiting: Task | None = None  # the loop's task, while it waits here
        self.woken = False

    def select(self, timeout: float | None) -> list[Any]:
        if self.woken:
            self.woken = False
            return []
        if timeout == 0:
            self.k.park(0.0)
            return []
        self.waiting = self.k.current
        try:
            self.k.park(timeout)
        finally:
            self.waiting = None
        self.woken = False
        return []

    def wake(self) -> None:
        self.woken = True
        task, self.waiting = self.waiting, None
        if task is not None:
            self.k.wake(task)

    def close(self) -> None:
        pass


class VirtualLoop(asyncio.BaseEventLoop):
    """``asyncio`` on the simulator's clock, its executor the simulated process's tasks."""

    def __init__(self, k: Kernel, proc: Process) -> None:
        super().__init__()
        self.k = k
        self.proc = proc
        self._selector = _Selector(k)
        self._io_name = f"{proc.name}/io"

    def __del__(self) -> None:
        # Never closed behind the history's back: the coroutines a finished history leaves are
        # collected after it, and their clean-up (a ``finally`` that cancels a task) must not fail.
        pass

    def time(self) -> float:
        return self.k.t

    def run_until_complete(self, future: Any) -> Any:
        try:
            return super().run_until_complete(future)
        except GreenletExit:
            self._close_unstarted()
            raise

    def _close_unstarted(self) -> None:
        """The history ended with the loop parked (the kernel ended its task): it never turns
        again. A task it scheduled and has not stepped yet (``wait_for`` wraps what it waits for
        in one) holds a coroutine that never ran, which the collector would report as never
        awaited; closed now, it is dropped quietly. (The other tasks' coroutines have run and are
        suspended: the collector closes them, running their clean-up, as before.)"""
        for task in asyncio.all_tasks(self):
            coro = task.get_coro()
            if inspect.iscoroutine(coro) and inspect.getcoroutinestate(coro) == inspect.CORO_CREATED:
                coro.close()

    def _process_events(self, event_list: list[Any]) -> None:
        pass

    def _write_to_self(self) -> None:
        self._selector.wake()

    def run_in_executor(  # type: ignore[override]
            self, executor: Any, func: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self.create_future()

        def work() -> None:
            try:
                value = func(*args)
            except BaseException as exc:
                if not self.proc.dead:
                    self.call_soon_threadsafe(_settle, fut, None, exc)
                if not isinstance(exc, Exception):
                    raise
                return
            self.call_soon_threadsafe(_settle, fut, value, None)

        self.k.spawn(self.proc, self._io_name, work, quiet=True)
        return fut


def _settle(fut: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if fut.cancelled():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)
