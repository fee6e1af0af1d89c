"""The benchmark's reference: a minimal raw pipelined IMAP copier (stdlib ``ssl`` + asyncio).

Owns: the fastest simple way to copy one mailbox that the benchmark compares the daemon with.
One source and one destination connection per mailbox: LOGIN, LIST, then every folder's
``EXAMINE`` + ``UID FETCH 1:* (FLAGS INTERNALDATE BODY.PEEK[])`` sent at once (the whole source
side is one pipeline), every fetched message streamed straight into a LITERAL+ ``APPEND`` on the
destination (``{n+}``, no round trip per message), then a NOOP as the sentinel that all APPENDs
were answered. Folders land where the daemon puts them (docs/contract.md §4:
``<root>.<destfolder>.<folder>``, ``INBOX`` -> ``Inbox``), so both produce the same content.

Must not: be used by the product, retry, resume or de-duplicate. Any unexpected reply ends the
copy with ``RawCopyError`` (it is a yardstick; a wrong yardstick must fail loudly). Backpressure
comes only from ``drain()``; a message is held whole in memory once (that is the reference's
nature, not a target). Names stay in modified UTF-7 as the servers send them: no decoding needed.

Run as ``python -m bench.rawcopy`` with a JSON job list on stdin (passwords never in argv):
``{"ca_file": ..., "jobs": [{"source": LOGIN, "dest": LOGIN, "dest_root": ...,
"dest_folder": ...}]}``, LOGIN being ``{"host", "port", "user", "password", "security"}``.
Jobs run one after another; a JSON summary is printed on stdout.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import sys
from dataclasses import dataclass, field
from typing import Any

from bench.bench_rawwire import Conn, RawCopyError, Response, quote

FETCH_ITEMS = b"(FLAGS INTERNALDATE BODY.PEEK[])"
_FETCH = re.compile(rb"^\* \d+ FETCH \(")
_FLAGS = re.compile(rb"[ (]FLAGS \(([^)]*)\)")
_DATE = re.compile(rb'[ (]INTERNALDATE "([^"]*)"')
_LIST = re.compile(rb'^\* LIST \(([^)]*)\) (NIL|"(?:[^"\\]|\\.)*") ?(.*)$', re.S)


@dataclass(frozen=True)
class Login:
    """One IMAP login. ``security``: ``starttls``, ``tls`` (implicit) or ``plain``."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    security: str = "starttls"


@dataclass(frozen=True)
class CopyJob:
    source: Login
    dest: Login
    dest_root: str = "INBOX.historical_data"  # written with '.', like the daemon's config
    dest_folder: str = "Bench"


@dataclass
class CopyStats:
    messages: int = 0
    bytes: int = 0
    folders: int = 0


# -- pure helpers ------------------------------------------------------------------------------


def unquote(token: bytes) -> bytes:
    """An IMAP atom or quoted string (``"a\\"b"`` -> ``a"b``) as its raw bytes."""
    if token.startswith(b'"') and token.endswith(b'"') and len(token) >= 2:
        return re.sub(rb"\\(.)", rb"\1", token[1:-1])
    return token


def parse_list(resp: Response) -> tuple[frozenset[str], str, str] | None:
    """``* LIST (flags) "sep" name`` -> (lower-cased flags, separator, raw mUTF-7 name)."""
    m = _LIST.match(resp.parts[0])
    if m is None:
        return None
    flags = frozenset(f.lower() for f in m.group(1).decode().split())
    sep = "" if m.group(2) == b"NIL" else unquote(m.group(2)).decode()
    name = resp.literals[0] if resp.literals else unquote(m.group(3).strip())
    return flags, sep, name.decode()


def dest_name(source: str, src_sep: str, root: str, folder: str, dst_sep: str) -> str:
    """Where ``source`` lands: root and destfolder ('.'-written) then the source path, re-joined
    with ``dst_sep``; ``INBOX`` becomes ``Inbox``; a ``dst_sep`` inside a segment becomes ``_``."""
    segments = source.split(src_sep) if src_sep else [source]
    if segments[0].upper() == "INBOX":
        segments[0] = "Inbox"
    parts = [*root.split("."), folder, *(s.replace(dst_sep, "_") for s in segments)]
    return dst_sep.join(parts)


def parents_first(names: list[str], sep: str, keep_from: int) -> list[str]:
    """Every name and its ancestors (those with more than ``keep_from`` segments), parents first,
    no repeats: the CREATE order."""
    out: dict[str, None] = {}
    for name in names:
        segs = name.split(sep)
        for i in range(keep_from + 1, len(segs) + 1):
            out[sep.join(segs[:i])] = None
    return list(out)


def fetched_message(resp: Response) -> tuple[bytes, bytes, bytes]:
    """(flags without ``\\Recent``, quoted INTERNALDATE, body) of one ``* n FETCH`` response;
    item order does not matter (RFC 3501 does not fix it)."""
    text = b"".join(resp.parts)
    flags_m, date_m = _FLAGS.search(text), _DATE.search(text)
    body = next(
        (lit for part, lit in zip(resp.parts, resp.literals, strict=False)
         if part.rstrip().upper().endswith(b"BODY[]")),
        None,
    )  # fmt: skip
    if flags_m is None or date_m is None or body is None:
        raise RawCopyError(f"FETCH response without FLAGS/INTERNALDATE/BODY[]: {text[:200]!r}")
    flags = b" ".join(f for f in flags_m.group(1).split() if f.lower() != b"\\recent")
    return flags, b'"' + date_m.group(1) + b'"', body


