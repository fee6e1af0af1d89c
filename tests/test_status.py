"""``status`` tells the truth (issue 12): whether the daemon runs, phases, result counts for
finished requests, failures first, retries superseding failures, 80 columns, a JSON schema.

The pure part against a real state store; the daemon-level part in test_status_daemon.py.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest

from legacyflo_daemon.cli.status import daemon_view, detail, detail_text, table, view
from legacyflo_daemon.model import Status
from legacyflo_daemon.state.lifecycle import Lifecycle
from legacyflo_daemon.state.store import StateStore

from .copyhelp import Login, make_request

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
SCHEMA = json.loads(
    (Path(__file__).parents[1] / "legacyflo_daemon" / "status.schema.json").read_text()
)


def _beat(state: str, seconds_ago: float, pid: int | None = None) -> dict[str, object]:
    return {
        "state": state,
        "pid": os.getpid() if pid is None else pid,
        "host": socket.gethostname(),
        "started_at": "2026-11-26T10:00:00+00:00",
        "at": (NOW - dt.timedelta(seconds=seconds_ago)).isoformat(),
        "interval": 5.0,
    }


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize(
    ("beat", "running", "words"),
    [
        (None, False, "never ran"),
        (_beat("running", 3), True, "running (pid"),
        (_beat("running", 60), False, "stopped unexpectedly"),
        (_beat("stopped", 1), False, "stopped cleanly"),
    ],
)
def test_daemon_view(beat: dict[str, object] | None, running: bool, words: str) -> None:
    got = daemon_view(beat, NOW)
    assert got["running"] is running and words in got["summary"]


def test_a_fresh_heartbeat_of_a_dead_process_is_not_running() -> None:
    got = daemon_view(_beat("running", 1, pid=_dead_pid()), NOW)
    assert got["running"] is False and "stopped unexpectedly" in got["summary"]


def _store(new_store: Callable[..., StateStore]) -> tuple[StateStore, Lifecycle]:
    store = new_store()
    reqs = [
        (f"req-{i}", make_request(Login(f"user{i}", "pw", "src"), Login(f"arch{i}", "pw", "dst")))
        for i in range(4)
    ]
    # A second CSV retrying user0's row (same account and folder).
    store.add_csv("a.csv", "accounts.csv", NOW, reqs)
    retry = make_request(Login("user0", "pw", "src"), Login("arch0", "pw", "dst"))
    store.add_csv("b.csv", "accounts-retry.csv", NOW, [("req-retry", retry)])
    return store, Lifecycle(store)


def _finish(
    life: Lifecycle, rid: str, status: Status, totals: dict[str, int], error: str = ""
) -> None:
    life.start(rid, NOW - dt.timedelta(minutes=5))
    life.finish(rid, status, {"totals": totals}, NOW - dt.timedelta(minutes=1), error=error or None)


TOTALS = {"in_range": 640, "copied": 340, "already_present": 300, "failed": 0, "bytes": 10**6}


def test_status_view_tells_state_phase_and_result_counts(
    new_store: Callable[..., StateStore],
) -> None:
    store, life = _store(new_store)
    _finish(life, "req-0", Status.FAILED, {}, "authentication failed: wrong password")
    _finish(life, "req-1", Status.SUCCEEDED, TOTALS)
    life.start("req-2", NOW - dt.timedelta(minutes=2))
    store.set_progress("req-2", (50, 100), (6_000_000, 12_000_000), NOW - dt.timedelta(minutes=1))
    store.set_phase("req-2", "retrying", "attempt 2 at 12:00:05 UTC after: refused", NOW)
    store.set_heartbeat(_beat("running", 2))

    doc = view(store, NOW)
    jsonschema.validate(doc, SCHEMA)
    states = [(r["id"], r["state"]) for r in doc["requests"]]
    # failures first; the retry of user0's row is queued, so its failure still shows
    assert states == [
        ("req-0", "failed"),
        ("req-2", "running"),
        ("req-3", "queued"),
        ("req-retry", "queued"),
        ("req-1", "succeeded"),
    ]
    running = doc["requests"][1]
    assert running["phase"] == "retrying" and "attempt 2" in running["detail"]
    assert running["rate_bytes_per_s"] == 100_000 and running["eta_seconds"] == 60
    done = doc["requests"][-1]
    assert done["messages"] == {"in_range": 640, "copied": 340, "already_present": 300,
                                "failed": 0}  # fmt: skip
    assert done["duration_seconds"] == 240

    text = table(doc)
    assert text.startswith("daemon: running (pid")
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert "340 copied, 300 already there" in text and "retrying" in text

    # The daemon stops (SIGKILL): the running request is interrupted, no rate or ETA.
    store.set_heartbeat(_beat("running", 120))
    down = view(store, NOW)
    assert down["daemon"]["running"] is False
    item = next(r for r in down["requests"] if r["id"] == "req-2")
    assert item["state"] == "interrupted" and item["eta_seconds"] is None
    assert "stopped unexpectedly" in table(down)
    store.close()


def test_a_successful_retry_takes_the_place_of_the_failure_and_filters(
    new_store: Callable[..., StateStore],
) -> None:
    store, life = _store(new_store)
    _finish(life, "req-0", Status.FAILED, {}, "connection refused")
    _finish(life, "req-retry", Status.SUCCEEDED, TOTALS)
    ids = [r["id"] for r in view(store, NOW)["requests"]]
    assert "req-0" not in ids and "req-retry" in ids
    assert [r["id"] for r in view(store, NOW, csv="accounts-retry.csv")["requests"]] == [
        "req-retry"
    ]
    assert [r["id"] for r in view(store, NOW, state="queued")["requests"]] == [
        "req-1",
        "req-2",
        "req-3",
    ]
    store.close()


def test_status_of_one_request_shows_its_folders_and_failures(
    new_store: Callable[..., StateStore],
) -> None:
    store, life = _store(new_store)
    life.start("req-1", NOW)
    from legacyflo_daemon.model import MessageFailure
    from legacyflo_daemon.state.store import FolderCheckpoint

    store.save_folder("req-1", FolderCheckpoint("INBOX", 7, True, {"copied": 5, "in_range": 5}))
    store.save_folder("req-1", FolderCheckpoint("Sent", 7, False, {"copied": 2, "in_range": 9}))
    store.add_failure("req-1", MessageFailure("Sent", 4, None, "Hello", "too big"))
    doc = detail(store, "req-1", NOW)
    jsonschema.validate(doc, SCHEMA)
    assert [f["source"] for f in doc["request"]["folders"]] == ["INBOX", "Sent"]
    text = detail_text(doc)
    assert "INBOX → done: 5 copied" in text and "Sent → in progress: 2 copied" in text
    assert "failed: Sent UID 4 'Hello': too big" in text
    store.close()


def test_a_cluster_shows_each_node_and_the_node_of_each_running_request(
    new_store: Callable[..., StateStore],
) -> None:
    store, _ = _store(new_store)
    alive = Lifecycle(store, "node-a")
    dead = Lifecycle(store, "node-b")
    assert alive.claim("req-1", NOW) and dead.claim("req-2", NOW)
    store.set_phase("req-1", "copying", "INBOX", NOW)
    beat = _beat("running", 2)
    store.set_node("node-a", {**beat, "node": "node-a", "running": 1}, 0)
    store.set_node("node-b", {**_beat("running", 2, pid=_dead_pid()), "node": "node-b"}, 0)
    store.set_node("old", {**_beat("stopped", 3 * 86400), "node": "old"}, 0)  # long gone
    doc = view(store, NOW)
    jsonschema.validate(doc, SCHEMA)
    assert doc["daemon"] == {
        "running": True,
        "summary": "1 of 2 nodes running (node-a); gone: node-b",
    }
    assert [(n["name"], n["running"], n["requests"]) for n in doc["nodes"]] == [
        ("node-a", True, 1),
        ("node-b", False, 0),
    ]
    states = {r["id"]: (r["state"], r.get("node")) for r in doc["requests"]}
    assert states["req-1"] == ("running", "node-a")
    assert states["req-2"] == ("interrupted", "node-b")  # its node is gone: taken over soon
    assert states["req-3"] == ("queued", None)
    text = table(doc)
    assert "node node-a: running 1 request(s)" in text and "node node-b: gone" in text
    assert "[node-a] copying INBOX" in text
    assert max(len(line) for line in text.splitlines()) <= 80
    one = detail(store, "req-1", NOW)
    jsonschema.validate(one, SCHEMA)
    assert one["request"]["node"] == "node-a" and "Node:     node-a" in detail_text(one)


def test_a_pid_is_checked_only_in_the_same_pid_namespace() -> None:
    beat = _beat("running", 1, pid=_dead_pid())
    assert daemon_view({**beat, "pidns": os.readlink("/proc/self/ns/pid")}, NOW)["running"] is False
    # Another container on this host name: its pid means nothing here; the fresh beat counts.
    assert daemon_view({**beat, "pidns": "pid:[1]"}, NOW)["running"] is True
