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
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import structlog

from legacyflo_daemon.errors import InternalError
from legacyflo_daemon.model import Status
from legacyflo_daemon.runtime.secrets import scrub, scrub_text
from legacyflo_daemon.state.schema import iso
from legacyflo_daemon.state.store import StateStore

log = structlog.get_logger("legacyflo_daemon.state.lifecycle")


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

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def start(self, request_id: str, now: dt.datetime) -> None:
        """queued → running; the first start also records ``started_at``."""
        self._apply(request_id, Transition.START, Status.RUNNING, {"started_at": iso(now)})

    def requeue(self, request_id: str) -> None:
        """running → queued: the copy stopped before its end and resumes later."""
        self._apply(request_id, Transition.REQUEUE, Status.QUEUED, {})

    def requeue_all_running(self) -> int:
        """At start-up and at exit: every running request back to queued. Returns the count."""
        sources, _ = TRANSITIONS[Transition.REQUEUE]
        (source,) = sources
        return self.store.apply_bulk_transition(source, Status.QUEUED)

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
