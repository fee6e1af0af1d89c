"""The state store's schema and values: tables, rows as dataclasses, the request codec.

Pure apart from the SQL text. ``request_to_json`` never includes passwords; the store keeps
them in a separate column that it erases when the request finishes.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from legacyflo_daemon.model import Account, DateRange, JobType, Request, Secret, Status

SCHEMA_VERSION = 6

# Messages a destination stored altered (readback): the stored identity stands for the source's
# in every later comparison of that destination folder, by any request (no re-append).
ALTERED_TABLE = """CREATE TABLE IF NOT EXISTS altered_copies (
    dest TEXT NOT NULL,              -- "user@server" of the destination account, lower-case
    folder TEXT NOT NULL,            -- destination wire name
    stored_key TEXT NOT NULL,        -- identity of the copy the destination holds
    source_key TEXT NOT NULL,        -- identity of the source message it is a copy of
    reason TEXT NOT NULL,            -- what differs, for people
    PRIMARY KEY (dest, folder, stored_key, source_key)
)"""

# What the running daemon says about itself and its requests, for ``status`` (no history: a
# request's phase is deleted when it finishes), and the commands ``cancel`` leaves for it.
# Created if missing at every open, so they need no migration.
LIVE_TABLES = """
CREATE TABLE IF NOT EXISTS phases (
    request_id TEXT PRIMARY KEY,
    phase TEXT NOT NULL,             -- connecting, listing, copying, retrying, stopping
    detail TEXT NOT NULL,            -- the folder being copied, the retry's error and next try
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,           -- [state] node: one daemon of a cluster
    doc TEXT NOT NULL,               -- JSON heartbeat: pid, host, started_at, at, state
    seen_at INTEGER NOT NULL         -- epoch seconds of its last heartbeat
);
CREATE TABLE IF NOT EXISTS allowances (
    key TEXT PRIMARY KEY,            -- a host, or "user@host": what a server's refusal lowered
    lim INTEGER NOT NULL,            -- connections it allows, learnt from the refusal
    learnt_at INTEGER NOT NULL       -- epoch seconds
);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,              -- "cancel"
    target TEXT NOT NULL,            -- a request id
    created_at TEXT NOT NULL,
    done_at TEXT
);
"""

# Schema changes an existing store needs, by the version they lead to (applied in order, each in
# the transaction that records the new version).
MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        "ALTER TABLE csv_files ADD COLUMN loaded INTEGER NOT NULL DEFAULT 1",
        "CREATE INDEX IF NOT EXISTS requests_csv ON requests(csv_id, status, seq)",
    ),
    3: (
        "ALTER TABLE failures ADD COLUMN kind TEXT NOT NULL DEFAULT 'failed'",
        ALTERED_TABLE,
    ),
    4: ("ALTER TABLE csv_files ADD COLUMN crash_mark INTEGER NOT NULL DEFAULT 0",),
    5: (
        "ALTER TABLE requests ADD COLUMN node TEXT",
        "ALTER TABLE requests ADD COLUMN lease_until INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE requests ADD COLUMN pairs INTEGER NOT NULL DEFAULT 0",
    ),
    6: ("ALTER TABLE requests ADD COLUMN msgs_present INTEGER NOT NULL DEFAULT 0",),
}

# Made first, alone: the schema version it holds decides the migrations.
META = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);\n"

SCHEMA = (
    META
    + """
