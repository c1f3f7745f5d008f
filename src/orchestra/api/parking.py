"""Requests that wait for a task's end, held without a thread until it comes.

Waitress reads every connection in one event loop and hands each complete request to a
pool of threads. ``GET /task/<id>?wait=N`` (and the dashboard's live task page) would hold
one of those threads for up to N seconds: 16 waiters and nobody else was answered. This
dispatcher holds such a request back instead ("parks" it, costing a socket and a few
hundred bytes) until its task moves on (the process's wake, from a local watcher or a
worker's NOTIFY), its time is up, or a periodic look at the database finds it ended. Only
then does a thread take it, with ``wait`` set to the time left: the view answers at once,
exactly as it would have after waiting itself.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from waitress.task import ThreadedTaskDispatcher

from orchestra.edge.inputs import parse_wait
from orchestra.errors import InvalidInput
from orchestra.tasks import queries

if TYPE_CHECKING:
    from orchestra.tasks.runner import TaskRunner
    from orchestra.tasks.waiting import Call

_LOGGER = logging.getLogger(__name__)
RECHECK = 1.0  # seconds between looks at the database for every parked task (a lost wake)
LOOK = 0.05  # seconds between looks at a parked task whose end no wake will tell
_TASK_PATH = re.compile(r"/(ui/)?tasks?/([0-9]{1,18})/?")


class _Held:
    """What a parked connection leaves in the server's socket map while it waits.

    Waitress's loop asks every entry of its map at every turn whether it wants to read or
    write: two Python calls per connection, 2,000 a turn with 1,000 waiters, which every
    other request paid for (benchmark 12: +0.3 ms on ``GET /health``, +0.0–0.18 ms since).
    A parked connection wants neither; this stand-in says so with a C call, and keeps the
    connection counted against the server's limit.
    """

    __slots__ = ("channel",)
    readable = writable = staticmethod(bool)  # bool() is False
    accepting = False

    def __init__(self, channel: Any) -> None:
        self.channel = channel

    def close(self) -> None:
        """Close the connection itself (the server is stopping)."""
        self.channel.close()


def _hold(channel: Any) -> None:
    """Swap a connection parked from the server's socket map for its stand-in."""
    fd = channel._fileno  # waitress's own fields (pinned below 3.1): its map and descriptor
    if fd is not None and channel._map.get(fd) is channel:
        channel._map[fd] = _Held(channel)


def _unhold(channel: Any) -> None:
    """Put a released connection back into the socket map (any thread: one dict write)."""
    fd = channel._fileno
    held = channel._map.get(fd) if fd is not None else None
    if isinstance(held, _Held) and held.channel is channel:
        channel._map[fd] = channel


@dataclass(eq=False)
class _Ticket:
    """One parked request: its connection, its task and when its wait ends."""

    channel: Any
    task_id: int
    deadline: float
    done: bool = False