# -- the copy ----------------------------------------------------------------------------------


async def copy_mailbox(job: CopyJob, ctx: ssl.SSLContext) -> CopyStats:
    """Copy every selectable folder of ``job.source`` under ``<root>.<folder>`` of ``job.dest``."""
    src, dst = await asyncio.gather(Conn.open(job.source, ctx), Conn.open(job.dest, ctx))
    try:
        await asyncio.gather(
            src.login(job.source.user, job.source.password),
            dst.login(job.dest.user, job.dest.password),
        )
        listed, dst_sep = await asyncio.gather(_list_source(src), _dest_separator(dst))
        targets = [
            dest_name(name, sep, job.dest_root, job.dest_folder, dst_sep) for name, sep in listed
        ]
        stats = CopyStats(folders=len(listed))
        # The source pipeline starts while the destination folders are being created.
        for i, (name, _sep) in enumerate(listed):
            src.send(
                b"E%d EXAMINE %s\r\nF%d UID FETCH 1:* %s\r\n" % (i, quote(name), i, FETCH_ITEMS)
            )
        await asyncio.gather(
            src.drain(),
            _create(dst, parents_first(targets, dst_sep, 1)),
        )
        acks = asyncio.create_task(_collect_acks(dst))
        try:
            await _stream(src, dst, targets, stats)
        except BaseException:
            acks.cancel()
            raise
        await acks
        await asyncio.gather(src.logout(), dst.logout())
        return stats
    finally:
        src.close()
        dst.close()


async def _list_source(src: Conn) -> list[tuple[str, str]]:
    src.send(b'L LIST "" "*"\r\n')
    folders: list[tuple[str, str]] = []
    for resp in await src.until_tagged(b"L"):
        parsed = parse_list(resp)
        if parsed is not None and not parsed[0] & {"\\noselect", "\\nonexistent"}:
            folders.append((parsed[2], parsed[1]))
    return folders


async def _dest_separator(dst: Conn) -> str:
    dst.send(b'D LIST "" ""\r\n')
    for resp in await dst.until_tagged(b"D"):
        parsed = parse_list(resp)
        if parsed is not None and parsed[1]:
            return parsed[1]
    raise RawCopyError("the destination did not tell its hierarchy separator")


async def _create(dst: Conn, names: list[str]) -> None:
    """All CREATEs in one go; one that exists already is fine."""
    for i, name in enumerate(names):
        dst.send(b"C%d CREATE %s\r\n" % (i, quote(name)))
    await dst.drain()
    for i in range(len(names)):
        done = (await dst.until_tagged(b"C%d" % i, check=False))[-1]
        if done.status != b"OK" and b"ALREADYEXISTS" not in done.parts[0].upper():
            raise RawCopyError(f"CREATE {names[i]!r}: {done.parts[0]!r}")


async def _stream(src: Conn, dst: Conn, targets: list[str], stats: CopyStats) -> None:
    """Read the source pipeline's answers in order; each message becomes an APPEND at once."""
    current: bytes | None = None
    finished = 0
    while finished < len(targets):
        resp = await src.read_response()
        if resp.tag == b"*":
            if _FETCH.match(resp.parts[0]):
                if current is None:
                    raise RawCopyError("FETCH data outside a folder")
                flags, date, body = fetched_message(resp)
                dst.send(b"A%d APPEND %s (%s) %s {%d+}\r\n" % (
                    stats.messages, current, flags, date, len(body)))  # fmt: skip
                dst.send(body)
                dst.send(b"\r\n")
                await dst.drain()
                stats.messages += 1
                stats.bytes += len(body)
            continue
        if resp.status != b"OK":
            raise RawCopyError(f"source: {resp.parts[0]!r}")
        index = int(resp.tag[1:])
        if resp.tag.startswith(b"E"):
            current = quote(targets[index])
        elif resp.tag.startswith(b"F"):
            current, finished = None, finished + 1
        else:
            raise RawCopyError(f"source: unexpected tagged answer {resp.parts[0]!r}")
    dst.send(b"Z NOOP\r\n")  # answered after every APPEND before it
    await dst.drain()


async def _collect_acks(dst: Conn) -> None:
    """Read the destination's answers until the NOOP sentinel; any refused APPEND is fatal."""
    while (resp := await dst.read_response()).tag != b"Z":
        if resp.tag != b"*" and resp.status != b"OK":
            raise RawCopyError(f"destination refused: {resp.parts[0][:200]!r}")


# -- command line ------------------------------------------------------------------------------


def _login(d: dict[str, Any]) -> Login:
    return Login(d["host"], int(d["port"]), d["user"], d["password"], d.get("security", "starttls"))


async def run_jobs(spec: dict[str, Any]) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=spec.get("ca_file"))
    results = []
    for j in spec["jobs"]:
        job = CopyJob(_login(j["source"]), _login(j["dest"]), j["dest_root"], j["dest_folder"])
        s = await copy_mailbox(job, ctx)
        results.append({"messages": s.messages, "bytes": s.bytes, "folders": s.folders})
    return {
        "messages": sum(r["messages"] for r in results),
        "bytes": sum(r["bytes"] for r in results),
        "jobs": results,
    }


def main() -> int:
    spec = json.load(sys.stdin)
    try:
        summary = asyncio.run(run_jobs(spec))
    except (RawCopyError, OSError, ssl.SSLError) as exc:
        print(f"rawcopy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    json.dump(summary, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