CREATE TABLE IF NOT EXISTS csv_files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,              -- file name under processing/
    original TEXT NOT NULL,          -- name it was dropped as
    claimed_at TEXT NOT NULL,
    finished_at TEXT,
    crashes INTEGER NOT NULL DEFAULT 0,
    summary TEXT,                    -- JSON, once finished
    loaded INTEGER NOT NULL DEFAULT 1,  -- 0 while it is parsed and recorded (see add_csv)
    crash_mark INTEGER NOT NULL DEFAULT 0  -- progress_mark at its last counted crash
);
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    csv_id INTEGER NOT NULL REFERENCES csv_files(id),
    row INTEGER NOT NULL,
    seq INTEGER NOT NULL,            -- global FIFO order
    status TEXT NOT NULL,
    title TEXT NOT NULL,
    request TEXT,                    -- JSON without passwords; NULL for rejected rows
    secrets TEXT,                    -- JSON [dest, source] passwords; NULL once finished
    row_error TEXT,                  -- JSON for rejected rows
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    error TEXT,
    result TEXT,                     -- JSON result once finished
    msgs_done INTEGER NOT NULL DEFAULT 0,
    msgs_total INTEGER NOT NULL DEFAULT 0,
    bytes_done INTEGER NOT NULL DEFAULT 0,
    bytes_total INTEGER NOT NULL DEFAULT 0,
    progress_at TEXT,
    node TEXT,                       -- the daemon running it (while running)
    lease_until INTEGER NOT NULL DEFAULT 0, -- epoch seconds: its node's lease ends (running)
    pairs INTEGER NOT NULL DEFAULT 0, -- connection pairs (source + destination) it holds (running)
    msgs_present INTEGER NOT NULL DEFAULT 0  -- of msgs_done: already present
);
CREATE INDEX IF NOT EXISTS requests_status ON requests(status, seq);
CREATE INDEX IF NOT EXISTS requests_csv ON requests(csv_id, status, seq);
CREATE TABLE IF NOT EXISTS folders (
    request_id TEXT NOT NULL REFERENCES requests(id),
    source TEXT NOT NULL,            -- source wire name
    uidvalidity INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    counts TEXT NOT NULL,            -- JSON of the FolderResult counters
    PRIMARY KEY (request_id, source)
);
CREATE TABLE IF NOT EXISTS failures (
    request_id TEXT NOT NULL REFERENCES requests(id),
    folder TEXT NOT NULL,
    uid INTEGER NOT NULL,
    date TEXT,
    subject TEXT NOT NULL,
    reason TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'failed',  -- "failed" or "altered" (stored, but not exactly)
    PRIMARY KEY (request_id, folder, uid)
);
"""
    + ALTERED_TABLE
    + ";\n"
    + LIVE_TABLES
)


@dataclass(frozen=True, slots=True)
class CsvRecord:
    id: int
    name: str
    original: str
    crashes: int
    finished: bool


@dataclass(frozen=True, slots=True)
class RequestRow:
    """A request as the status command and the pool see it (no secrets)."""

    id: str
    csv_id: int
    row: int
    seq: int  # global FIFO order
    status: Status
    title: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: str | None
    msgs_done: int
    msgs_total: int
    bytes_done: int
    bytes_total: int
    progress_at: str | None
    node: str | None = None  # the daemon running it (a shared state), None when not running
    msgs_present: int = 0  # of msgs_done, found already present


@dataclass(frozen=True, slots=True)
class FolderCheckpoint:
    """What a restarted copier needs to resume a folder."""

    source: str
    uidvalidity: int
    done: bool
    counts: dict[str, int]


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="seconds")


def request_key(req: Request) -> str:
    """What a request copies (source account, destination account and folder, any case): two
    requests with one key are the same row run again (a retry)."""
    src, dst = req.source, req.dest
    return f"{src.userid}@{src.server}>{dst.userid}@{dst.server}/{req.dest_folder}".lower()


def request_to_json(req: Request) -> str:
    """Serialise ``req`` without its passwords."""

    def acc(a: Account) -> dict[str, Any]:
        return {"userid": a.userid, "domain": a.domain, "server": a.server, "port": a.port}

    return json.dumps(
        {
            "row": req.row,
            "jobtype": req.jobtype.value,
            "title": req.title,
            "source": acc(req.source),
            "dest": acc(req.dest),
            "dest_folder": req.dest_folder,
            "report_to": req.report_to,
            "since": req.dates.since.isoformat() if req.dates.since else None,
            "before": req.dates.before.isoformat() if req.dates.before else None,
        },
        sort_keys=True,
    )


def request_from_json(text: str, dest_password: str, source_password: str) -> Request:
    """Inverse of ``request_to_json`` with the passwords put back."""
    d = json.loads(text)

    def acc(a: dict[str, Any], pw: str) -> Account:
        return Account(a["userid"], a["domain"], Secret(pw), a["server"], a["port"])

    return Request(
        row=d["row"],
        jobtype=JobType(d["jobtype"]),
        title=d["title"],
        source=acc(d["source"], source_password),
        dest=acc(d["dest"], dest_password),
        dest_folder=d["dest_folder"],
        report_to=d["report_to"],
        dates=DateRange(
            dt.date.fromisoformat(d["since"]) if d["since"] else None,
            dt.date.fromisoformat(d["before"]) if d["before"] else None,
        ),
    )
