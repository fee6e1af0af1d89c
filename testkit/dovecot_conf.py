"""The dovecot.conf of a private Dovecot 2.3 test instance, as a pure function of its settings.

Owns: the two server kinds (Exchange-like SOURCE, Vaultastic-like DEST), the loopback addresses
each kind listens on and what each address means, and the config text. Must not: start
processes or touch the filesystem (``dovecot.py`` does that).

Why each unusual setting is there (measured, see docs/imap-interop.md §4):
- ``instance_name``/``base_dir``/``state_dir``/``log_path`` private, so instances run side by side;
  ``base_dir`` must be fresh for every start, or a stale anvil socket stalls the first login 5 s.
- ``auth_failure_delay = 0`` and the ``anvil-auth-penalty`` listener with ``mode = 0``: without
  them every wrong password costs 2, 4, 8, 15 s (and so does the next right one).
- ``auth_username_chars =`` (empty): any user name (space, backslash) is allowed.
- One passwd-file per user (``users.d/%u``): Dovecot re-reads a passwd-file at most once per
  second, so a user appended to a shared file right after another login stayed unknown.
- ``LAYOUT=fs`` on the source so that ``.`` is legal inside names (``Mr. Smith``) with ``/``.
- Dovecot treats a connection whose local IP equals its remote IP as secure. Clients connect from
  127.0.0.1, so only ``127.0.0.1`` is "loopback-secure"; every other address behaves like a
  remote server: plaintext LOGIN is refused before STARTTLS (``LOGINDISABLED``).
- ``login_log_format_elements`` adds ``lport`` so tests can tell implicit TLS from STARTTLS, and
  ``log_timestamp`` has microseconds for humans reading the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class ServerKind(StrEnum):
    SOURCE = "source"  # Exchange-like: separator "/", no prefix, maildir LAYOUT=fs
    DEST = "dest"  # Vaultastic/Cyrus-like: separator ".", prefix "INBOX.", maildir++


@dataclass(frozen=True, slots=True)
class ServerAddresses:
    """Where one instance listens (every address gets both the plain and the implicit-TLS port).

    ``host``: STARTTLS and implicit TLS; what a CSV names as the server.
    ``insecure_host``: a "remote" address: ``LOGINDISABLED`` until STARTTLS.
    ``notls_host``: a legacy server without any TLS: no STARTTLS offered, the implicit-TLS port
    drops the connection, plaintext LOGIN accepted.
    """

    host: str
    insecure_host: str
    notls_host: str

    def all(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.host, self.insecure_host, self.notls_host)))


# The source is on 127.0.0.1 (loopback-secure: plaintext LOGIN works there too, as with an
# Exchange that allows it); the destination has its own addresses, so that per-host config keys
# and per-host connection limits of the daemon never mix the two servers up.
DEFAULT_ADDRESSES: dict[ServerKind, ServerAddresses] = {
    ServerKind.SOURCE: ServerAddresses("127.0.0.1", "127.0.0.2", "127.0.0.3"),
    ServerKind.DEST: ServerAddresses("127.0.0.4", "127.0.0.5", "127.0.0.6"),
}

SEPARATOR: dict[ServerKind, str] = {ServerKind.SOURCE: "/", ServerKind.DEST: "."}
PREFIX: dict[ServerKind, str] = {ServerKind.SOURCE: "", ServerKind.DEST: "INBOX."}
MAIL_LOCATION: dict[ServerKind, str] = {
    ServerKind.SOURCE: "maildir:~/Maildir:LAYOUT=fs",
    ServerKind.DEST: "maildir:~/Maildir",
}


@dataclass(frozen=True, slots=True)
class RunAs:
    """Unprivileged mode (tests not run as root): every process and the mail run as this user."""

    user: str
    group: str
    uid: int


@dataclass(frozen=True, slots=True)
class DovecotSettings:
    name: str
    kind: ServerKind
    root: Path  # users file and mail homes live here
    base_dir: Path  # sockets; must be new for every start and short (108-byte socket paths)
    log_path: Path
    addresses: ServerAddresses
    port_plain: int
    port_tls: int
    cert_file: Path
    key_file: Path
    mail_uid: int
    mail_gid: int
    max_userip_connections: int = 1000
    run_as: RunAs | None = None
    extra: str = ""  # appended verbatim, for one-off experiments in a test
    # Master users (``user*master`` or SASL PLAIN with authzid): their passwd-file, else none.
    master_users_file: Path | None = None
    # OAuth 2.0 (XOAUTH2, OAUTHBEARER): the dovecot-oauth2.conf.ext of the oauth2 passdb.
    oauth2_conf: Path | None = None
    oauth2_mechanisms: str = "xoauth2 oauthbearer"  # which of the two the server offers

    @property
    def users_dir(self) -> Path:
        return self.root / "users.d"

    @property
    def mail_root(self) -> Path:
        return self.root / "mail"


def _unprivileged(run_as: RunAs | None) -> str:
    if run_as is None:
        return ""
    # Dovecot's documented recipe for running without root: no privilege changes, no chroot.
    return f"""
