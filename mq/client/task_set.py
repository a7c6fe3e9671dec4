"""A task group that can be cancelled and waited for on its own, inside a parent group.

A client object enters its main task group in `start()` and leaves it in `aclose()`
(like `ClientInstance`). Shutting down in stages (stop pulling, then let the handlers
finish, then commit) needs groups of tasks that stop independently; cancelling a
nested group entered by the same task would cancel that task too. So each stage's
tasks run in a task group owned by one task of the parent group: cancelling it touches
only its own tasks, and `cancel_and_wait` returns once they are all gone. Exceptions
of its tasks still propagate to the parent group: nothing fails silently.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.abc


class TaskSet:
    def __init__(self, name: str) -> None:
        self.name = name
        self._task_group: anyio.abc.TaskGroup | None = None
        self._scope: anyio.CancelScope | None = None
        self._done = anyio.Event()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Start with `await parent.start(task_set.run)`."""
        try:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as task_group:
                    self._task_group, self._scope = task_group, scope
                    task_status.started()
                    await anyio.sleep_forever()
        finally:
            self._task_group = None
            self._done.set()

    @property
    def running(self) -> bool:
        return self._task_group is not None

    def start_soon(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        if self._task_group is None:
            raise RuntimeError(f"task set {self.name!r} is not running")
        self._task_group.start_soon(fn, *args)

    async def cancel_and_wait(self) -> None:
        """Cancel every task of the set and return once they have all finished."""
        if self._scope is not None:
            self._scope.cancel()
            await self._done.wait()
