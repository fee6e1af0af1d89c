"""The report mail of one request: a MIME message built from its result JSON and the listing.

Owns: the mail's headers (Subject wording, header-injection safety), its plain-text and HTML
bodies (HTML-escaped), and attaching the listing CSV that ``report.listing`` writes
(docs/contract.md §6.3).
Must not: read the clock (``now`` is passed), send anything (``outbox.smtp`` does), or take data
from anywhere but the result document and the listing entries — so a mail can always be rebuilt
from ``<request_id>.json``.
"""

from __future__ import annotations

import datetime as dt
import html
import re
import textwrap
from collections.abc import Mapping
from email.header import Header
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path
from typing import Any

from legacyflo_daemon.report.listing import Listing, ListingFile, write_listing

SUBJECT_PREFIX = "[legacyflo]"
_SUBJECT_TITLE_MAX = 120

# Anything a header parser could take as a line break or that is invisible garbage: C0/C1
# controls, DEL, Unicode line/paragraph separators, lone surrogates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]+")
_SPACES = re.compile(r"\s+")


class _ReportPolicy(EmailPolicy):
    """``email.policy.SMTP`` with a Subject folded by ``email.header.Header``.

    Why: the stdlib folder moves a 70-77 character subject whole onto a continuation line
    (``Subject:\r\n [legacyflo] ...``), which parsers then read with a leading space.
    A subject containing ``=?`` is always encoded, so a title cannot smuggle in an encoded word.
    """

    def fold_binary(self, name: str, value: str) -> bytes:
        if name.lower() != "subject":
            return super().fold_binary(name, value)
        text = str(value)
        charset = "us-ascii" if text.isascii() and "=?" not in text else "utf-8"
        folded = Header(text, charset, header_name=name).encode(
            linesep=self.linesep, maxlinelen=self.max_line_length
        )
        return f"{name}: {folded}{self.linesep}".encode("ascii")


_POLICY = _ReportPolicy(linesep="\r\n")
MAIL_POLICY = _POLICY  # for the other mails of the report package (batch)


