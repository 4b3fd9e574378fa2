"""The task set keeps background tasks referenced until they finish, and can wait for them."""

from __future__ import annotations

import asyncio
import gc

from conveyor.common.tasks import TaskSet


async def test_a_spawned_task_survives_garbage_collection_and_leaves_the_set_when_done() -> None:
    tasks = TaskSet()
    gate = asyncio.Event()
    done: list[int] = []

    async def work() -> None:
        await gate.wait()
        done.append(1)

    tasks.spawn(work())
    gc.collect()
    assert len(tasks) == 1
    gate.set()
    await tasks.wait(1.0)
    assert done == [1] and len(tasks) == 0


async def test_wait_returns_after_its_timeout_with_tasks_still_running() -> None:
    tasks = TaskSet()
    task = tasks.spawn(asyncio.sleep(10))
    await tasks.wait(0.01)
    assert not task.done() and list(tasks) == [task]
    task.cancel()
