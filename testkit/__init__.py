"""Real servers for the tests: private Dovecot 2.3, Cyrus IMAP 3.6 and Courier-IMAP 5.0
instances on loopback, test mail, faults, snapshots.

``make deps`` installs all three (Cyrus and Courier conflict with Dovecot as packages:
``testkit/install-servers.sh`` installs their dependencies and unpacks the two packages into
``.servers/``). Fixtures (``tests/conftest.py``; tests using them are auto-marked ``servers``
and skipped with the reason only when that server is not installed):

- ``source_server`` / ``dest_server`` (session): ``DovecotServer``. Source is Exchange-like
  (separator ``/``, no prefix, ``LAYOUT=fs`` so ``Mr. Smith`` is legal) on 127.0.0.1; dest is
  Vaultastic-like (separator ``.``, prefix ``INBOX.``, NAMESPACE ``(("INBOX." "."))``) on
  127.0.0.4. Properties: ``host``, ``port_tls`` (implicit TLS, 993-like), ``port_plain``
  (STARTTLS, 143-like), ``ca_file``, ``separator``, ``prefix``; ``insecure_host`` (LOGINDISABLED
  until STARTTLS: Dovecot counts only 127.0.0.1->127.0.0.1 as secure) and ``notls_host`` (no
  TLS at all, plaintext LOGIN accepted), same ports.
- ``source_account`` / ``dest_account`` (per test): a fresh user, ``ServerAccount`` with
  ``user``, ``password``, ``host``, ``port_tls``, ``port_plain``, ``ca_file``, ``.model(port)``
  (a ``model.Account``) and ``.imap(Security.TLS)`` (a logged-in stdlib ``imaplib``
  connection). Every source account's password is ``HOSTILE_PASSWORD``
  (``p@ss"w0rd\\%*{} é``, also the ``hostile_password`` fixture); dest accounts use
  ``DEST_PASSWORD``. More accounts:
  ``new_source_account(password)``, ``new_dest_account(password)``.
- ``dovecot_factory(ServerKind.SOURCE, max_userip_connections=16)``: a private server for one
  test (e.g. an Exchange-like per-user connection limit; refusals show in ``count_logins``).
- ``fault_proxy(host, port)``: a started ``FaultProxy`` (latency, cut/stall after N bytes, after
  a pattern, connection counts); byte-level, so TLS goes through it untouched.
- ``tls_ca``: the CA; ``tls_ca.client_context()`` verifies the servers (all three kinds use it,
  so ``ca_file`` works for the daemon).

Cyrus and Courier (``cyrus.py``, ``courier.py``; shared base ``imapserver.PrivateImapServer``):
- ``cyrus_server`` (session): ``CyrusServer`` on 127.0.0.2 as Cyrus ships (separator ``.``,
  ``INBOX.`` personal, ``user.`` other users, ``""`` shared namespace; munge8bit on), with
  ``port_tls`` (implicit TLS) and ``port_plain`` (STARTTLS, ``LOGINDISABLED`` before it).
  ``cyrus_factory(separator="/", munge8bit=False, maxlogins_per_user=2, extra_conf="...")``
  for one test. ``cyrus_account`` / ``new_cyrus_account(password)``: fresh users (empty INBOX,
  password ``HOSTILE_PASSWORD`` by default). The admin: ``share_folder(owner, folder, user,
  rights)`` (returns ``user.owner.folder``, the name the grantee lists), ``create_shared_folder
  (name, {user: rights})``, ``grant``, ``set_quota(user, kib)``, ``admin()`` (a connection),
  ``mailbox_of(user, folder)``. Wire logs: ``sessions(user)`` -> transcripts of the user's
  authenticated sessions, the kit's own left out (``include_testkit=True`` keeps them).
- ``courier_server`` (session): ``CourierServer`` on 127.0.0.3, ``port_plain`` only (STARTTLS
  required; ``port_tls`` raises), authdaemond + userdb in a private mount namespace, Maildir
  per user. ``courier_factory(maxperip=2, env={...})`` for one test. ``courier_account`` /
  ``new_courier_account(password)``; ``account.imap()`` uses STARTTLS there by itself. Log:
  ``logins(user)`` (``CourierLogin``: client port, ended), ``max_concurrent_sessions(user)``,
  ``failed_logins()``, ``limit_refusals()`` (``-maxperip``), ``wait_for_log(predicate)``.
- Both: ``new_user(password, prefix)``, ``account(user)``, ``connect(user)`` (logged-in
  imaplib), ``create_folder(user, "INBOX.a.b")``, ``load_messages(user, folder, [MailSpec])``
  (APPEND as the user, one per message, flags and INTERNALDATE kept, UIDs in order),
  ``snapshot(user)`` -> the same ``MailboxSnapshot`` as Dovecot's (EXAMINE + BODY.PEEK as the
  user: nothing changes; only the personal namespace), ``start_seconds``, ``stop()``/``start()``
  (same ports, users and mail), ``remove()``.
- What differs from Dovecot and from the notes is in the module docstrings (e.g. Debian's Cyrus
  defaults to ``altnamespace``/``unixhierarchysep`` on; a failed Courier login is answered after
  5 s; Cyrus's munge8bit turns each 8-bit header byte into ``X``).

Mail:
- ``load_exchange_corpus(source_server, user, scale=1)`` -> ``Manifest`` (folder -> loaded
  messages with label, sha256, size, flags, INTERNALDATE; ``by_label``, ``in_range``). See
  ``corpus.py`` for what is in it (boundary dates, duplicates, flags, non-mail folders).
- ``load_messages(server, user, folder, [MailSpec(...)])`` for anything else, on either kind
  (dest folder names are full: ``INBOX.historical_data.X``); ``create_folder``;
  ``make_message(...)``, ``make_big_message(size)``, ``load_big_message(server, user, size)``.
  Files are written straight into maildir ``cur/`` (UIDs follow load order, INTERNALDATE = mtime).

Checking:
- ``snapshot_mailbox(server, user)`` -> ``MailboxSnapshot``: per folder UIDVALIDITY and messages
  (uid, flags without \\Recent, internaldate epoch, sha256/size of the IMAP bytes). Read with
  doveadm: no login, no \\Seen, no \\Recent taken. Equal snapshots = unchanged mailbox;
  ``FolderState.contents()`` is the UID-free multiset to compare with a ``Manifest``.
- ``server.count_logins(user)`` -> ``LoginCounts(succeeded, failed, refused_by_limit)``;
  ``server.max_concurrent_sessions(user or None)``; ``server.logins(user)`` (with local port and
  TLS); ``server.wait_for_log(predicate)`` because Dovecot writes its log a few ms late.
- ``server.doveadm(*args)``, ``server.kick(user)``, ``server.stop()``/``start()`` (same ports).
"""