class ParkingDispatcher(ThreadedTaskDispatcher):  # type: ignore[misc]
    """Waitress's thread pool, with wait requests parked until their task moves on."""

    def __init__(
        self, runner: TaskRunner, *, protect_reads: bool, admits: Callable[[str], bool]
    ) -> None:
        super().__init__()
        self._runner, self._protect_reads, self._admits = runner, protect_reads, admits
        self._db, self._waiters = runner.db, runner.waiters
        self._parked: dict[int, list[_Ticket]] = {}
        self._calls: dict[int, Call] = {}  # the wake call each parked task has registered
        self._deadlines: list[tuple[float, int, _Ticket]] = []
        self._order = itertools.count()
        self._unseen: set[int] = set()  # parked tasks not yet looked at in the database
        self._status: dict[int, str] = {}  # each parked task's status at the last look
        self._cond = threading.Condition()
        self._stopping = False
        self._clock = threading.Thread(target=self._run, name="orchestra-parking", daemon=True)
        self._clock.start()

    def add_task(self, task: Any) -> None:
        """Hand a connection's next request to a thread, or park it when it waits for a task."""
        ticket = self._ticket(task)
        if ticket is None or self._waiters.has_ended(ticket.task_id):
            super().add_task(task)  # an ended task is answered at once, without a look
        else:
            self._park(ticket)

    def parked(self) -> int:
        """How many requests are parked now."""
        with self._cond:
            return sum(len(tickets) for tickets in self._parked.values())

    def shutdown(self, cancel_pending: bool = True, timeout: int = 5) -> bool:
        """Stop the clock, then the threads (parked connections close with the server)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._clock.join(timeout)
        return bool(super().shutdown(cancel_pending=cancel_pending, timeout=timeout))

    # -- parking ----------------------------------------------------------------------------

    def _ticket(self, channel: Any) -> _Ticket | None:
        """A ticket when the channel's next request waits for a task, else None."""
        request = channel.requests[0] if channel.requests else None
        if request is None or request.error is not None or request.command != "GET":
            return None
        found = _TASK_PATH.fullmatch(request.path or "")
        if found is None:
            return None
        params = dict(parse_qsl(request.query or "", keep_blank_values=True))
        if found.group(1) and params.get("partial") != "1":
            return None  # the dashboard waits only for its live part of the page
        try:
            seconds = parse_wait(params.get("wait"))
        except InvalidInput:
            return None  # the view names the problem
        if seconds <= 0:
            return None
        if self._protect_reads and not ({"AUTHORIZATION", "COOKIE"} & set(request.headers)):
            return None  # refused at once by the app: no point in holding it
        authorization = request.headers.get("AUTHORIZATION")
        if authorization is not None and not self._admits(authorization):
            return None  # a token that may not read is told so at once, not after the wait
        return _Ticket(channel, int(found.group(2)), time.monotonic() + seconds)

    def _park(self, ticket: _Ticket) -> None:
        with self._cond:
            _hold(ticket.channel)  # before any release can see the ticket
            tickets = self._parked.setdefault(ticket.task_id, [])
            tickets.append(ticket)
            heard = True
            if len(tickets) == 1:
                call = self._wake_call(ticket.task_id)
                self._calls[ticket.task_id] = call
                heard = self._waiters.call_on_wake(ticket.task_id, call)
            heapq.heappush(self._deadlines, (ticket.deadline, next(self._order), ticket))
            # a task queued here tells of its end: no look (the periodic one finds lost wakes);
            # any other is looked at after the wake call is in place, so no end slips between
            if not (heard and self._runner.will_hear(ticket.task_id)):
                self._unseen.add(ticket.task_id)
            self._cond.notify()

    def _wake_call(self, task_id: int) -> Call:
        return lambda: self._release(self._take(task_id))

    def _take(self, task_id: int) -> list[_Ticket]:
        """Every ticket parked for ``task_id``, taken out (with the lock held or not)."""
        with self._cond:
            tickets = self._parked.pop(task_id, [])
            call = self._calls.pop(task_id, None)
            self._status.pop(task_id, None)
            for ticket in tickets:
                ticket.done = True
        if call is not None:
            self._waiters.forget(task_id, call)
        return tickets

    def _release(self, tickets: list[_Ticket]) -> None:
        """Give each ticket's request to a thread, its ``wait`` shortened to the time left."""
        now = time.monotonic()
        for ticket in tickets:
            _unhold(ticket.channel)
            if not ticket.channel.requests:
                continue  # the connection was cancelled meanwhile
            request = ticket.channel.requests[0]
            request.query = _with_wait(request.query or "", max(0.0, ticket.deadline - now))
            super().add_task(ticket.channel)

    # -- the clock ---------------------------------------------------------------------------

    def _run(self) -> None:
        """Release tickets whose time is up, and those whose task the database says ended."""
        next_all = next_unheard = time.monotonic() + RECHECK
        while True:
            with self._cond:
                if not self._unseen and not self._stopping:
                    until = min(next_all, next_unheard, self._next_deadline())
                    self._cond.wait(max(0.0, until - time.monotonic()))
                if self._stopping:
                    return
                now = time.monotonic()
                unseen, self._unseen = self._unseen, set()
                parked = set(self._parked)
                expired = self._expired(now)
            if now >= next_all:
                unseen |= parked
                next_all = now + RECHECK
            # run by another process that tells nobody here (another server's task): look often
            unheard = {t for t in parked if not self._heard(t)}
            if not unheard:
                next_unheard = math.inf
            elif now >= next_unheard or next_unheard == math.inf:
                unseen |= unheard
                next_unheard = now + LOOK
            self._release(expired)
            if unseen:
                self._look(unseen)

    def _heard(self, task_id: int) -> bool:
        status = self._status.get(task_id)
        return status is None or self._runner.hears_end(task_id, status)  # None: not looked at

    def _next_deadline(self) -> float:
        return self._deadlines[0][0] if self._deadlines else float("inf")

    def _expired(self, now: float) -> list[_Ticket]:
        """The tickets whose wait has ended, taken out (the lock held)."""
        expired = []
        while self._deadlines and self._deadlines[0][0] <= now:
            ticket = heapq.heappop(self._deadlines)[2]
            if ticket.done:
                continue
            ticket.done = True
            expired.append(ticket)
            tickets = self._parked.get(ticket.task_id, [])
            tickets.remove(ticket)
            if not tickets:
                self._parked.pop(ticket.task_id, None)
                self._status.pop(ticket.task_id, None)
                call = self._calls.pop(ticket.task_id, None)
                if call is not None:
                    self._waiters.forget(ticket.task_id, call)
        return expired

    def _look(self, task_ids: set[int]) -> None:
        """Release the waiters of every task that has ended (or is unknown) by now."""
        try:
            active = queries.unsettled(self._db, task_ids)
        except Exception:  # the database is away: the wakes and the deadlines still work
            _LOGGER.warning("could not look up parked tasks", exc_info=True)
            return
        with self._cond:
            self._status.update((t, s) for t, s in active.items() if t in self._parked)
        for task_id in task_ids - set(active):
            self._release(self._take(task_id))


def _with_wait(query: str, seconds: float) -> str:
    """``query`` with its ``wait`` parameter set to ``seconds``."""
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "wait"]
    return urlencode([*pairs, ("wait", f"{seconds:.3f}")])
