"""The status document: whether the daemon runs, and what each request is doing. Pure reads.

Owns: the document ``status --json`` prints (``legacyflo_daemon/status.schema.json``) and its
truth rules, built from a ``StateStore`` alone, so that the command line and the daemon (which
writes it as ``<spool>/status.json`` for administrators without access to the store) show the
same thing. Must not: write to the store.

Truth rules (decisions):

- The daemon is *running* only while its heartbeat (written every few seconds) is fresh, and,
  on this machine, its pid is alive. Otherwise it is "not running", with when it was last seen
  and whether it stopped cleanly. While it is down, a request left ``running`` in the store is
  shown as ``interrupted`` (it resumes at the next start), without rate or ETA.
- A finished request shows the counts of its result (copied, already present, failed), not the
  live counters of its last run, which start again at 0 after a resume.
- Failures first, then running, queued, and finished ones. A request superseded by a later
  request for the same account and folder (a retry) that succeeded is left out of the list.
- Several daemons on one shared state (a cluster): each node's heartbeat is judged alone
  (``nodes``: every node seen in the last ``NODES_SHOWN_SECONDS``); the daemon "runs" while
  any node does; a running request shows its node, and is ``interrupted`` while its node is
  gone (another node takes it over once its lease ran out).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Mapping
from typing import Any

from legacyflo_daemon.model import Status
from legacyflo_daemon.state.store import RequestRow, StateStore

STATUS_VERSION = 1
STALE_INTERVALS = 3  # a heartbeat older than this many intervals means the daemon is gone
NODES_SHOWN_SECONDS = 86400.0  # a cluster node gone longer than this is no longer listed
_ORDER = {
    "failed": 0,
    "partial": 1,
    "rejected": 2,
    "cancelled": 3,
    "interrupted": 3,
    "running": 4,
    "queued": 5,
    "succeeded": 6,
}


def _time(text: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text) if text else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def daemon_view(heartbeat: Mapping[str, Any] | None, now: dt.datetime) -> dict[str, Any]:
    """Whether the daemon runs, from its heartbeat (see the module docstring)."""
    if heartbeat is None:
        return {"running": False, "summary": "not running (it never ran with this state)"}
    at = _time(str(heartbeat.get("at", ""))) or now
    age = (now - at).total_seconds()
    interval = float(heartbeat.get("interval", 5.0))
    pid = int(heartbeat.get("pid", 0))
    host = str(heartbeat.get("host", ""))
    out: dict[str, Any] = {
        "pid": pid,
        "host": host,
        "started_at": heartbeat.get("started_at"),
        "last_seen": heartbeat.get("at"),
        "heartbeat_age_seconds": round(age, 1),
    }
    fresh = heartbeat.get("state") == "running" and age <= STALE_INTERVALS * max(interval, 5.0)
    # The pid means something only on this machine, in this pid namespace (containers).
    here = host == socket.gethostname() and heartbeat.get("pidns", "") in ("", _pid_namespace())
    if fresh and here and not _pid_alive(pid):
        fresh = False
    seen = f"{at:%Y-%m-%d %H:%M:%S} UTC"
    if fresh:
        since = heartbeat.get("started_at")
        summary = f"running (pid {pid} on {host}, since {since}, heartbeat {age:.0f} s ago)"
    elif heartbeat.get("state") == "stopped":
        summary = f"not running (stopped cleanly at {seen})"
    else:
        summary = f"not running (stopped unexpectedly; last seen {seen})"
    out |= {"running": fresh, "summary": summary}
    return out


def nodes_view(nodes: Mapping[str, Mapping[str, Any]], now: dt.datetime) -> list[dict[str, Any]]:
    """The nodes of a cluster (name -> heartbeat), each judged like ``daemon_view``; those
    gone longer than ``NODES_SHOWN_SECONDS`` are left out."""
    out = []
    for name, beat in sorted(nodes.items()):
        seen = daemon_view(beat, now)
        if not seen["running"] and seen["heartbeat_age_seconds"] > NODES_SHOWN_SECONDS:
            continue
        out.append({"name": name, "running": seen["running"], "host": seen["host"],
                    "pid": seen["pid"], "last_seen": seen["last_seen"],
                    "requests": int(beat.get("running", 0)) if seen["running"] else 0})  # fmt: skip
    return out


def cluster_daemon(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``daemon`` object of a cluster: running while any node runs."""
    alive = [n["name"] for n in nodes if n["running"]]
    gone = [n["name"] for n in nodes if not n["running"]]
    summary = f"{len(alive)} of {len(nodes)} nodes running"
    summary += f" ({', '.join(alive)})" if alive else ""
    summary += f"; gone: {', '.join(gone)}" if gone else ""
    return {"running": bool(alive), "summary": summary}


