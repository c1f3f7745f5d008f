"""Waiters in one process: events for threads, calls for parked requests, ended tasks."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import pytest

from orchestra.tasks import waiting
from orchestra.tasks.waiting import Waiters

if TYPE_CHECKING:
    from orchestra.tasks.lifecycle import TaskRecord


def test_a_call_is_made_once_at_the_next_wake_and_a_forgotten_one_never() -> None:
    waiters, made = Waiters(), []
    waiters.call_on_wake(7, lambda: made.append("kept"))
    dropped = lambda: made.append("dropped")  # noqa: E731
    waiters.call_on_wake(7, dropped)
    waiters.forget(7, dropped)
    event = waiters.event(7)
    waiters.wake(7)
    waiters.wake(7)
    assert made == ["kept"] and event.is_set()


def test_a_failing_call_does_not_stop_the_others() -> None:
    waiters, made = Waiters(), []

    def broken() -> None:
        raise RuntimeError("a waiter's connection is gone")

    waiters.call_on_wake(3, broken)
    waiters.call_on_wake(3, lambda: made.append(3))
    waiters.wake(3)
    assert made == [3]


def test_woken_tasks_are_remembered_as_ended_within_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(waiting, "REMEMBERED", 3)
    waiters = Waiters()
    assert not waiters.has_ended(1)
    for task_id in (1, 2, 3, 4):
        waiters.wake(task_id)
    assert [waiters.has_ended(t) for t in (1, 2, 3, 4)] == [False, True, True, True]


def test_a_call_for_a_task_already_ended_is_refused_so_the_caller_looks() -> None:
    waiters, made = Waiters(), []
    waiters.wake(5)
    assert waiters.call_on_wake(5, lambda: made.append(5)) is False
    waiters.wake(5)
    assert made == []


def test_a_task_queued_here_is_expected_until_its_wake_and_an_id_used_again_is_not_ended() -> None:
    waiters = Waiters()
    waiters.wake(9)  # an earlier task of that id, since deleted
    waiters.expect(9)
    assert waiters.expected(9) and not waiters.has_ended(9)
    assert waiters.call_on_wake(9, lambda: None) is True
    waiters.wake(9)
    assert not waiters.expected(9) and waiters.has_ended(9)


def test_a_final_row_handed_to_a_wake_answers_for_a_while_then_is_read_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waiters, row = Waiters(), cast("TaskRecord", object())
    waiters.wake(4)  # a wake without its row (a worker's NOTIFY): nothing to answer with
    assert waiters.final(4) is None
    waiters.wake(4, row)
    assert waiters.final(4) is row
    waiters.forget_final([4])  # deleted here
    assert waiters.final(4) is None
    waiters.wake(4, row)
    waiters.expect(4)  # the id used again
    assert waiters.final(4) is None
    monkeypatch.setattr(waiting, "FINAL_KEPT", 0.0)
    waiters.wake(5, row)
    assert waiters.final(5) is None  # kept no longer than FINAL_KEPT


def test_final_rows_are_kept_within_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(waiting, "REMEMBERED", 2)
    waiters, row = Waiters(), cast("TaskRecord", object())
    for task_id in (1, 2, 3):
        waiters.wake(task_id, row)
    assert [waiters.final(t) is row for t in (1, 2, 3)] == [False, True, True]
