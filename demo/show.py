"""How ``make demo`` shows things: short human lines for log events, the folder tree, the mail.

Owns: the text of the demo's output, as pure functions of values (event dicts, folder counts,
mail bytes). Must not: print, read files or talk to servers (``demo`` does); never render a
password: the request CSV is shown with its password fields masked.
"""

from __future__ import annotations

import csv
import email
import email.policy
import gzip
import io
from collections.abc import Iterable, Mapping, Sequence
from email.message import EmailMessage
from typing import Any

from legacyflo_daemon.report.mail import human_size as human_bytes

MASK = "********"
_PROBLEM_LEVELS = {"warning", "error", "critical"}
_DETAIL_KEYS = ("error", "reason", "file", "folder")


def heading(title: str) -> str:
    return f"\n== {title} " + "=" * max(3, 72 - len(title))


def masked_csv(data: bytes, password_fields: Sequence[str]) -> str:
    """The CSV text with every password field replaced by ``********`` (all fields quoted)."""
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    header = [name.strip().lower() for name in rows[0]] if rows else []
    hidden = {i for i, name in enumerate(header) if name in {f.lower() for f in password_fields}}
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
    for n, row in enumerate(rows):
        writer.writerow([MASK if n and i in hidden else v for i, v in enumerate(row)])
    return out.getvalue()


def _exception_text(value: Any) -> str:
    # structlog's JSON exceptions: a list of {"exc_type", "exc_value", ...}, the last one raised.
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        last = value[-1]
        return f"{last.get('exc_type', '?')}: {last.get('exc_value', '')}"
    return str(value).strip().splitlines()[-1] if str(value).strip() else ""


def _counts(values: Mapping[str, Any]) -> str:
    text = f"{values.get('copied', 0)} copied"
    if values.get("already_present"):
        text += f", {values['already_present']} already there"
    if values.get("failed"):
        text += f", {values['failed']} FAILED"
    return text


def event_line(event: Mapping[str, Any]) -> str | None:
    """A one-line summary of a daemon log event, or None for events the demo does not show."""
    name = str(event.get("event", ""))
    if name == "request_started":
        return (
            f"> {event.get('title', '')}\n"
            f"  {event.get('source')} on {event.get('source_server')}  ->  "
            f"{event.get('dest')} on {event.get('dest_server')}, folder {event.get('folder')}"
        )
    if name == "folder_copied":
        nbytes = human_bytes(int(event.get("bytes") or 0))
        return (
            f"  copied folder {str(event.get('folder')) + ':':<18} "
            f"{event.get('in_range', 0):>2} in range, {_counts(event)} ({nbytes})"
        )
    if name == "request_finished":
        line = f"< finished: {str(event.get('status', '?')).upper()}"
        totals = event.get("totals")
        if isinstance(totals, Mapping):
            line += f" - {_counts(totals)} in {totals.get('folders', 0)} folders"
        if event.get("error"):
            line += f"\n  error: {event['error']}"
        return line
    if name == "report_sent":
        return f"  report mail handed to the SMTP server ({event.get('to_host')})"
    if str(event.get("level", "")).lower() in _PROBLEM_LEVELS:
        details = [f"{k}={event[k]}" for k in _DETAIL_KEYS if event.get(k) not in (None, "")]
        if "exception" in event:
            details.append(_exception_text(event["exception"]))
        return f"! {event.get('level')}: {name} {' '.join(details)}".rstrip()
    return None


def folder_tree(counts: Mapping[str, int | None], separator: str = ".") -> list[str]:
    """Folder names (full paths) as an indented tree with message counts; None = no count
    (a folder that cannot hold mail, or whose count could not be read)."""
    tree: dict[str, Any] = {}
    for name in counts:
        node = tree
        for part in name.split(separator):
            node = node.setdefault(part, {})
    rows: list[tuple[str, str]] = []

    def walk(node: Mapping[str, Any], path: list[str], prefix: str) -> None:
        names = sorted(node, key=lambda n: (n != "INBOX", n.casefold()))
        for i, part in enumerate(names):
            last = i == len(names) - 1
            branch = "" if not path else ("`- " if last else "|- ")
            full = separator.join([*path, part])
            count = counts.get(full)
            rows.append((f"{prefix}{branch}{part}", "" if count is None else f"{count:>3}"))
            child_prefix = prefix + ("" if not path else ("   " if last else "|  "))
            walk(node[part], [*path, part], child_prefix)

    walk(tree, [], "")
    width = max((len(label) for label, _ in rows), default=0)
    return [f"{label:<{width}}  {count}".rstrip() for label, count in rows]


def _listing_lines(filename: str, data: bytes, limit: int) -> list[str]:
    if filename.lower().endswith(".gz"):
        data = gzip.decompress(data)
    text = data.decode("utf-8-sig", errors="replace")
    lines = text.splitlines()
    shown = lines[:limit]
    if len(lines) > limit:
        shown.append(f"... ({len(lines) - 1} messages in all)")
    return shown


def mail_lines(raw: bytes, *, listing_lines: int = 6, body_lines: int = 40) -> list[str]:
    """The report mail for humans: headers, the text part, each attachment's name and the first
    lines of the listing CSV."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)  # policy.default always builds EmailMessage
    lines = [f"Subject: {msg['Subject']}", f"From:    {msg['From']}", f"To:      {msg['To']}", ""]
    body = msg.get_body(preferencelist=("plain",))
    text = body.get_content() if isinstance(body, EmailMessage) else "(no text part)"
    text_lines = str(text).rstrip("\n").splitlines()
    lines += text_lines[:body_lines]
    if len(text_lines) > body_lines:
        lines.append(f"... ({len(text_lines) - body_lines} more lines)")
    for part in msg.iter_attachments():
        name = part.get_filename() or "(unnamed)"
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        lines += ["", f"Attachment: {name} ({human_bytes(len(data))}), first lines:"]
        lines += [f"  {line}" for line in _listing_lines(name, data, listing_lines)]
    return lines


def attachment_names(raw: bytes) -> list[str]:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return [part.get_filename() or "" for part in msg.iter_attachments()]


def indent(lines: Iterable[str], by: str = "  ") -> str:
    return "\n".join(f"{by}{line}".rstrip() for line in lines)