def request_view(
    r: RequestRow,
    phase: tuple[str, str, str] | None,
    result: Mapping[str, Any] | None,
    csv_name: str,
    daemon_running: bool,
    now: dt.datetime,
) -> dict[str, Any]:
    """One request as ``status --json`` shows it."""
    state = r.status.value
    if r.status is Status.RUNNING and not daemon_running:
        state = "interrupted"
    started, finished = _time(r.started_at), _time(r.finished_at)
    out: dict[str, Any] = {
        "id": r.id,
        "csv": csv_name,
        "row": r.row,
        "title": r.title,
        "state": state,
        "phase": phase[0] if phase and state == "running" else None,
        "detail": phase[1] if phase and state == "running" else None,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "duration_seconds": (
            round(((finished or now) - started).total_seconds()) if started else None
        ),
        "error": r.error,
    }
    if r.node is not None:
        out["node"] = r.node if r.status is Status.RUNNING else None
    totals = (result or {}).get("totals") or {}
    if r.status.finished and totals:
        out["messages"] = {
            "in_range": totals.get("in_range", 0),
            "copied": totals.get("copied", 0),
            "already_present": totals.get("already_present", 0),
            "failed": totals.get("failed", 0),
        }
        out["bytes"] = {"copied": totals.get("bytes", 0)}
        out["rate_bytes_per_s"] = out["eta_seconds"] = None
        return out
    # done/total: in-range messages, the total counted before the first APPEND (it does not
    # grow as folders are copied); already_present: of the done ones.
    out["messages"] = {
        "done": r.msgs_done,
        "total": r.msgs_total,
        "already_present": r.msgs_present,
    }
    out["bytes"] = {"done": r.bytes_done, "total": r.bytes_total}
    rate = eta = None
    progress_at = _time(r.progress_at)
    copied = r.msgs_done - r.msgs_present  # what this run moved (and failed): the pace
    if state == "running" and started and progress_at and r.bytes_done > 0:
        seconds = max(1.0, (progress_at - started).total_seconds())
        rate = r.bytes_done / seconds
        if copied > 0 and r.msgs_total:
            # By messages against the planned total: steady (the byte total grows as folders
            # are read, the message total does not).
            eta = round(max(0, r.msgs_total - r.msgs_done) * seconds / copied)
    out["rate_bytes_per_s"] = round(rate) if rate is not None else None
    out["eta_seconds"] = eta
    return out


def view(
    store: StateStore,
    now: dt.datetime,
    *,
    csv: str | None = None,
    state: str | None = None,
) -> dict[str, Any]:
    """The whole ``status --json`` document (filters: a CSV's name, a state)."""
    daemon, nodes, alive = _daemon_and_nodes(store, now)
    phases = store.phases()
    names: dict[int, str] = {}
    requests: list[tuple[int, dict[str, Any]]] = []
    rows = store.requests()
    keys = store.request_keys()
    latest = store.latest_by_key(rows)
    for r in rows:
        last = latest.get(keys.get(r.id, ""))
        if last is not None and last.seq != r.seq and last.status is Status.SUCCEEDED:
            continue  # a later request for the same account and folder succeeded
        if r.csv_id not in names:
            names[r.csv_id] = store.csv(r.csv_id).original
        if csv is not None and names[r.csv_id] != csv:
            continue
        result = store.result(r.id) if r.status.finished else None
        running = daemon["running"] if not nodes else r.node in alive
        item = request_view(r, phases.get(r.id), result, names[r.csv_id], running, now)
        if state is not None and item["state"] != state:
            continue
        requests.append((r.seq, item))
    requests.sort(key=lambda pair: (_ORDER.get(pair[1]["state"], 9), pair[0]))  # then FIFO
    listed = [item for _, item in requests]
    counts: dict[str, int] = {}
    for item in listed:
        counts[item["state"]] = counts.get(item["state"], 0) + 1
    doc = {"version": STATUS_VERSION, "daemon": daemon, "counts": counts, "requests": listed}
    if nodes:
        doc["nodes"] = nodes
    return doc


