"""The batch report: one mail per CSV when its last request ends.

Owns: what an administrator needs to close a batch: one line per row (account, destination,
status, counts, duration, error, the next step) in the mail body and as ``batch.csv``
attached, and the next step for each kind of outcome. Built only from the result documents
of the CSV's requests (``outbox/<request_id>.json`` as kept in the state), so it can always be
rebuilt. ``write_batch_report`` writes it once per CSV into the outbox as
``csv-<csv id>.batch.eml`` (no request id ends so), to ``report.batch_to`` or, when that is
empty, to every distinct report address of its rows.
Must not: send mail (the outbox's sender does), or name a password.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from typing import Any

from legacyflo_daemon.config.schema import Config
from legacyflo_daemon.outbox.store import Outbox
from legacyflo_daemon.report.mail import (
    MAIL_POLICY,
    SUBJECT_PREFIX,
    duration_text,
    header_text,
    next_step,
)
from legacyflo_daemon.runtime.secrets import scrub
from legacyflo_daemon.state.store import StateStore

COLUMNS = (
    "row", "account", "destination", "status", "copied", "already_present", "failed",
    "duration", "error", "next_step",
)  # fmt: skip


def rows(results: Sequence[Mapping[str, Any]], csv_name: str) -> list[dict[str, str]]:
    """One entry per result, in row order, with every column of ``COLUMNS``."""
    out = []
    for r in sorted(results, key=lambda d: d.get("csv", {}).get("row", 0)):
        src, dst, totals = r.get("source") or {}, r.get("destination") or {}, r.get("totals") or {}
        out.append(
            {
                "row": str(r.get("csv", {}).get("row", "")),
                "account": f"{src.get('userid', '')}@{src.get('domain', '')}" if src else "",
                "destination": (
                    f"{dst.get('userid', '')}@{dst.get('server', '')} "
                    f"{r.get('destination_folder') or ''}".strip()
                    if dst
                    else ""
                ),
                "status": str(r.get("status", "")),
                "copied": str(totals.get("copied", "")),
                "already_present": str(totals.get("already_present", "")),
                "failed": str(totals.get("failed", "")),
                "duration": duration_text(r) or "",
                "error": str(r.get("error") or ""),
                "next_step": next_step(r, csv_name),
            }
        )
    return out


def build_batch_mail(
    csv_name: str,
    results: Sequence[Mapping[str, Any]],
    *,
    from_addr: str,
    to_addrs: Sequence[str],
    now: dt.datetime,
) -> bytes:
    """The batch report as CRLF bytes: a text body for 80 columns, ``batch.csv`` attached."""
    entries = rows(results, csv_name)
    counts: dict[str, int] = {}
    for e in entries:
        counts[e["status"]] = counts.get(e["status"], 0) + 1
    tally = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    msg = EmailMessage(policy=MAIL_POLICY)
    msg["Subject"] = header_text(f"{SUBJECT_PREFIX} batch {csv_name}: {len(entries)} rows: {tally}")
    msg["From"] = header_text(from_addr)
    if to_addrs:
        msg["To"] = ", ".join(header_text(a) for a in to_addrs)
    msg["Date"] = format_datetime(now)
    domain = parseaddr(from_addr)[1].rpartition("@")[2] or "localhost"
    msg["Message-ID"] = make_msgid("legacyflo-batch", domain=domain)
    msg["X-Legacyflo-Batch"] = header_text(csv_name)
    lines = [f"legacyflo batch report: {csv_name}", "", f"{len(entries)} rows: {tally}", ""]
    for e in entries:
        counts_text = (
            f"{e['copied']} copied, {e['already_present']} already there, {e['failed']} failed"
            if e["copied"]
            else ""
        )
        lines.append(f"Row {e['row']}: {e['account']} -> {e['destination']}: {e['status'].upper()}")
        for label, value in (("counts", counts_text), ("duration", e["duration"]),
                             ("error", e["error"]), ("next step", e["next_step"])):  # fmt: skip
            if value:
                lines.append(f"  {label}: {value}")
    lines += ["", "The attached batch.csv has the same rows, one per line."]
    msg.set_content("\n".join(lines) + "\n", cte="quoted-printable")
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(entries)
    msg.add_attachment(
        table.getvalue().encode("utf-8"), maintype="text", subtype="csv", filename="batch.csv"
    )
    return msg.as_bytes()


def write_batch_report(csv_id: int, state: StateStore, outbox: Outbox, cfg: Config) -> bool:
    """Write the batch report of a finished CSV once (``csv-<csv id>.batch.eml``); False when it
    was written before. Rows without a report address and no ``report.batch_to``: the mail is
    kept in the outbox without recipients."""
    name = f"csv-{csv_id}.batch"
    if (outbox.dir / f"{name}.eml").exists() or (outbox.sent_dir / f"{name}.eml").exists():
        return False
    record = state.csv(csv_id)
    results = [doc for r in state.requests(csv_id) if (doc := state.result(r.id)) is not None]
    to = list(cfg.report.batch_to) or sorted(
        {str(d["report_to"]) for d in results if d.get("report_to")}
    )
    eml = build_batch_mail(
        record.original,
        scrub(results),
        from_addr=cfg.report.from_address,
        to_addrs=to,
        now=dt.datetime.now(dt.UTC),
    )
    outbox.write_mail(name, eml)
    return True