def header_text(value: str, limit: int = 200) -> str:
    """``value`` made safe for a header: one line, no control characters, at most ``limit`` chars.

    CR, LF and every other control character become a space, so a job title such as
    ``"x\\r\\nBcc: victim@example.com"`` can never start a header of its own.
    """
    flat = _SPACES.sub(" ", _UNSAFE.sub(" ", value)).strip()
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def human_size(size: int) -> str:
    """``1234567`` → ``"1.2 MB"`` (decimal units, as mail clients show them)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _account(account: Mapping[str, Any] | None) -> str:
    if account is None:
        return "-"
    port = f":{account['port']}" if account.get("port") is not None else ""
    return f"{account['userid']}@{account['domain']} on {account['server']}{port}"


def _messages(result: Mapping[str, Any]) -> int:
    totals = result["totals"]
    return int(totals["copied"]) + int(totals["already_present"])


def subject(result: Mapping[str, Any]) -> str:
    """``[legacyflo] Upload Data John Smith: succeeded (1,234 messages)`` and the like."""
    title = header_text(result["jobtitle"], _SUBJECT_TITLE_MAX) or f"request {result['request_id']}"
    status = result["status"]
    if status == "succeeded":
        detail = f" ({_messages(result):,} messages)"
    elif status == "partial":
        t = result["totals"]
        problems = [f"{t['failed']:,} failed"]
        if t.get("altered"):
            problems.append(f"{t['altered']:,} altered")
        if t.get("folders_failed"):
            problems.append(f"{t['folders_failed']:,} folders failed")
        detail = f" ({_messages(result):,} messages, {', '.join(problems)})"
    elif status == "rejected" and result["rejection"]:
        field = result["rejection"]["field"]
        detail = f" (row {result['csv']['row']}" + (f", field {field})" if field else ")")
    else:
        detail = ""
    return header_text(f"{SUBJECT_PREFIX} {title}: {status}{detail}", 300)


def next_step(result: Mapping[str, Any], csv_name: str) -> str:
    """What the administrator should do about one row, from its result."""
    status = result.get("status")
    error = str(result.get("error") or "")
    retry = f"legacyflo-daemon retry {csv_name}"
    if status == "succeeded":
        return "nothing"
    if status == "rejected":
        rejection = result.get("rejection") or {}
        where = f"field {rejection.get('field')}" if rejection.get("field") else "the row"
        return f"correct {where} in the CSV, then: {retry}"
    if status == "cancelled":
        return f"cancelled on purpose; to finish it: {retry}"
    if status == "partial":
        return f"see the failures in this account's report; to copy what is missing: {retry}"
    if "authentication failed" in error:
        return f"check the user id and password (and that IMAP is enabled), then: {retry}"
    if "internal error" in error:
        return f"report the error id from the daemon log; to try again: {retry}"
    return f"fix the cause named in the error, then: {retry}"


def duration_text(result: Mapping[str, Any]) -> str | None:
    """How long a request ran (``1h02m05s``), from its result; None when not known."""
    try:
        start = dt.datetime.fromisoformat(str(result["started"]).replace("Z", "+00:00"))
        end = dt.datetime.fromisoformat(str(result["finished"]).replace("Z", "+00:00"))
    except (KeyError, ValueError, TypeError):
        return None
    seconds = max(0, int((end - start).total_seconds()))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def _facts(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The key facts as (label, value) pairs, shared by the text and HTML bodies."""
    csv = result["csv"]
    facts = [
        ("Request", f"{result['request_id']} (row {csv['row']} of {csv['name']})"),
        ("Status", str(result["status"]).upper()),
    ]
    if result["source"] is not None:
        dest = _account(result["destination"])
        folder = result["destination_folder"] or "-"
        dates = result["date_range"]
        facts += [
            ("Job type", str(result["jobtype"])),
            ("Source", _account(result["source"])),
            ("Destination", f"{dest}, folder {folder}"),
            ("Date range", dates["description"] if dates else "-"),
        ]
    facts += [("Started", result["started"] or "-"), ("Finished", result["finished"] or "-")]
    if (duration := duration_text(result)) is not None:
        facts.append(("Duration", duration))
    if result["status"] != "rejected":
        t = result["totals"]
        facts.append(
            (
                "Messages",
                f"{t['in_range']:,} in range, {t['copied']:,} copied, "
                f"{t['already_present']:,} already present, {t['failed']:,} failed, "
                f"{human_size(t['bytes'])} copied"
                + (f", {t['altered']:,} stored altered" if t.get("altered") else ""),
            )
        )
    facts.append(("Next step", next_step(result, str(result["csv"]["name"]))))
    return facts


_FOLDER_COLUMNS = (
    ("source", "Source folder"),
    ("destination", "Destination folder"),
    ("in_range", "In range"),
    ("copied", "Copied"),
    ("already_present", "Already present"),
    ("failed", "Failed"),
    ("bytes", "Size"),
    ("deleted_dropped", "\\Deleted dropped"),
    ("note", "Note"),
)


def _cell(key: str, value: Any) -> str:
    if key == "bytes":
        return human_size(value)
    return f"{value:,}" if isinstance(value, int) else str(value)


def _text_table(folders: list[Mapping[str, Any]]) -> list[str]:
    """The folders for a plain-text mail: a short block per folder, within 78 columns (a
    table of every column was ~150 wide and wrapped into noise in mail clients)."""
    lines: list[str] = []
    for f in folders:
        lines.append(f"  {f['source']}")
        lines += _wrapped(f"-> {f['destination']}")
        counts = (
            f"{f['in_range']:,} in range: {f['copied']:,} copied, "
            f"{f['already_present']:,} already present, {f['failed']:,} failed, "
            f"{human_size(f['bytes'])}"
        )
        if f.get("altered"):
            counts += f", {f['altered']:,} stored altered"
        if f.get("deleted_dropped"):
            counts += f", \\Deleted dropped on {f['deleted_dropped']:,}"
        lines += _wrapped(counts)
        for label in ("error", "note"):
            if f.get(label):
                lines += _wrapped(f"{label}: {f[label]}")
    return lines


