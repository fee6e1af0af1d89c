"""Durable file primitives: atomic writes, durable renames, free names.

Owns: the write-temp + fsync + rename discipline every file the daemon writes goes through, and
the naming of temporary files (``.lfd-<name>.<random>.tmp``: a leading dot, so a spool reader
that skips dot-names never sees a half-written file).
Must not: know any spool layout (that is ``spool``), log, or interpret file contents.

All functions are synchronous and short; callers in the event loop accept the few milliseconds an
fsync costs (the files are small: CSVs, results, report mails).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
from pathlib import Path

TEMP_PREFIX = ".lfd-"
TEMP_SUFFIX = ".tmp"
_MAX_NAME_TRIES = 10_000
# A base name the daemon derives other names from (``.lfd-<name>.<hex>.tmp``,
# ``<name>.error.txt``, ``<name>.summary.json``, ``<stem>-<n><ext>``) stays within this many
# bytes, so that every derived name fits the usual 255-byte limit of a file name.
SAFE_NAME_BYTES = 200
# A name that may still get a ``-<n>`` of ``free_name`` (a claim, a drop) is made this short,
# so that the unique name is still at most SAFE_NAME_BYTES and is never shortened again.
UNIQUE_NAME_BYTES = SAFE_NAME_BYTES - 8
_EXT_MAX = 16  # an extension longer than this is part of the stem when a name is shortened


def short_name(name: str, limit: int = SAFE_NAME_BYTES) -> str:
    """``name`` itself when it takes at most ``limit`` bytes, else a shortened form of it.

    The shortened form is the start of the stem (cut by bytes, never inside a character),
    ``~`` and 8 hex digits of a hash of the whole name, and the extension: distinct names stay
    distinct, and the same name always gives the same short name. Names come from the file
    system, so undecodable bytes (``surrogateescape``) count as the one byte each stands for.
    """
    raw = os.fsencode(name)
    if len(raw) <= limit:
        return name
    stem, ext = os.path.splitext(name)
    if len(os.fsencode(ext)) > _EXT_MAX:
        stem, ext = name, ""
    tag = "~" + hashlib.sha256(raw).hexdigest()[:8]
    room = limit - len(os.fsencode(ext)) - len(tag)
    kept, used = [], 0
    for char in stem:
        size = len(os.fsencode(char))
        if used + size > room:
            break
        kept.append(char)
        used += size
    return "".join(kept) + tag + ext


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) with mode 0700 whatever the umask; an existing
    directory keeps its mode (an administrator may have opened it on purpose)."""
    if path.is_dir():
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        return
    os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a create, rename or unlink inside it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(name: str) -> str:
    """A fresh temporary name for ``name`` in the same directory (dot-leading, ``.tmp``); a long
    ``name`` is shortened (``short_name``), so that the temporary name always fits."""
    return f"{TEMP_PREFIX}{short_name(name)}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


def is_own_temp(name: str) -> bool:
    """True for a temporary name made by ``temp_name`` (left behind only by a crash)."""
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def _write_temp(directory: Path, name: str, data: bytes, mode: int) -> Path:
    """Write ``data`` to a new temp file in ``directory``, fsynced, with exactly ``mode``."""
    tmp = directory / temp_name(name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(tmp, flags, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have removed bits we asked for
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that readers see the old file or the whole new one.

    Temp file in the same directory, fsync the file, rename over ``path``, fsync the directory.
    After a crash, ``path`` is either absent/old or complete; at worst a temp name is left behind.
    """
    tmp = _write_temp(path.parent, path.name, data, mode)
    try:
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def free_name(directory: Path, name: str, *, also: tuple[str, ...] = ()) -> str:
    """``name`` if no entry of that name exists in ``directory``, else ``<stem>-2<suffix>``, ...

    ``also`` lists suffixes of companion files that must be free too (e.g. ``(".error.txt",)``
    so that ``x.csv`` and ``x.csv.error.txt`` are taken together). A check, not a reservation:
    use it only in directories this process alone writes, or publish with ``link_no_clobber``.
    """
    stem, ext = os.path.splitext(name)
    for n in range(1, _MAX_NAME_TRIES):
        candidate = name if n == 1 else f"{stem}-{n}{ext}"
        names = (candidate, *(candidate + extra for extra in also))
        if not any(os.path.lexists(directory / c) for c in names):
            return candidate
    raise FileExistsError(errno.EEXIST, f"no free name for {name!r}", str(directory))


def move(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` (same file system) and make both directory entries durable.

    ``dst`` is replaced if it exists: pick it with ``free_name`` first. A symlink is moved as a
    link (never followed). ``FileNotFoundError`` when ``src`` vanished.
    """
    os.rename(src, dst)
    fsync_dir(dst.parent)
    if src.parent != dst.parent:
        fsync_dir(src.parent)


def move_unique(src: Path, directory: Path, name: str | None = None) -> Path:
    """Move ``src`` into ``directory`` under ``name`` (default its own), made unique; the path."""
    target = directory / free_name(directory, name or src.name)
    move(src, target)
    return target


def link_no_clobber(src: Path, directory: Path, name: str) -> Path:
    """Give the complete file ``src`` a new, unique name in ``directory``; remove ``src``.

    Publishing for directories that other processes write too (a drop into ``incoming/``): a
    hard link fails instead of replacing an existing entry, so two writers never overwrite each
    other. Falls back to check-then-rename where the file system has no hard links.
    """
    for _ in range(_MAX_NAME_TRIES):
        target = directory / free_name(directory, name)
        try:
            os.link(src, target, follow_symlinks=False)
        except FileExistsError:
            continue  # someone took the name between the check and the link: try the next
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            move(src, target)
            return target
        os.unlink(src)
        fsync_dir(directory)
        return target
    raise FileExistsError(errno.EEXIST, f"no free name for {name!r}", str(directory))


def write_new(directory: Path, name: str, data: bytes, mode: int = 0o600) -> Path:
    """Atomically create a file with ``data`` under a unique name based on ``name``; its path."""
    tmp = _write_temp(directory, name, data, mode)
    try:
        return link_no_clobber(tmp, directory, name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_regular(path: Path) -> bytes:
    """The bytes of ``path``, refusing to follow a symlink or to open a FIFO/device.

    Raises ``OSError`` (``ELOOP`` for a symlink, ``EINVAL`` for a non-regular file).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        chunks: list[bytes] = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
