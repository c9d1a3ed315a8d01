"""Coroutines driven on plain threads (serving/threadtasks.py): the trampoline's order, a
``Pending`` resolved from another thread resuming its awaiter there, and a coroutine that
awaits something needing an event loop failing by itself rather than hanging its thread."""

import asyncio
import threading

import pytest

from serving.threadtasks import Pending, ThreadTask, call_soon, run_here


def test_work_scheduled_with_call_soon_runs_after_the_current_item_in_order():
    order = []

    def first():
        call_soon(order.append, "second")
        call_soon(order.append, "third")
        order.append("first")

    run_here(first)
    assert order == ["first", "second", "third"]


def test_call_soon_outside_run_here_is_refused():
    with pytest.raises(RuntimeError):
        call_soon(print)


def test_a_pending_resolved_on_another_thread_resumes_its_awaiter_there():
    lock = threading.Lock()
    pending = Pending(lock)
    seen = []

    async def awaiter():
        seen.append(await pending)
        seen.append(threading.get_ident())

    run_here(ThreadTask(awaiter()).step)
    assert seen == []  # suspended: the thread is free

    def resolver():
        def resolve():
            with lock:
                pending.resolve(42)
        run_here(resolve)

    thread = threading.Thread(target=resolver)
    thread.start()
    thread.join(5)
    assert seen == [42, thread.ident]


def test_a_pending_already_resolved_does_not_suspend():
    pending = Pending(threading.Lock())
    seen = []

    def resolve_then_await():
        pending.resolve("ready")

        async def awaiter():
            seen.append(await pending)

        ThreadTask(awaiter()).step()

    run_here(resolve_then_await)
    assert seen == ["ready"]


def test_awaiting_what_needs_an_event_loop_fails_the_coroutine_not_the_thread():
    seen = []

    async def wrong():
        try:
            await asyncio.sleep(0)
        except TypeError as error:
            seen.append(str(error))

    run_here(ThreadTask(wrong()).step)
    assert len(seen) == 1 and "needs an event loop" in seen[0]


def test_cancel_marks_what_the_task_waits_for():
    pending = Pending(threading.Lock())

    async def awaiter():
        await pending

    task = ThreadTask(awaiter())
    run_here(task.step)
    task.cancel()
    assert pending.cancelled


def test_work_that_fails_does_not_stop_the_work_queued_after_it(caplog):
    done = []

    def failing():
        call_soon(done.append, "after")
        raise ValueError("a bug")

    run_here(failing)
    assert done == ["after"]
    assert "front-door work failed" in caplog.text
