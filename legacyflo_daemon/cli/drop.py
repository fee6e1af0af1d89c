"""``submit``'s drop: put a request CSV into ``incoming/`` so that the daemon can read it, or
refuse and leave nothing there.

Owns: who the file is for and its mode. The daemon is taken to run as the owner of
``incoming/`` (the daemon creates its spool, or tmpfiles.d creates it for the service user) and
to be a member of that directory's group (the service's group, as sysusers.d sets it up):
- the daemon's own user submitting: mode 0600, as before;
- root submitting: mode 0600, handed to the daemon's user and group (``fchown``);
- any other user (an admin in the service's group): mode 0640 in the directory's group. The
  group comes by itself when ``incoming/`` is setgid (the intended set-up), else ``fchown``
  sets it, which the kernel allows only to a member of the group.
The file is checked with ``fstat`` *before* it gets its real name (``daemon_cannot_read``):
a file the daemon could not read would be claimed and then fail as unreadable, far from the
person who submitted it. The write is atomic as the daemon expects (a dot-temp name it
ignores, fsync, then a hard link under a free ``.csv`` name: ``runtime.files``).
Must not: make the file readable by others than the daemon's user and group (it holds passwords).
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import stat
from pathlib import Path

from legacyflo_daemon.runtime import files


class DropRefused(Exception):
    """Nothing was dropped; the message is one line saying why and what to do."""


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"


def daemon_cannot_read(
    mode: int, file_uid: int, file_gid: int, daemon_uid: int, daemon_gid: int
) -> str | None:
    """Why a daemon running as ``daemon_uid`` in group ``daemon_gid`` could not read a file
    with ``mode`` owned by ``file_uid``:``file_gid``; None when it can. Follows the kernel's
    order: the owner's bits for the owner, else the group's bits for the group, else the
    others' bits (a daemon running as root reads anything)."""
    if daemon_uid == 0:
        return None
    if file_uid == daemon_uid:
        if mode & stat.S_IRUSR:
            return None
        return f"its owner {_user(file_uid)} (the daemon) has no read permission"
    if file_gid == daemon_gid:
        if mode & stat.S_IRGRP:
            return None
        return f"its group {_group(file_gid)} (the daemon's) has no read permission"
    if mode & stat.S_IROTH:
        return None
    return (
        f"it would belong to {_user(file_uid)}:{_group(file_gid)} with mode "
        f"{stat.S_IMODE(mode):04o}, and the daemon runs as "
        f"{_user(daemon_uid)}:{_group(daemon_gid)}"
    )


def _plan(incoming: os.stat_result) -> tuple[int, int, int]:
    """(mode, uid or -1, gid or -1) of the file to drop: see the module docstring."""
    me = os.geteuid()
    if me == incoming.st_uid:
        return 0o600, -1, -1
    if me == 0:
        return 0o600, incoming.st_uid, incoming.st_gid
    return 0o640, -1, incoming.st_gid


def drop(incoming: Path, name: str, data: bytes) -> Path:
    """Write ``data`` into ``incoming`` under a free name based on ``name``, readable by the
    daemon; the final path. Raises ``DropRefused`` (nothing left behind) when the daemon could
    not read it, ``OSError`` when the directory cannot be read or written."""
    where = os.stat(incoming)
    mode, uid, gid = _plan(where)
    tmp = incoming / files.temp_name(name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have removed bits we asked for
        now = os.fstat(fd)
        if (uid != -1 and now.st_uid != uid) or (gid != -1 and now.st_gid != gid):
            # Refused to a non-member of the group: the readability check below says so.
            with contextlib.suppress(PermissionError):
                os.fchown(fd, uid, gid)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        now = os.fstat(fd)
        why = daemon_cannot_read(now.st_mode, now.st_uid, now.st_gid, where.st_uid, where.st_gid)
        if why is not None:
            raise DropRefused(
                f"{incoming}: not submitted: the daemon could not read the file: {why}; "
                f"submit as a member of group {_group(where.st_gid)} (usermod -aG "
                f"{_group(where.st_gid)} $USER, then log in again) or as the daemon's user"
            )
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    try:
        return files.link_no_clobber(tmp, incoming, name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def cannot_write_hint(incoming: Path, exc: OSError) -> str:
    """What to do when ``incoming`` (or the spool above it) refused us: who owns the first of
    the two we may look at, and the group membership needed (one clause, no final period)."""
    if exc.errno not in (errno.EACCES, errno.EPERM):
        return "check the spool's file system"
    for path in (incoming, incoming.parent):
        try:
            st = os.stat(path)
        except OSError:
            continue
        return (
            f"{path.name}/ belongs to {_user(st.st_uid)}:{_group(st.st_gid)} with mode "
            f"{stat.S_IMODE(st.st_mode):04o}; submitting needs membership of group "
            f"{_group(st.st_gid)} and a group-writable incoming/ (see README, "
            "'Installing for production')"
        )
    return "check the spool's permissions"