default_internal_user = {run_as.user}
default_internal_group = {run_as.group}
default_login_user = {run_as.user}
first_valid_uid = {run_as.uid}
service imap-login {{
  chroot =
}}
service anvil {{
  chroot =
}}
service auth {{
  user = {run_as.user}
}}
service auth-worker {{
  user = {run_as.user}
}}
"""


def _passdbs(s: DovecotSettings) -> str:
    """The passdbs before the users' passwd-file: master users, the OAuth 2.0 token check."""
    out = ""
    if s.master_users_file is not None:
        # pass = yes: a master login goes on to the users' passdb, so the mailbox must exist.
        out += f"""auth_master_user_separator = *
passdb {{
  driver = passwd-file
  master = yes
  pass = yes
  args = username_format=%u {s.master_users_file}
}}
"""
    if s.oauth2_conf is not None:
        out += f"""passdb {{
  driver = oauth2
  mechanisms = {s.oauth2_mechanisms}
  args = {s.oauth2_conf}
}}
"""
    return out


def render_oauth2_conf(introspection_url: str, ca_file: Path) -> str:
    """The dovecot-oauth2.conf.ext of the oauth2 passdb: every token is checked with a POST to
    ``introspection_url`` (RFC 7662, ``testkit.identity``), which must say ``active: true``.

    A client-credentials token is the application's, not a mailbox user's: the introspection
    names the application (``identity.APP_USER``) whatever the IMAP user, so the user-name
    comparison is made constant (``username_format = app`` on both sides): any mailbox, as
    Exchange Online allows an application that holds ``IMAP.AccessAsApp`` and was granted the
    mailboxes.
    """
    return f"""introspection_mode = post
introspection_url = {introspection_url}
force_introspection = yes
username_attribute = username
username_format = app
active_attribute = active
active_value = true
tls_ca_cert_file = {ca_file}
timeout_msecs = 10000
"""


def render_config(s: DovecotSettings) -> str:
    """The complete dovecot.conf text for ``s``."""
    return f"""# generated by testkit/dovecot_conf.py
instance_name = {s.name}
base_dir = {s.base_dir}
state_dir = {s.root}/state
log_path = {s.log_path}
log_timestamp = "%Y-%m-%d %H:%M:%S.%{{usecs}} "
login_log_format_elements = user=<%u> method=%m rip=%r lip=%l lport=%{{lport}} mpid=%e %c \
session=<%{{session}}>
protocols = imap
listen = {", ".join(s.addresses.all())}
ssl = yes
ssl_cert = <{s.cert_file}
ssl_key = <{s.key_file}
disable_plaintext_auth = yes
auth_mechanisms = plain login{" " + s.oauth2_mechanisms if s.oauth2_conf is not None else ""}
auth_failure_delay = 0
auth_username_chars =
mail_location = {MAIL_LOCATION[s.kind]}
mail_fsync = never
mail_max_userip_connections = {s.max_userip_connections}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
namespace inbox {{
  inbox = yes
  separator = {SEPARATOR[s.kind]}
  prefix = {PREFIX[s.kind]}
}}
{_passdbs(s)}passdb {{
  driver = passwd-file
  args = username_format=%u {s.users_dir}/%u
}}
userdb {{
  driver = static
  args = uid={s.mail_uid} gid={s.mail_gid} home={s.mail_root}/%u
}}
service imap-login {{
  inet_listener imap {{
    port = {s.port_plain}
  }}
  inet_listener imaps {{
    port = {s.port_tls}
    ssl = yes
  }}
}}
local {s.addresses.notls_host} {{
  ssl = no
  disable_plaintext_auth = no
}}
{_unprivileged(s.run_as)}
{s.extra}
"""