def _daemon_and_nodes(
    store: StateStore, now: dt.datetime
) -> tuple[dict[str, Any], list[dict[str, Any]], set[str]]:
    """The daemon object, the cluster's nodes (empty for the only daemon) and the names of
    those running."""
    nodes = nodes_view(store.nodes(), now)
    if not nodes:
        return daemon_view(store.heartbeat(), now), [], set()
    return cluster_daemon(nodes), nodes, {n["name"] for n in nodes if n["running"]}


def detail(store: StateStore, request_id: str, now: dt.datetime) -> dict[str, Any]:
    """``status <request-id>``: the request, its folders (checkpoints or result) and failures."""
    r = store.request_row(request_id)
    daemon, nodes, alive = _daemon_and_nodes(store, now)
    running = daemon["running"] if not nodes else r.node in alive
    result = store.result(r.id) if r.status.finished else None
    item = request_view(
        r, store.phases().get(r.id), result, store.csv(r.csv_id).original, running, now
    )
    if result is not None:
        item["folders"] = [
            {k: f.get(k) for k in ("source", "destination", "in_range", "copied",
                                   "already_present", "failed", "error", "note")}
            for f in result.get("folders", [])
        ]  # fmt: skip
        item["failures"] = result.get("failures", [])
    else:
        item["folders"] = [
            {"source": name, "done": cp.done, **cp.counts}
            for name, cp in sorted(store.folder_checkpoints(r.id).items())
        ]
        item["failures"] = [
            {"folder": f.folder, "uid": f.uid, "date": f.date, "subject": f.subject,
             "reason": f.reason, "kind": f.kind}
            for f in store.failures(r.id)
        ]  # fmt: skip
    return {"version": STATUS_VERSION, "daemon": daemon, "request": item}


SNAPSHOT_NAME = "status.json"  # in the spool: the status document for the service's group


def snapshot(store: StateStore, now: dt.datetime) -> dict[str, Any]:
    """What the daemon writes to ``<spool>/status.json``: ``view`` and the raw heartbeat, so
    a reader can tell again whether the daemon still runs when it reads the file."""
    return {"written_at": now.isoformat(), "heartbeat": store.heartbeat(),
            "nodes": store.nodes(), "doc": view(store, now)}  # fmt: skip


def from_snapshot(data: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    """The status document from a snapshot, judged again at ``now``: the daemon's state from
    the heartbeat it holds; if the daemon is not running, its running requests are
    ``interrupted``, without rate or ETA."""
    doc = dict(data["doc"])
    nodes = nodes_view(data.get("nodes") or {}, now)
    doc["daemon"] = cluster_daemon(nodes) if nodes else daemon_view(data.get("heartbeat"), now)
    alive = {n["name"] for n in nodes if n["running"]}
    if nodes:
        doc["nodes"] = nodes
    if not doc["daemon"]["running"] or nodes:
        requests = []
        for item in doc.get("requests", []):
            gone = not doc["daemon"]["running"] or item.get("node") not in alive
            if item.get("state") == "running" and gone:
                item = {**item, "state": "interrupted", "phase": None, "detail": None,
                        "rate_bytes_per_s": None, "eta_seconds": None}  # fmt: skip
            requests.append(item)
        doc["requests"] = requests
        counts: dict[str, int] = {}
        for item in requests:
            counts[item["state"]] = counts.get(item["state"], 0) + 1
        doc["counts"] = counts
    return doc
