"""The administrator's password of ``auth = "admin"`` (impersonation).

Owns: reading ``admin_password_file`` (one line, at the moment of use, so that a changed file
takes effect at the next login) and registering the password with ``runtime.secrets`` before
it is returned. Must not: log, or keep the password anywhere but in the returned ``Secret``.
"""

from __future__ import annotations

from legacyflo_daemon.config.schema import HostConfig
from legacyflo_daemon.errors import PermanentError
from legacyflo_daemon.model import Secret
from legacyflo_daemon.runtime.secrets import register_secret

OWNER = "auth.admin"  # one registration per distinct password, held for the process' life


def admin_password(host: HostConfig, server: str) -> Secret:
    """The password in ``host.admin_password_file``, scrubbed from every log from now on.

    Raises ``PermanentError`` (for ``server``) naming the key when the file cannot be read or
    is empty: a configuration problem, never retried.
    """
    path = host.admin_password_file
    if path is None or host.admin_user is None:
        raise PermanentError('auth = "admin" needs admin_user and admin_password_file', host=server)
    try:
        text = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise PermanentError(
            f"hosts.{server!r}.admin_password_file {path}: cannot read: {reason}", host=server
        ) from None
    if not text:
        raise PermanentError(
            f"hosts.{server!r}.admin_password_file {path} is empty: write the password of "
            f"{host.admin_user!r} into it",
            host=server,
        )
    register_secret(text, user=host.admin_user, owner=OWNER)
    return Secret(text)
