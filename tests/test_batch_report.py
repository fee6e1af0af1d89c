"""The batch report (report/batch.py): one mail per CSV with every row and its next step."""

from __future__ import annotations

import csv
import datetime as dt
import email
import email.policy
import io

from legacyflo_daemon.report.batch import build_batch_mail, next_step

NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)


def _result(row: int, status: str, **kw: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "csv": {"name": "accounts.csv", "row": row},
        "status": status,
        "source": {"userid": f"user{row}", "domain": "corp.example", "server": "ex", "port": 993},
        "destination": {"userid": f"arch{row}", "domain": "a", "server": "vault", "port": 993},
        "destination_folder": "INBOX.historical_data.Data",
        "started": "2026-12-05T10:00:00Z",
        "finished": "2026-12-05T10:02:05Z",
        "totals": {"copied": 10, "already_present": 2, "failed": 0},
        "error": None,
        "report_to": f"owner{row}@example.com",
        "rejection": None,
    }
    doc.update(kw)
    return doc


def test_next_steps_name_what_to_do() -> None:
    assert next_step(_result(2, "succeeded"), "a.csv") == "nothing"
    auth = next_step(_result(3, "failed", error="authentication failed: x"), "a.csv")
    assert "password" in auth and "legacyflo-daemon retry a.csv" in auth
    rejected = _result(4, "rejected", rejection={"field": "since", "message": "bad date"})
    assert "correct field since" in next_step(rejected, "a.csv")
    assert "missing" in next_step(_result(5, "partial"), "a.csv")
    assert "cancelled on purpose" in next_step(_result(6, "cancelled"), "a.csv")


def test_batch_mail_lists_every_row_and_attaches_batch_csv() -> None:
    results = [
        _result(3, "failed", error="authentication failed: bad", totals={}),
        _result(2, "succeeded"),
    ]
    raw = build_batch_mail(
        "accounts.csv",
        results,
        from_addr="reports@archive.example",
        to_addrs=["a@example.com", "b@example.com"],
        now=NOW,
    )
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == "[legacyflo] batch accounts.csv: 2 rows: 1 failed, 1 succeeded"
    assert msg["To"] == "a@example.com, b@example.com"
    assert msg["X-Legacyflo-Batch"] == "accounts.csv"
    body = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert body.index("Row 2:") < body.index("Row 3:")  # in row order
    assert "Row 2: user2@corp.example -> arch2@vault INBOX.historical_data.Data: SUCCEEDED" in body
    assert "duration: 0h02m05s" in body and "authentication failed: bad" in body
    (attachment,) = list(msg.iter_attachments())
    assert attachment.get_filename() == "batch.csv"
    table = list(csv.DictReader(io.StringIO(attachment.get_content())))
    assert [(r["row"], r["status"]) for r in table] == [("2", "succeeded"), ("3", "failed")]
    assert table[1]["next_step"].startswith("check the user id and password")
