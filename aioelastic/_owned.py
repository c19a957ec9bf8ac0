"""Owned tasks: plain asyncio tasks with one owner, for work an anyio task group would cost
too much for (a task group's scope and a task handle per task: 3.5 KiB for each of a thousand
jobs, and a scope per fire).

Each task runs in a cancel scope of its own, and ``cancel`` cancels through those scopes,
never with ``Task.cancel()``: a native cancellation would cut through the shielded cleanups of
the code it runs (a job's deregistration, a fire's clearing of its marks, a script's kill
sequence). The owner waits for its tasks (``wait``) before it ends, so none outlives it; the
first exception that escapes one is kept (``error``), the others are cancelled and the owner
told, as a task group would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
from anyio.abc import TaskStatus

__all__ = ["OwnedTasks"]


class _Started:
    """The ``task_status`` ``OwnedTasks.start`` hands its task."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future: asyncio.Future[None] | None = future

    def started(self, value: object = None) -> None:
        future, self.future = self.future, None  # the task keeps its status for its life
        if future is not None and not future.done():
            future.set_result(None)


async def _in_scope(scope: anyio.CancelScope, work: Coroutine[Any, Any, None]) -> None:
    with scope:
        await work


class OwnedTasks:
    """The tasks of one owner (see the module docstring); ``on_error`` is called once a task
    failed (after the others were cancelled)."""

    __slots__ = ("_idle", "_on_error", "_starting", "error", "tasks")

    def __init__(self, on_error: Callable[[], None]) -> None:
        self._on_error = on_error
        self.tasks: dict[asyncio.Task[None], anyio.CancelScope] = {}
        self._starting: dict[asyncio.Task[None], asyncio.Future[None]] = {}
        self._idle: asyncio.Future[None] | None = None
        self.error: BaseException | None = None
        """The first exception that escaped a task."""

    def start_soon(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        scope = anyio.CancelScope()
        task = asyncio.get_running_loop().create_task(_in_scope(scope, work))
        self.tasks[task] = scope
        task.add_done_callback(self._done)
        return task

    async def start(self, func: Callable[..., Coroutine[Any, Any, None]]) -> None:
        """Run ``func(task_status=...)`` as a task and wait until it reports ``started()``;
        an exception it raises before that is raised here (as ``TaskGroup.start``'s)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        status: TaskStatus[None] = _Started(future)
        task = self.start_soon(func(task_status=status))
        self._starting[task] = future
        try:
            await future
        finally:
            self._starting.pop(task, None)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.pop(task, None)
        if not self.tasks:
            self.tasks = {}  # an emptied dict keeps its table (0.2 KiB for each of many jobs)
        exc = None if task.cancelled() else task.exception()
        future = self._starting.pop(task, None)
        if future is not None and not future.done():
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_exception(RuntimeError(f"{task.get_coro()!r} ended before it started"))
        if exc is not None:
            if self.error is None:
                self.error = exc
            self.cancel()
            self._on_error()
        idle = self._idle
        if not self.tasks and idle is not None and not idle.done():
            idle.set_result(None)

    def cancel(self) -> None:
        """Cancel every task (through its scope)."""
        for scope in self.tasks.values():
            scope.cancel()

    async def wait(self, timeout: float) -> bool:
        """Wait until no task is left (True) or ``timeout`` passes (False)."""
        if self.tasks:
            self._idle = idle = asyncio.get_running_loop().create_future()
            try:
                with anyio.move_on_after(timeout):
                    await idle
            finally:
                self._idle = None
        return not self.tasks
