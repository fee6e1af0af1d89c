"""A request's lifecycle: the one writer of request status, with every transition checked.

The transitions, and the statuses each may start from::

    start            queued            → running
    requeue          running           → queued      (a stop, or recovery after a crash)
    finish           running | queued  → succeeded | partial | failed | cancelled
                                          (queued → failed: a poisoned CSV; → cancelled: the
                                          ``cancel`` command)
    record_rejection rejected          → rejected    (once: the row's result is recorded)

Rejected rows are born ``rejected`` (``StateStore.add_csv``) and queued rows ``queued``; no
other code changes a status. Each transition is one ``UPDATE … WHERE status IN (<from>)`` whose
row count is checked: a refused transition means two owners acted on one request (finished
twice, revived after it finished), which is a bug. It is logged loudly with the request id and
raised as ``InternalError``; the request's stored status is left as it was.

``TRANSITIONS`` and ``allowed`` are pure; ``Lifecycle`` applies them to a ``StateStore``.

Several daemons on one shared state (``[state] url``): each is a *node*, and ``Lifecycle`` is
given its name. ``claim`` is its start: the request is locked (``FOR UPDATE SKIP LOCKED``) and
leased to the node until ``lease_until``; another node that tried the same request at the same
moment is told False, which is no bug. The node's heartbeat renews its leases
(``StateStore.renew_leases``); ``take_over`` re-queues the requests of a node whose leases
ran out (it died) so that any node resumes them from their checkpoints. Requeue and finish of a
running request also require that it is still this node's.

Fencing: a lease is written in the database's terms (``lease_until``, epoch seconds of this
node's wall clock), but a node must also know *locally* whether it still holds one, because a
node frozen past its lease (SIGSTOP, a paused VM) wakes with work in hand before its heartbeat
runs again (asyncio runs I/O callbacks before due timers). ``claim`` and ``renew`` therefore
record a local deadline per request: the local clock read *before* the database was written,
plus ``FENCE_FRACTION`` of ``lease_seconds``. ``fresh`` says whether it has not passed. The
clock is ``CLOCK_BOOTTIME`` where there is one (Linux): like ``CLOCK_MONOTONIC`` it never goes
back and keeps counting while the process is stopped, and it also counts a suspend of the
machine. The remaining fraction is the margin for the other nodes' clocks being ahead of ours
and for the time between a check and the write it allows (``Scheduler._lease_held``).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Collection, Mapping
from enum import StrEnum
from typing import Any

import structlog

from legacyflo_daemon.errors import InternalError
from legacyflo_daemon.model import Status
from legacyflo_daemon.runtime.secrets import scrub, scrub_text
from legacyflo_daemon.state.schema import iso
from legacyflo_daemon.state.store import StateStore

log = structlog.get_logger("legacyflo_daemon.state.lifecycle")

# A lease held in the database is trusted locally for this fraction of ``lease_seconds`` after
# it was written. Renewals come every third of it, so a healthy node never reaches the local
# deadline; the other half is the margin against clock skew between the nodes.
FENCE_FRACTION = 0.5


def fence_clock() -> float:
    """Seconds of a clock that never goes back and counts while the process is stopped (and,
    on Linux, while the machine is suspended): the local lease deadlines' clock."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


class Transition(StrEnum):
    START = "start"
    REQUEUE = "requeue"
    FINISH = "finish"
    RECORD_REJECTION = "record_rejection"


_FINAL = frozenset({Status.SUCCEEDED, Status.PARTIAL, Status.FAILED, Status.CANCELLED})

# transition → (statuses it may start from, statuses it may lead to)
TRANSITIONS: Mapping[Transition, tuple[frozenset[Status], frozenset[Status]]] = {
    Transition.START: (frozenset({Status.QUEUED}), frozenset({Status.RUNNING})),
    Transition.REQUEUE: (frozenset({Status.RUNNING}), frozenset({Status.QUEUED})),
    Transition.FINISH: (frozenset({Status.RUNNING, Status.QUEUED}), _FINAL),
    Transition.RECORD_REJECTION: (frozenset({Status.REJECTED}), frozenset({Status.REJECTED})),
}


def allowed(transition: Transition, current: Status, new: Status) -> bool:
    """Whether ``transition`` may take a request from ``current`` to ``new``."""
    sources, targets = TRANSITIONS[transition]
    return current in sources and new in targets


