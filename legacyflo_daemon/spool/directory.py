"""The spool directory: the only module that knows its layout (docs/contract.md §2).

Owns: the sub-directory names, which names in ``incoming/`` are taken (plain regular ``*.csv``
files whose size and mtime stopped changing), claiming by atomic rename into ``processing/``, and
retiring a CSV to ``done/`` or ``failed/`` **redacted** (``csvfile.redact``), with
``<name>.error.txt`` beside it when there is an error. Nothing is ever deleted before its content
is recorded elsewhere: the ``processing/`` file is removed only after the redacted copy (and the
error text) are durable.

Must not: parse requests, track request state, or decide *when* to scan (the caller polls
``ready_files``, woken by watchfiles and a periodic rescan).

Names in ``incoming/`` that are never touched: dot-names, ``*.part``, ``*.tmp``, names not ending
in ``.csv`` (any case), and directories even when named ``x.csv``. A symlink or other special file
(FIFO, socket, device) named ``*.csv`` is not followed or opened: it is moved, as it is, into
``failed/`` with an error text saying why (it was dropped for us to take, and leaving it would be
reported as "ignored" forever; moving keeps it, so nothing is lost).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from legacyflo_daemon.errors import SpoolError
from legacyflo_daemon.request import csvfile
from legacyflo_daemon.runtime import files

log = structlog.get_logger(__name__)

SUBDIRS: tuple[str, ...] = ("incoming", "processing", "done", "failed", "outbox", "outbox/sent")
ERROR_SUFFIX = ".error.txt"
DIR_MODE = 0o700
FILE_MODE = 0o600

_TEMP_SUFFIXES = (".part", ".tmp")


def is_temp_name(name: str) -> bool:
    """True for a name the daemon must not take from ``incoming/``.

    Leading ``.``, suffix ``.part`` or ``.tmp`` (a writer's temporary name), or anything that
    does not end in ``.csv`` (case-insensitive: Excel on Windows writes ``.CSV``).
    """
    lower = name.lower()
    return (
        name.startswith(".")
        or lower.endswith(_TEMP_SUFFIXES)
        or not lower.endswith(".csv")
        or lower == ".csv"
    )


@dataclass(slots=True)
class _Seen:
    """What a name looked like, and since when (monotonic seconds) it has looked like that."""

    signature: tuple[int, int, int]  # size, mtime_ns, inode
    since: float
    complete: bool | None = None  # ends_complete() of this signature, once read


_BLANK = frozenset(" \t")


def ends_complete(data: bytes) -> bool:
    """Whether ``data`` looks like a whole request CSV rather than one cut by a writer that
    paused (docs/contract.md §2.2).

    Whole: empty or binary (a NUL byte: rejected as a whole anyway, there is nothing to cut);
    or no quoted value is left open and either the last line ends with a line break, or it
    ends with a closing quote and has at least as many values as the header line (the
    reference sample has no final line break). Quotes are read as RFC 4180 says (``""`` inside
    quotes is one ``"``; a quote inside an unquoted value is a character). Bytes are read as
    Latin-1: only the ASCII of ``"``, ``,`` and line breaks matters, in any encoding we accept.
    """
    if not data or b"\0" in data:
        return True
    text = data.decode("latin-1").removeprefix("\xef\xbb\xbf")
    header = last = 0
    try:
        for record in csv.reader(io.StringIO(text, newline=""), strict=True):
            if not record or all(not v or set(v) <= _BLANK for v in record):
                continue  # a blank line
            header = header or len(record)
            last = len(record)
    except csv.Error as exc:
        # A quoted value open at the end: the writer is not done. Other oddities (a character
        # after a closing quote) are the request parser's to judge, on a complete file.
        return "unexpected end of data" not in str(exc)
    if text.endswith(("\n", "\r")):
        return True
    return text.endswith('"') and last >= header


class Spool:
    """One spool directory. Not thread-safe; use it from one thread (the event loop)."""

    def __init__(self, root: Path, limits: csvfile.Limits = csvfile.DEFAULT_LIMITS) -> None:
        self.root = root
        self.limits = limits  # the [csv] limits: redaction must reject exactly what parse does
        self._seen: dict[str, _Seen] = {}

    # -- layout ------------------------------------------------------------------------------

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    @property
    def processing(self) -> Path:
        return self.root / "processing"

    @property
    def done(self) -> Path:
        return self.root / "done"

    @property
    def failed(self) -> Path:
        return self.root / "failed"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def sent(self) -> Path:
        return self.root / "outbox" / "sent"

    is_temp_name = staticmethod(is_temp_name)

    def ensure_root(self) -> None:
        """Create the spool's root directory if missing (mode 0700), nothing below it: the
        daemon's lock file lives there and is taken before anything else is touched."""
        try:
            files.ensure_private_dir(self.root)
        except OSError as exc:
            raise SpoolError(f"{self.root}: cannot create: {exc.strerror}") from exc
        if not self.root.is_dir():
            raise SpoolError(f"{self.root}: exists and is not a directory")

    def ensure(self) -> None:
        """Create the root and every sub-directory that is missing, mode 0700.

        Directories that already exist keep their mode: an administrator may have opened
        ``incoming/`` to a group on purpose. Raises ``SpoolError`` naming the directory.
        """
        for path in (self.root, *(self.root / sub for sub in SUBDIRS)):
            try:
                path.mkdir(mode=DIR_MODE)
            except FileExistsError:
                if not path.is_dir():
                    raise SpoolError(f"{path}: exists and is not a directory") from None
                continue
            except OSError as exc:
                raise SpoolError(f"{path}: cannot create: {exc.strerror}") from exc
            os.chmod(path, DIR_MODE)  # mkdir's mode is filtered by the umask

    def remove_stale_temps(self, *, older_than: float = 3600.0) -> list[Path]:
        """Remove temp files (``files.temp_name``) a crash left in the daemon's own directories.

        Only names made by ``files.temp_name`` and older than ``older_than`` seconds, so that a
        write still in progress (a ``submit`` racing with the start) is never touched. Their
        content is always recorded elsewhere (the write was not finished, its source remains).
        """
        removed: list[Path] = []
        limit = time.time() - older_than
        for directory in (
            self.incoming,
            self.processing,
            self.done,
            self.failed,
            self.outbox,
            self.sent,
        ):
            for entry in _scan(directory):
                if files.is_own_temp(entry.name) and _mtime(entry) < limit:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed.append(Path(entry.path))
        return removed

    # -- incoming ----------------------------------------------------------------------------

    def ready_files(
        self,
        *,
        now: float | None = None,
        stable_seconds: float = 1.0,
        incomplete_seconds: float = 3600.0,
    ) -> list[str]:
        """Names in ``incoming/`` ready to claim, oldest first.

        A plain regular ``*.csv`` file is ready once its size, mtime and inode have been the same
        for at least ``stable_seconds`` across calls (``now``: monotonic seconds, default
        ``time.monotonic()``) **and** its content ends complete (``ends_complete``: a writer
        that pauses mid-row for longer than ``stable_seconds`` must not have half a file
        claimed), its size unchanged by the read. A name seen for the first time is therefore
        never ready on that call unless ``stable_seconds <= 0``. A file that stays unchanged and
        incomplete for ``incomplete_seconds`` is set aside in ``failed/`` (redacted) with an
        error naming the reason. Symlinks and special files are moved to ``failed/`` here (see
        the module docstring).
        """
        now = time.monotonic() if now is None else now
        ready: list[tuple[int, str]] = []
        present: set[str] = set()
        for entry in _scan(self.incoming):
            name = entry.name
            if is_temp_name(name):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                self._reject_special(Path(entry.path), kind)
                continue
            present.add(name)
            signature = (st.st_size, st.st_mtime_ns, st.st_ino)
            seen = self._seen.get(name)
            if seen is None or seen.signature != signature:
                self._seen[name] = seen = _Seen(signature, now)
            if now - seen.since < stable_seconds:
                continue
            if seen.complete is None:
                seen.complete = self._read_complete(Path(entry.path), st.st_size)
                if seen.complete is None:  # changed while read: settle again
                    del self._seen[name]
                    present.discard(name)
                    continue
            if seen.complete:
                ready.append((st.st_mtime_ns, name))
            elif now - seen.since >= incomplete_seconds:
                self._set_aside_incomplete(name, now - seen.since)
                present.discard(name)
        for gone in self._seen.keys() - present:
            del self._seen[gone]
        return [name for _, name in sorted(ready)]

    def _read_complete(self, path: Path, size: int) -> bool | None:
        """``ends_complete`` of the file, None when its size changed under the read (or it
        vanished: the next scan sees what happened)."""
        try:
            data = files.read_regular(path)
            after = os.stat(path, follow_symlinks=False).st_size
        except OSError:
            return None
        if len(data) != size or after != size:
            return None
        complete = ends_complete(data)
        if not complete:
            log.info("spool_incomplete", file=path.name, size=size)
        return complete

    def _set_aside_incomplete(self, name: str, waited: float) -> None:
        """A drop whose last line stayed unfinished: claim it and retire it redacted to
        ``failed/`` with the reason, so that its passwords do not wait in ``incoming/``."""
        self._seen.pop(name, None)
        reason = (
            f"{name}: its last line stayed unfinished for {waited:.0f} s (no line break after "
            "it, or a quoted value left open): the writer seems to have stopped mid-file. "
            "Write the whole file again, ending with a line break, or use "
            "'legacyflo-daemon submit'"
        )
        try:
            path = files.move_unique(
                self.incoming / name,
                self.processing,
                files.short_name(name, files.UNIQUE_NAME_BYTES),
            )
            self.finish(path, ok=False, error=reason)
        except (OSError, SpoolError) as exc:
            log.error("spool_reject_failed", file=name, error=str(exc))
            return
        log.warning("spool_incomplete_set_aside", file=name, waited=round(waited))

    def waiting_files(self) -> list[str]:
        """Names seen by the last ``ready_files`` call (ready or still settling), sorted."""
        return sorted(self._seen)

    def claim(self, name: str) -> Path | None:
        """Move ``incoming/<name>`` into ``processing/`` atomically; its new path.

        The new name is ``name`` (shortened by ``files.short_name`` when longer than
        ``files.UNIQUE_NAME_BYTES``) or, if taken, ``<stem>-2.csv``, ... ``None`` if the file
        vanished (someone else took or removed it) or turned out not to be a regular file (then
        it was moved to ``failed/``).
        """
        if "/" in name or name in ("", ".", ".."):
            raise SpoolError(f"not a plain file name: {name!r}")
        self._seen.pop(name, None)
        try:
            # Every name derived from the claimed one (done/, failed/, its .error.txt, the
            # outbox summary, temporary names) must fit a file name: claim it short.
            path = files.move_unique(
                self.incoming / name,
                self.processing,
                files.short_name(name, files.UNIQUE_NAME_BYTES),
            )
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SpoolError(f"{self.incoming / name}: cannot claim: {exc.strerror}") from exc
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode):  # swapped for a link between the scan and the rename
            self._reject_special(path, "not a regular file")
            return None
        log.info("spool_claimed", file=name, path=str(path))
        if st.st_nlink > 1:  # taken all the same: the drop is the admin's to run
            log.warning("csv_hard_linked", file=name, links=st.st_nlink,
                        reason=hard_link_warning(path.name, st.st_nlink))  # fmt: skip
        return path

    # -- processing --------------------------------------------------------------------------

    def processing_files(self) -> list[Path]:
        """Files left in ``processing/`` (by a previous run, for recovery), sorted by name."""
        return sorted(
            Path(e.path)
            for e in _scan(self.processing)
            if not e.name.startswith(".") and not e.is_dir(follow_symlinks=False)
        )

    def finish(self, processing_path: Path, *, ok: bool, error: str | None = None) -> Path:
        """Retire a claimed CSV: its redacted copy to ``done/`` (``ok``) or ``failed/``.

        Writes the redacted bytes atomically (0600) under the file's name, made unique together
        with its ``.error.txt``; writes ``<name>.error.txt`` beside it when ``error`` is given;
        only then removes ``processing_path``. If the file cannot be read, it is moved to
        ``failed/`` unchanged (it cannot be redacted, and must not be lost). Returns the path of
        the recorded copy. Raises ``SpoolError`` if the file is gone or nothing could be written
        (the original then stays where it is).
        """
        directory = self.done if ok else self.failed
        try:
            data = files.read_regular(processing_path)
        except FileNotFoundError as exc:
            raise SpoolError(f"{processing_path}: vanished before it was recorded") from exc
        except OSError as exc:
            reason = f"the file could not be read ({exc.strerror}); kept unchanged"
            return self._move_with_error(processing_path, reason, error)
        short = files.short_name(processing_path.name)  # claimed long by an older version
        name = files.free_name(directory, short, also=(ERROR_SUFFIX,))
        target = directory / name
        try:
            files.atomic_write(target, csvfile.redact(data, self.limits), FILE_MODE)
            if error is not None:
                files.atomic_write(directory / (name + ERROR_SUFFIX), _error_text(error), FILE_MODE)
            os.unlink(processing_path)
            files.fsync_dir(processing_path.parent)
        except OSError as exc:
            raise SpoolError(f"{target}: cannot record: {exc.strerror}") from exc
        log.info("spool_finished", file=processing_path.name, path=str(target), ok=ok)
        return target

    def reject_unusable(self, path: Path, error: str) -> Path:
        """A file rejected as a whole (``CsvFileError``): to ``failed/`` with ``error``."""
        return self.finish(path, ok=False, error=error)

    # -- internals ---------------------------------------------------------------------------

    def _reject_special(self, path: Path, kind: str) -> None:
        reason = f"{kind} is not accepted: drop a regular file (write a temp name, then rename)"
        try:
            self._move_with_error(path, reason, None)
        except (SpoolError, OSError) as exc:
            log.error("spool_reject_failed", file=path.name, error=str(exc))

    def _move_with_error(self, path: Path, reason: str, error: str | None) -> Path:
        """Move ``path`` as it is into ``failed/`` and write its error text; the new path."""
        name = files.free_name(self.failed, files.short_name(path.name), also=(ERROR_SUFFIX,))
        text = reason if error is None else f"{error}\n{reason}"
        try:
            files.atomic_write(self.failed / (name + ERROR_SUFFIX), _error_text(text), FILE_MODE)
            files.move(path, self.failed / name)
        except OSError as exc:
            raise SpoolError(f"{path}: cannot move to failed/: {exc.strerror}") from exc
        log.warning("spool_rejected", file=path.name, path=str(self.failed / name), reason=reason)
        return self.failed / name


def hard_link_warning(name: str, links: int) -> str:
    """Why a hard-linked drop matters (log and summary): its passwords survive elsewhere."""
    return (
        f"{name} has {links - 1} other hard link(s): another copy of its passwords exists "
        "outside the spool and is not redacted when the CSV is done; remove it"
    )


def hard_links(path: Path) -> int:
    """The link count of ``path`` (1 when it is gone)."""
    try:
        return path.lstat().st_nlink
    except OSError:
        return 1


def _error_text(error: str) -> bytes:
    return (error.rstrip("\n") + "\n").encode("utf-8", "replace")


def _scan(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return list(it)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SpoolError(f"{directory}: cannot list: {exc.strerror}") from exc


def _mtime(entry: os.DirEntry[str]) -> float:
    try:
        return entry.stat(follow_symlinks=False).st_mtime
    except FileNotFoundError:
        return float("inf")
