"""The task set keeps background tasks referenced until they finish, and can wait for them."""

from __future__ import annotations

import asyncio
import gc

from conveyor.common.tasks import TaskSet, current_task


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


def test_one_task_set_spawns_on_whichever_loop_runs_now() -> None:
    # The set remembers the loop of its last spawn; once that loop stopped, the next one's
    # tasks must go to the new loop (they would never run on the old one).
    tasks = TaskSet()

    async def spawn_and_finish() -> asyncio.AbstractEventLoop:
        task = tasks.spawn(asyncio.sleep(0, result=asyncio.get_running_loop()))
        assert task.get_loop() is asyncio.get_running_loop()
        return await task

    loops = [asyncio.run(spawn_and_finish()) for _ in range(3)]
    assert len(set(map(id, loops))) == 3 and len(tasks) == 0


async def test_current_task_asks_the_named_loop_and_falls_back_to_the_running_one() -> None:
    me = asyncio.current_task()
    assert current_task(asyncio.get_running_loop()) is me
    assert current_task(None) is me
    stopped = asyncio.new_event_loop()
    try:
        assert current_task(stopped) is me  # a loop that is not running here has no task: asked anew
    finally:
        stopped.close()


async def test_done_tasks_are_swept_so_the_set_stays_bounded_by_what_runs() -> None:
    tasks = TaskSet()
    blocked = asyncio.Event()
    long_running = [tasks.spawn(blocked.wait()) for _ in range(10)]
    for _ in range(100):  # many short tasks, as one per delivery
        batch = [tasks.spawn(asyncio.sleep(0)) for _ in range(50)]
        await asyncio.gather(*batch)
        assert len(tasks) == 10, "only the running ones count"
        assert len(tasks._tasks) <= 2 * 64 + 50, "done tasks are dropped in sweeps, not kept forever"
    gc.collect()
    assert all(not t.done() for t in long_running), "running tasks are never swept"
    assert set(tasks) == set(long_running)
    blocked.set()
    await tasks.wait(1.0)
    assert len(tasks) == 0 and list(tasks) == []


async def test_a_task_cancelled_before_it_ran_is_not_counted_or_waited_for() -> None:
    tasks = TaskSet()
    started: list[int] = []

    async def work() -> None:
        started.append(1)

    task = tasks.spawn(work())
    task.cancel()
    await asyncio.sleep(0)
    assert task.cancelled() and started == []
    assert len(tasks) == 0
    await asyncio.wait_for(tasks.wait(10.0), 1.0)  # returns at once: nothing runs