class Lifecycle:
    """Applies the transitions of ``TRANSITIONS`` to requests in ``store``."""

    def __init__(self, store: StateStore, node: str | None = None, lease_seconds: float = 60.0):
        """``node``: this daemon's name in a shared state (None: the only daemon)."""
        self.store = store
        self.node = node
        self.lease_seconds = lease_seconds
        self._deadlines: dict[str, float] = {}  # request id -> local lease deadline (fence)

    def lease_end(self, now: dt.datetime) -> int:
        """Epoch seconds when a lease taken or renewed at ``now`` ends."""
        return int(now.timestamp() + self.lease_seconds)

    def start(self, request_id: str, now: dt.datetime) -> None:
        """queued → running; the first start also records ``started_at``."""
        self._apply(request_id, Transition.START, Status.RUNNING, {"started_at": iso(now)})

    def claim(self, request_id: str, now: dt.datetime) -> bool:
        """queued → running, leased to this node: True when it is now ours, False when another
        node claimed it first (or holds its row right now). The only daemon: ``start``."""
        if self.node is None:
            self.start(request_id, now)
            return True
        # One connection pair from the start: the other nodes' admission counts it at once.
        sets = {"started_at": iso(now), "node": self.node, "lease_until": self.lease_end(now),
                "pairs": 1}  # fmt: skip
        sources, _ = TRANSITIONS[Transition.START]
        written = fence_clock()
        claimed = self.store.apply_transition(
            request_id, sources, Status.RUNNING, sets, skip_locked=True
        )
        if claimed:
            self._deadlines[request_id] = written + FENCE_FRACTION * self.lease_seconds
        return claimed

    def renew(self, now: dt.datetime, ids: Collection[str]) -> set[str]:
        """Renew this node's leases on ``ids`` (the requests it runs); those still this
        node's (a shared state). Their local deadlines move on; the others' are dropped."""
        if self.node is None:
            return set()
        written = fence_clock()  # before the write: the deadline errs on the early side
        held = self.store.renew_leases(self.node, self.lease_end(now), ids)
        for rid in ids:
            if rid in held:
                self._deadlines[rid] = written + FENCE_FRACTION * self.lease_seconds
            else:
                self._deadlines.pop(rid, None)
        return held

    def fresh(self, request_id: str) -> bool:
        """Whether this node's lease on ``request_id`` is surely still valid, by the local
        deadline alone (see the module docstring); False also when it was never claimed here
        or was lost. The only daemon: always True (no lease)."""
        if self.node is None:
            return True
        deadline = self._deadlines.get(request_id)
        return deadline is not None and fence_clock() < deadline

    def forget(self, request_id: str) -> None:
        """The request no longer runs here: drop its local deadline."""
        self._deadlines.pop(request_id, None)

    def take_over(self, now: dt.datetime) -> list[tuple[str, int]]:
        """Requeue the running requests whose node's lease ran out (it died: kill -9, power
        loss, network cut); their (id, csv id). Each goes to one node, whoever calls first."""
        sources, _ = TRANSITIONS[Transition.REQUEUE]
        (source,) = sources
        return self.store.apply_bulk_transition(
            source, Status.QUEUED, lease_before=int(now.timestamp())
        )

    def requeue(self, request_id: str) -> None:
        """running → queued: the copy stopped before its end and resumes later."""
        self._apply(request_id, Transition.REQUEUE, Status.QUEUED, {})

    def requeue_all_running(self) -> int:
        """At start-up and at exit: every running request back to queued (in a shared state:
        every one of this node's). Returns the count."""
        return len(self.requeue_own())

    def requeue_own(self) -> list[tuple[str, int]]:
        """``requeue_all_running``, with the (id, csv id) of each request."""
        sources, _ = TRANSITIONS[Transition.REQUEUE]
        (source,) = sources
        return self.store.apply_bulk_transition(source, Status.QUEUED, node=self.node)

    def finish(
        self,
        request_id: str,
        status: Status,
        result: Mapping[str, Any],
        now: dt.datetime,
        error: str | None = None,
    ) -> None:
        """The final status and result of a queued or running request; its passwords are
        erased in the same transaction."""
        transition = Transition.RECORD_REJECTION if status is Status.REJECTED else Transition.FINISH
        # Server texts may quote a password back (a LOGIN refusal echoing its arguments): the
        # registered ones never reach the state.
        sets: dict[str, Any] = {
            "finished_at": iso(now),
            "result": json.dumps(scrub(dict(result)), sort_keys=True),
            "error": scrub_text(error) if error is not None else None,
            "secrets": None,
        }
        self._apply(request_id, transition, status, sets)

    def _apply(
        self, request_id: str, transition: Transition, new: Status, sets: Mapping[str, Any]
    ) -> None:
        sources, targets = TRANSITIONS[transition]
        if new not in targets:
            raise InternalError(f"request {request_id}: {transition} cannot lead to {new}")
        if self.store.apply_transition(
            request_id,
            sources,
            new,
            sets,
            without_result=transition is Transition.RECORD_REJECTION,
            node=self.node,
        ):
            return
        current = self.store.status_of(request_id)
        log.error(
            "request_transition_refused",
            request_id=request_id,
            transition=str(transition),
            to=str(new),
            current=None if current is None else str(current),
        )
        raise InternalError(
            f"request {request_id}: {transition} to {new} refused, its status is {current}"
        )
