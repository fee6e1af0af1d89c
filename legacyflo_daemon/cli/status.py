"""``legacyflo-daemon status``: whether the daemon runs, and what each request is doing.

Reads the state store only (SQLite allows a reader beside the running daemon's writer), so it
works while the daemon runs; writes nothing. An administrator who may read the spool but not
the store (it holds queued passwords) gets the same document from ``<spool>/status.json``,
which the daemon rewrites every 15 s. The pure part (``view``, ``table``, ``detail``)
builds a documented document (``legacyflo_daemon/status.schema.json``, printed by ``--json``)
from what the store holds, and renders it for 80 columns.

The truth rules (when the daemon counts as running, which counts a request shows, the
order) are ``state.view``'s.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from legacyflo_daemon.config.schema import Config
from legacyflo_daemon.errors import StateError
from legacyflo_daemon.report.mail import human_size
from legacyflo_daemon.state.store import open_store
from legacyflo_daemon.state.view import (
    SNAPSHOT_NAME,
    daemon_view,
    detail,
    from_snapshot,
    request_view,
    view,
)

WIDTH = 80


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _progress(item: Mapping[str, Any]) -> str:
    m = item["messages"]
    if "copied" in m:
        done = f"{m['copied']:,} copied"
        if m["already_present"]:
            done += f", {m['already_present']:,} already there"
        if m["failed"]:
            done += f", {m['failed']:,} failed"
        return done
    if not m["total"]:
        return ""
    text = f"{m['done']:,}/{m['total']:,}"
    if m.get("already_present"):
        text += f" ({m['already_present']:,} there)"
    b = item["bytes"]
    if b["done"]:  # the byte total grows folder by folder: the message total is the steady one
        text += f" {human_size(b['done'])}"
    return text


def _line(item: Mapping[str, Any]) -> tuple[str, str, str, str]:
    state = item["state"]  # the phase goes into WHAT: scripts read STATE
    rate = f"{human_size(item['rate_bytes_per_s'])}/s" if item["rate_bytes_per_s"] else ""
    eta = _duration(item["eta_seconds"]) if item["eta_seconds"] is not None else ""
    progress = " ".join(p for p in (_progress(item), rate, eta and f"ETA {eta}") if p)
    if item["state"] == "running" and item["phase"]:
        what = " ".join(p for p in (item["phase"], item["detail"]) if p)
        if item.get("node"):
            what = f"[{item['node']}] {what}"
    elif item["error"]:
        what = item["error"]
    else:
        what = item["title"]
    return item["id"], state, progress, what


def table(doc: Mapping[str, Any], width: int = WIDTH) -> str:
    """``status``'s text: the daemon line, one line per request, a count line; every line
    at most ``width`` columns (the last column is cut, marked with an ellipsis)."""
    lines = [f"daemon: {doc['daemon']['summary']}"[:width], ""]
    if doc.get("source"):  # read from the daemon's snapshot, not the store
        lines[1:1] = [f"(from {doc['source']})"[:width]]
    for node in doc.get("nodes", []):  # a cluster: one line per node
        state = f"running {node['requests']} request(s)" if node["running"] else "gone"
        seen = f", last seen {node['last_seen']}" if not node["running"] else ""
        text = f"node {node['name']}: {state} (pid {node['pid']} on {node['host']}{seen})"
        lines.insert(-1, text[:width])
    rows = [("REQUEST", "STATE", "PROGRESS", "WHAT")] + [_line(i) for i in doc["requests"]]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        head = "  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True))
        room = max(10, width - len(head) - 2)
        what = " ".join(row[3].split())
        if len(what) > room:
            what = what[: room - 1] + "…"
        lines.append(f"{head}  {what}".rstrip())
    counts = ", ".join(f"{n} {s}" for s, n in sorted(doc["counts"].items())) or "no requests"
    return "\n".join([*lines, "", counts]) + "\n"


def detail_text(doc: Mapping[str, Any], width: int = WIDTH) -> str:
    item = doc["request"]
    lines = [f"daemon: {doc['daemon']['summary']}", ""]
    facts = [
        ("Request", item["id"]),
        ("CSV", f"{item['csv']}, row {item['row']}"),
        ("Title", item["title"]),
        ("State", item["state"] + (f" ({item['phase']})" if item["phase"] else "")),
        *([("Node", item["node"])] if item.get("node") else []),
        ("Progress", _progress(item) or "-"),
        ("Duration", _duration(item["duration_seconds"]) or "-"),
    ]
    if item["detail"]:
        facts.append(("Now", item["detail"]))
    if item["error"]:
        facts.append(("Error", item["error"]))
    lines += [f"{k + ':':<10}{v}" for k, v in facts]
    if item["folders"]:
        lines += ["", "Folders:"]
        for f in item["folders"]:
            counts = f"{f.get('copied', 0):,} copied, {f.get('already_present', 0):,} there"
            if f.get("failed"):
                counts += f", {f['failed']:,} failed"
            where = f.get("destination") or ("done" if f.get("done") else "in progress")
            lines.append(f"  {f['source']} → {where}: {counts}")
            if f.get("error"):
                lines.append(f"    error: {f['error']}")
    if item["failures"]:
        lines += ["", f"Messages ({len(item['failures']):,}):"]
        for f in item["failures"]:
            kind = "altered" if f.get("kind") == "altered" else "failed"
            what = f"{f['folder']} UID {f['uid']} {f['subject']!r}"
            lines.append(f"  {kind}: {what}: {f['reason']}")
    cut = [line if len(line) <= width else line[: width - 1] + "…" for line in lines]
    return "\n".join(cut) + "\n"


def main(
    cfg: Config,
    *,
    watch: bool = False,
    as_json: bool = False,
    request_id: str | None = None,
    csv: str | None = None,
    state: str | None = None,
    out: TextIO | None = None,
) -> int:
    stream = out or sys.stdout
    try:
        while True:
            now = dt.datetime.now(dt.UTC)
            doc = _document(cfg, now, request_id, csv, state)
            if request_id is not None:
                text = json.dumps(doc, indent=2) + "\n" if as_json else detail_text(doc)
            else:
                text = json.dumps(doc, indent=2) + "\n" if as_json else table(doc)
            if watch:
                stream.write("\x1b[H\x1b[2J")
            stream.write(text)
            stream.flush()
            if not watch:
                return 0
            time.sleep(2.0)
    except _NoStatus as exc:
        print(f"legacyflo-daemon status: {exc}", file=sys.stderr)
        return 1 if exc.never_ran else 2
    except KeyboardInterrupt:
        return 0


class _NoStatus(Exception):
    def __init__(self, message: str, *, never_ran: bool = False) -> None:
        super().__init__(message)
        self.never_ran = never_ran


def _document(
    cfg: Config, now: dt.datetime, request_id: str | None, csv: str | None, state: str | None
) -> dict[str, Any]:
    """The status document from the state store, or, for an administrator who may read the
    spool but not the store (the service's group), from ``<spool>/status.json``, which the
    daemon rewrites every few seconds."""
    path = cfg.daemon.state_path
    try:
        if cfg.state.url is None and not path.exists():
            raise _NoStatus(
                f"no state store at {path}: the daemon has not run with this config yet "
                "(start it with: legacyflo-daemon run)",
                never_ran=True,
            )
        store = open_store(cfg)
    except (StateError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return _from_snapshot(cfg, now, request_id, csv, state, f"{path}: {reason}")
    try:
        if request_id is not None:
            return detail(store, request_id, now)
        return view(store, now, csv=csv, state=state)
    except StateError as exc:
        raise _NoStatus(str(exc)) from None
    finally:
        store.close()


def _from_snapshot(
    cfg: Config,
    now: dt.datetime,
    request_id: str | None,
    csv: str | None,
    state: str | None,
    why: str,
) -> dict[str, Any]:
    path = cfg.daemon.spool / SNAPSHOT_NAME
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        raise _NoStatus(
            f"{why}; and no readable {path} (the daemon writes it for members of the spool's "
            "group: see the README, 'Installing for production')"
        ) from None
    if request_id is not None:
        raise _NoStatus(f"{why}: the details of one request need read access to the state store")
    doc = from_snapshot(data, now)
    doc["requests"] = [
        r
        for r in doc.get("requests", [])
        if (csv is None or r.get("csv") == csv) and (state is None or r.get("state") == state)
    ]
    doc["source"] = f"{path}, written {data.get('written_at')}"
    return doc


__all__: Sequence[str] = ("daemon_view", "detail", "main", "request_view", "table", "view")
