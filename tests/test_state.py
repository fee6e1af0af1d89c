"""State store: FIFO queue, recovery, checkpoints, and no password left behind."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from legacyflo_daemon.errors import StateError
from legacyflo_daemon.model import (
    Account,
    DateRange,
    JobType,
    MessageFailure,
    Request,
    Secret,
    Status,
)
from legacyflo_daemon.state.store import FolderCheckpoint, StateStore

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
PASSWORDS = ('p@ss"w0rd\\%*{} é', "dest-Secr3t,;'")


def make_request(row: int, folder: str = "Data1") -> Request:
    return Request(
        row=row,
        jobtype=JobType.EXCHANGEIMAP,
        title=f"Upload {row}",
        source=Account("john", "baya.com", Secret(PASSWORDS[0]), "baya.com", 993),
        dest=Account("john", "baya-com.example", Secret(PASSWORDS[1]), "dst.example"),
        dest_folder=folder,
        report_to="postmaster@baya.com",
        dates=DateRange(dt.date(2017, 9, 25), dt.date(2018, 9, 24)),
    )


def test_requests_round_trip_with_secrets_and_fifo(tmp_path: Path) -> None:
    st = StateStore(tmp_path / "s.db")
    st.add_csv("a.csv", "a.csv", NOW, [("a-2", make_request(2)), ("a-3", make_request(3))])
    st.add_csv(
        "b.csv", "b.csv", NOW, [("b-2", make_request(2))], [("b-3", 3, "t", {"message": "m"})]
    )
    assert [r.id for r in st.queued()] == ["a-2", "a-3", "b-2"]
    assert st.load_request("a-3") == make_request(3)
    assert st.request_row("b-3").status is Status.REJECTED
    assert st.row_error("b-3") == {"message": "m"}


def test_running_requests_are_requeued_after_restart(tmp_path: Path) -> None:
    st = StateStore(tmp_path / "s.db")
    st.add_csv("a.csv", "a.csv", NOW, [("r1", make_request(2)), ("r2", make_request(3))])
    st.mark_running("r1", NOW)
    st.close()
    st2 = StateStore(tmp_path / "s.db")
    assert st2.requeue_running() == 1
    assert [r.id for r in st2.queued()] == ["r1", "r2"]
    assert st2.request_row("r1").started_at is not None


def test_checkpoints_and_failures(tmp_path: Path) -> None:
    st = StateStore(tmp_path / "s.db")
    st.add_csv("a.csv", "a.csv", NOW, [("r1", make_request(2))])
    cp = FolderCheckpoint("INBOX", 77, False, {"copied": 3})
    st.save_folder("r1", cp)
    st.save_folder("r1", FolderCheckpoint("INBOX", 77, True, {"copied": 5}))
    assert st.folder_checkpoints("r1") == {
        "INBOX": FolderCheckpoint("INBOX", 77, True, {"copied": 5})
    }
    f = MessageFailure("INBOX", 9, None, "Hi", "too big")
    st.add_failure("r1", f)
    st.add_failure("r1", f)  # recorded once
    assert st.failures("r1") == [f]
    st.clear_failures("r1", "INBOX")
    assert st.failures("r1") == []


def test_finished_request_leaves_no_password_in_any_file(tmp_path: Path) -> None:
    st = StateStore(tmp_path / "s.db")
    st.add_csv("a.csv", "a.csv", NOW, [("r1", make_request(2)), ("r2", make_request(3, "D2"))])
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    # stored while queued (proves the search below can find them)
    assert PASSWORDS[1].encode() in blob
    assert json.dumps(PASSWORDS[0])[1:-1].encode() in blob
    st.finish_request("r1", Status.SUCCEEDED, {"ok": True}, NOW)
    st.finish_request("r2", Status.FAILED, {"ok": False}, NOW, error="authentication failed")
    with pytest.raises(StateError):
        st.load_request("r1")
    for p in tmp_path.iterdir():
        data = p.read_bytes()
        for pw in PASSWORDS:
            forms = (pw.encode(), json.dumps(pw)[1:-1].encode(), pw.encode("unicode_escape"))
            for form in forms:
                assert form not in data, p.name
    assert st.result("r2") == {"ok": False}
    assert st.request_row("r2").error == "authentication failed"


def test_finish_requires_a_final_status(tmp_path: Path) -> None:
    st = StateStore(tmp_path / "s.db")
    with pytest.raises(ValueError, match="not a final status"):
        st.finish_request("x", Status.RUNNING, {}, NOW)


def test_crash_counting(tmp_path: Path) -> None:
    st = StateStore(tmp_path / "s.db")
    c = st.add_csv("a.csv", "orig.csv", NOW)
    assert st.record_crash(c) == 1
    assert st.record_crash(c) == 2
    assert st.csv_by_name("a.csv") is not None
    st.finish_csv(c, {"rows": []}, NOW)
    assert st.csv_by_name("a.csv") is None
    assert st.unfinished_csvs() == []