def _wrapped(text: str) -> list[str]:
    return textwrap.wrap(text, width=78, initial_indent="    ", subsequent_indent="      ")


def _folder_cells(folder: Mapping[str, Any]) -> list[str]:
    return [_cell(key, folder[key]) for key, _ in _FOLDER_COLUMNS]


def _failure_line(f: Mapping[str, Any]) -> str:
    date = f["date"] or "date unknown"
    subject = header_text(f["subject"], 300)
    return f'{f["folder"]}, UID {f["uid"]}, {date}, "{subject}": {f["reason"]}'


def _problem_sections(result: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """(heading, items) of what went wrong, shared by the text and HTML bodies: folders that
    failed alone, messages not copied, messages the destination stored altered."""
    sections: list[tuple[str, list[str]]] = []
    failed_folders = [f for f in result["folders"] if f.get("error")]
    if failed_folders:
        sections.append(
            (
                f"Folders that could not be copied ({len(failed_folders):,}); the other "
                "folders were copied",
                [f"{f['source']} → {f['destination']}: {f['error']}" for f in failed_folders],
            )
        )
    failed = [f for f in result["failures"] if f.get("kind", "failed") == "failed"]
    if failed:
        sections.append(
            (
                f"Messages that could not be copied ({len(failed):,})",
                [_failure_line(f) for f in failed],
            )
        )
    altered = [f for f in result["failures"] if f.get("kind") == "altered"]
    if altered:
        sections.append(
            (
                f"Messages the destination stored altered ({len(altered):,}); they are in the "
                "archive, not byte-identical, and will not be copied again",
                [_failure_line(f) for f in altered],
            )
        )
    skipped = result.get("skipped_folders") or []
    if skipped:
        sections.append(
            (
                f"Folders not copied, by design ({len(skipped):,})",
                [f"{f['folder']}: {f['reason']}" for f in skipped],
            )
        )
    return sections


def _rejection_lines(result: Mapping[str, Any]) -> list[str]:
    rej = result["rejection"] or {"field": None, "message": result["error"] or "rejected"}
    where = f"field '{rej['field']}'" if rej["field"] else "the row as a whole"
    return [
        f"Row {result['csv']['row']} of {result['csv']['name']} was rejected; nothing was copied.",
        f"What is wrong: {where}: {rej['message']}",
        "Correct the row and submit it again.",
    ]


def _listing_line(result: Mapping[str, Any], listing: ListingFile) -> str:
    where = result["destination_folder"] or "the destination folder"
    return (
        f"The attached {listing.filename} lists the {listing.entries:,} messages now in "
        f"{listing.folders:,} folders under {where}, "
        "including mail imported by earlier requests."
    )


def _title(result: Mapping[str, Any]) -> str:
    return header_text(result["jobtitle"], 300) or f"request {result['request_id']}"


def text_body(result: Mapping[str, Any], listing: ListingFile | None) -> str:
    """The plain-text body."""
    width = max(len(label) for label, _ in _facts(result)) + 2
    lines = [f"legacyflo migration report: {_title(result)}", ""]
    lines += [f"{label + ':':<{width}}{value}" for label, value in _facts(result)]
    if result["status"] == "rejected":
        lines += ["", *_rejection_lines(result)]
    elif result["error"]:
        lines += ["", f"Error: {result['error']}"]
    if result["folders"]:
        lines += ["", "Folders:", *_text_table(result["folders"])]
    for heading, items in _problem_sections(result):
        lines += ["", f"{heading}:", *[f"  - {item}" for item in items]]
    if result["warnings"]:
        lines += ["", "Warnings:", *[f"  - {w}" for w in result["warnings"]]]
    if listing is not None:
        lines += ["", _listing_line(result, listing)]
    return "\n".join(lines) + "\n"


def html_body(result: Mapping[str, Any], listing: ListingFile | None) -> str:
    """The HTML body; every value taken from the result is escaped."""
    e = html.escape
    title = e(_title(result))
    parts = [
        '<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>',
        f"<h2>legacyflo migration report: {title}</h2>",
        "<table>",
        *[f"<tr><th align='left'>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _facts(result)],
        "</table>",
    ]
    if result["status"] == "rejected":
        parts += [f"<p>{e(line)}</p>" for line in _rejection_lines(result)]
    elif result["error"]:
        parts.append(f"<p><b>Error:</b> {e(result['error'])}</p>")
    if result["folders"]:
        parts += ["<h3>Folders</h3>", "<table border='1' cellspacing='0' cellpadding='3'><tr>"]
        parts += [f"<th>{e(t)}</th>" for _, t in _FOLDER_COLUMNS] + ["</tr>"]
        for folder in result["folders"]:
            cells = "".join(f"<td>{e(c)}</td>" for c in _folder_cells(folder))
            parts.append(f"<tr>{cells}</tr>")
        parts.append("</table>")
    for heading, items in _problem_sections(result):
        parts += [f"<h3>{e(heading)}</h3><ul>", *[f"<li>{e(i)}</li>" for i in items], "</ul>"]
    if result["warnings"]:
        parts += [
            "<h3>Warnings</h3><ul>",
            *[f"<li>{e(w)}</li>" for w in result["warnings"]],
            "</ul>",
        ]
    if listing is not None:
        parts.append(f"<p>{e(_listing_line(result, listing))}</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def build_mail(
    result_json: Mapping[str, Any],
    listing: Listing,
    *,
    from_addr: str,
    to_addr: str | None,
    now: dt.datetime,
    compress_above: int,
    tmpdir: Path,
) -> bytes:
    """The report mail as bytes with CRLF line ends, ready to store as ``.eml`` and send.

    multipart/mixed: multipart/alternative (text/plain + text/html, UTF-8, quoted-printable)
    and, unless the row was rejected, the listing as ``listing.csv`` (``listing.csv.gz`` when the
    CSV is larger than ``compress_above`` bytes), written under ``tmpdir`` from ``listing``: the
    recorded rows, or entries consumed once, as an iterator. No ``To`` header when ``to_addr``
    is None.
    """
    domain = parseaddr(from_addr)[1].rpartition("@")[2] or "localhost"
    msg = EmailMessage(policy=_POLICY)
    text = subject(result_json)
    # The header registry decodes encoded words when a header is set: a title that contains
    # one would come out altered, so such a subject is stored encoded (it decodes to itself).
    msg["Subject"] = Header(text, "utf-8").encode(linesep=" ") if "=?" in text else text
    msg["From"] = header_text(from_addr)
    if to_addr:
        msg["To"] = header_text(to_addr)
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = make_msgid("legacyflo", domain=domain)
    msg["X-Legacyflo-Request-Id"] = header_text(str(result_json["request_id"]))
    if result_json["status"] == "rejected":
        _set_bodies(msg, result_json, None)
        msg.make_mixed()  # same shape as every other report: mixed > alternative
        return msg.as_bytes()
    with write_listing(listing, tmpdir=tmpdir, compress_above=compress_above) as written:
        if not written.entries:  # nothing in the destination folder: no empty attachment
            _set_bodies(msg, result_json, None)
            msg.make_mixed()
            return msg.as_bytes()
        _set_bodies(msg, result_json, written)
        maintype, subtype = written.content_type.split("/")
        params = {"charset": "utf-8"} if maintype == "text" else {}
        msg.add_attachment(
            written.path.read_bytes(),
            maintype=maintype,
            subtype=subtype,
            filename=written.filename,
            params=params,
        )
    return msg.as_bytes()


def _set_bodies(msg: EmailMessage, result: Mapping[str, Any], listing: ListingFile | None) -> None:
    # quoted-printable keeps the mail 7-bit clean for relays without 8BITMIME.
    msg.set_content(text_body(result, listing), cte="quoted-printable")
    msg.add_alternative(html_body(result, listing), subtype="html", cte="quoted-printable")
