"""``check --connect --sizes``: the dry run. What a request would copy, read without writing.

Owns: for one request whose two logins succeeded, the survey of its source account: the
folders the copier would copy (personal namespace only, exclusions applied, mapped to the
destination exactly as ``transfer.folders.plan_folders`` maps them for the copier, with the
destination's namespace and separator), per folder the messages in the date range and their
bytes (RFC822.SIZE; an estimate on Exchange), the folders left out and why; the rendering of
the surveys with an estimated duration at an assumed rate.
Must not: change anything on either server (the source is opened with EXAMINE only and read
with ``BODY.PEEK``; the destination only answers NAMESPACE), write any file, or log in itself
(``preflight`` owns the logins, one per account).

The estimate is bytes / rate: ``ASSUMED_MB_PER_SECOND`` per request (MB = 10^6 bytes), a
deliberately modest figure for an Exchange source throttled over a WAN (the loopback benchmark
in README.md "Performance" copies 60-90 MB/s; a real migration is bound by the source's
throttling). ``check --rate`` replaces it with a rate measured on a first real request
(``status`` shows it). Several requests run side by side (``daemon.max_jobs``), so the whole
file takes at least its largest account and at least the total over ``max_jobs`` streams.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, replace

from legacyflo_daemon.config.schema import Config
from legacyflo_daemon.errors import ImapError
from legacyflo_daemon.imap.session import Session
from legacyflo_daemon.model import JobType, Request
from legacyflo_daemon.report.mail import human_size
from legacyflo_daemon.request import dates
from legacyflo_daemon.transfer import folders

ASSUMED_MB_PER_SECOND = 5.0
WIDTH = 80
NOT_PERSONAL = "another user's or a shared folder: only the personal namespace is copied"
EXCLUDED = "not mail on Exchange (imap.exclude_folders, EXCHANGEIMAP)"
NO_MAIL = "holds no mail (\\Noselect): created only as a parent"


@dataclass(frozen=True, slots=True)
class FolderSize:
    """One folder that would be copied: its source path (decoded, ``/``), where it lands below
    the request's destination folder (decoded, the destination's separator), and the messages
    and bytes in the date range; ``error`` when the folder could not be read."""

    source: str
    dest: str
    messages: int = 0
    bytes: int = 0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Survey:
    """What one request would copy. ``dest_top`` is the request's destination folder on the
    server (decoded, its separator); ``error`` set means nothing could be planned."""

    row: int
    source: str
    dest: str
    dest_top: str = ""
    folders: tuple[FolderSize, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()  # (decoded source path, reason)
    error: str | None = None

    @property
    def messages(self) -> int:
        return sum(f.messages for f in self.folders)

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.folders)


async def survey(req: Request, cfg: Config, src: Session, dst: Session) -> Survey:
    """Plan ``req`` as the copier does and measure every folder it would copy.

    Never raises ``ImapError``: a failure to list or plan is the survey's ``error``, a folder
    that cannot be read is that folder's ``error`` (the others are still measured).
    """
    base = Survey(req.row, req.source.address, req.dest.address)
    try:
        src_ns, entries = await src.namespaces(), await src.list_folders()
        dst_ns = await dst.namespaces()
    except ImapError as exc:
        return replace(base, error=f"listing folders: {exc}")
    personal, foreign = folders.personal_only(entries, src_ns)
    source = [entry for entry, _ in personal]
    exclusions = cfg.imap.exclude_folders if req.jobtype is JobType.EXCHANGEIMAP else None
    dst_delim = dst_ns.delimiter or "."
    try:
        root = folders.root_path(cfg.imap.dest_root, dst_ns.prefix, dst_delim)
        plans = folders.plan_folders(
            source,
            source_delim=src_ns.delimiter,
            dest_delim=dst_delim,
            dest_prefix_path=root,
            dest_folder=req.dest_folder,
            exclusions=exclusions,
            prefixes={entry.name: prefix for entry, prefix in personal},
        )
    except ValueError as exc:  # an archive root the destination cannot hold
        return replace(base, error=f"planning folders: {exc}")
    delim_of = {e.name: e.delimiter or src_ns.delimiter for e in entries}
    skipped = [("/".join(folders.source_path(n, delim_of[n])), NOT_PERSONAL) for n in foreign]
    skipped += [
        (path, EXCLUDED)
        for path in folders.excluded_folders(
            source, source_delim=src_ns.delimiter, exclusions=exclusions
        )
    ]
    skipped += [(p.source_display, NO_MAIL) for p in plans if not p.selectable]
    criteria = dates.imap_criteria(req.dates)
    sizes = [await _measure(src, plan, criteria, dst_delim) for plan in plans if plan.selectable]
    return replace(
        base,
        dest_top=dst_delim.join((*root, req.dest_folder)),
        folders=tuple(sizes),
        skipped=tuple(skipped),
    )


async def _measure(
    src: Session, plan: folders.FolderPlan, criteria: list[str], dest_delim: str
) -> FolderSize:
    """Messages in range and their RFC822.SIZE sum, read as the copier's first pass reads
    them: EXAMINE, then FETCH 1:n without a date range, else UID SEARCH and FETCH."""
    dest = dest_delim.join(plan.dest_path[plan.fixed :])
    try:
        info = await src.examine(plan.source_name)
        if not info.exists:
            return FolderSize(plan.source_display, dest)
        if criteria == ["ALL"]:
            metas = await src.fetch_meta_all(info.exists)
        else:
            uids = await src.uid_search(criteria)
            metas = await src.fetch_meta(uids) if uids else []
    except ImapError as exc:
        return FolderSize(plan.source_display, dest, error=str(exc))
    return FolderSize(plan.source_display, dest, len(metas), sum(m.size for m in metas))


# -- rendering (pure) -----------------------------------------------------------------------------


def human_duration(seconds: float) -> str:
    """``under a minute``, ``about 7 min``, ``about 3 h 20 min``, ``about 2 d 4 h``."""
    if seconds < 60:
        return "under a minute"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"about {hours} h {minutes} min" if minutes else f"about {hours} h"
    days, hours = divmod(hours, 24)
    return f"about {days} d {hours} h" if hours else f"about {days} d"


def estimate_seconds(sizes: Sequence[int], rate_mb: float, max_jobs: int) -> float:
    """Seconds to copy accounts of ``sizes`` bytes at ``rate_mb`` MB/s per request with
    ``max_jobs`` requests at once: the largest account alone, or the total shared by
    ``max_jobs`` streams, whichever is longer (a lower bound: retries and throttling add)."""
    rate = rate_mb * 1e6
    if not sizes:
        return 0.0
    return max(max(sizes) / rate, sum(sizes) / (rate * max(1, min(max_jobs, len(sizes)))))


def _wrap(text: str, indent: int) -> list[str]:
    return textwrap.wrap(text, WIDTH, subsequent_indent=" " * indent, break_on_hyphens=False) or [
        text
    ]


def render(surveys: Sequence[Survey], rate_mb: float, max_jobs: int) -> str:
    """The dry run's report: per account its folders (messages, size, source → destination),
    the folders left out and why, a total with an estimated duration; then the grand total."""
    lines = [
        "",
        *_wrap(
            "Dry run (nothing was written; SIZE is the servers' RFC822.SIZE of the messages "
            "in the date range):",
            0,
        ),
    ]
    for s in surveys:
        lines += ["", f"Row {s.row}: {s.source} → {s.dest}"]
        if s.error is not None:
            lines += _wrap(f"  NOT SURVEYED: {s.error}", 4)
            continue
        lines += _wrap(f"  destination folder: {s.dest_top}", 4)
        lines.append(f"  {'MESSAGES':>9} {'SIZE':>9}  SOURCE FOLDER → SUBFOLDER THERE")
        for f in s.folders:
            if f.error is not None:
                lines += _wrap(f"  {'?':>9} {'?':>9}  {f.source}: NOT READ: {f.error}", 23)
                continue
            counts = f"  {f.messages:>9} {human_size(f.bytes):>9}  "
            lines += _wrap(f"{counts}{f.source} → {f.dest}", 23)
        for path, reason in s.skipped:
            lines += _wrap(f"  skipped: {path}: {reason}", 4)
        took = estimate_seconds([s.bytes], rate_mb, 1)
        lines += _wrap(
            f"  total: {s.messages} message(s), {human_size(s.bytes)} in "
            f"{len(s.folders)} folder(s); {human_duration(took)} at {rate_mb:g} MB/s",
            4,
        )
    done = [s for s in surveys if s.error is None]
    took = estimate_seconds([s.bytes for s in done], rate_mb, max_jobs)
    lines += [""]
    lines.append(
        f"Dry run total: {len(done)} account(s), {sum(s.messages for s in done)} message(s), "
        f"{human_size(sum(s.bytes for s in done))}"
    )
    lines.append(f"  estimate: {human_duration(took)}")
    lines += _wrap(
        f"  assuming {rate_mb:g} MB/s per request and daemon.max_jobs = {max_jobs} at once "
        "(--rate sets it)",
        4,
    )
    unread = sum(f.error is not None for s in done for f in s.folders)
    if len(done) < len(surveys) or unread:
        lines.append(
            f"Not surveyed: {len(surveys) - len(done)} account(s), {unread} folder(s) (see above)"
        )
    return "\n".join(lines) + "\n"