from testkit.corpus import Manifest, exchange_corpus, load_exchange_corpus
from testkit.courier import CourierServer, missing_courier
from testkit.cyrus import CyrusServer, missing_cyrus
from testkit.dovecot import DovecotServer
from testkit.dovecot_conf import ServerKind
from testkit.dovelog import LoginCounts
from testkit.imap import DEST_PASSWORD, HOSTILE_PASSWORD, Security, ServerAccount
from testkit.maildir import LoadedMessage, MailSpec, create_folder, load_messages
from testkit.mailgen import Attachment, load_big_message, make_big_message, make_message
from testkit.master import missing_dovecot
from testkit.proxy import FaultProxy
from testkit.snapshot import MailboxSnapshot, snapshot_mailbox
from testkit.tlsca import TlsCa, make_tls_ca

__all__ = [
    "DEST_PASSWORD",
    "HOSTILE_PASSWORD",
    "Attachment",
    "CourierServer",
    "CyrusServer",
    "DovecotServer",
    "FaultProxy",
    "LoadedMessage",
    "LoginCounts",
    "MailSpec",
    "MailboxSnapshot",
    "Manifest",
    "Security",
    "ServerAccount",
    "ServerKind",
    "TlsCa",
    "create_folder",
    "exchange_corpus",
    "load_big_message",
    "load_exchange_corpus",
    "load_messages",
    "make_big_message",
    "make_message",
    "make_tls_ca",
    "missing_courier",
    "missing_cyrus",
    "missing_dovecot",
    "snapshot_mailbox",
]
