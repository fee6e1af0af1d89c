"""Backoff and the classification of real Exchange / O365 / Dovecot tagged responses."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from legacyflo_daemon.errors import (
    AuthenticationFailed,
    ImapError,
    MessageRejected,
    PermanentError,
    TransientError,
)
from legacyflo_daemon.imap.syntax.responses import (
    Kind,
    Outcome,
    check,
    classify_append,
    classify_fetch,
    classify_login,
    classify_response,
    error_for,
    one_line,
    response_code,
    suggested_backoff,
)
from legacyflo_daemon.model import Secret
from legacyflo_daemon.transfer.backoff import HINT_CAP, Backoff

# --- Backoff ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "rand", "hint", "expected"),
    [
        (0, 1.0, None, 1.0),
        (1, 1.0, None, 2.0),
        (3, 1.0, None, 8.0),
        (3, 0.5, None, 4.0),
        (0, 0.0, None, 0.0),  # full jitter may not wait at all
        (8, 1.0, None, 60.0),  # 256 capped at 60
        (5000, 1.0, None, 60.0),  # no float overflow for absurd attempts
        (0, 0.0, 5.0, 5.0),  # never less than the server's hint
        (8, 1.0, 5.0, 60.0),  # ... but the hint is a floor, not a replacement
        (0, 0.5, 299.609, 299.609),  # O365's hint is obeyed even above the cap
        (0, 0.5, 100_000.0, HINT_CAP),  # up to 15 minutes
        (2, 1.0, 0.0, 4.0),
        (2, 1.0, -3.0, 4.0),  # nonsense hints are ignored
        (2, 1.0, math.nan, 4.0),
        (2, 1.0, math.inf, 4.0),
    ],
)
def test_delay(attempt: int, rand: float, hint: float | None, expected: float) -> None:
    assert Backoff(1.0, 60.0, 6).delay(attempt, rand, hint) == pytest.approx(expected)


@pytest.mark.parametrize(("attempt", "rand"), [(-1, 0.5), (0, -0.1), (0, 1.5), (0, math.nan)])
def test_delay_rejects_bad_arguments(attempt: int, rand: float) -> None:
    with pytest.raises(ValueError, match="must"):
        Backoff(1.0, 60.0, 6).delay(attempt, rand, None)


@pytest.mark.parametrize(
    ("base", "cap", "max_attempts"), [(-1.0, 1.0, 1), (1.0, -1.0, 1), (1, 1, -1)]
)
def test_backoff_rejects_negative_settings(base: float, cap: float, max_attempts: int) -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        Backoff(base, cap, max_attempts)


@pytest.mark.parametrize(
    ("max_attempts", "attempt", "exhausted"),
    [(3, 0, False), (3, 2, False), (3, 3, True), (3, 4, True), (0, 0, True)],
)
def test_exhausted(max_attempts: int, attempt: int, exhausted: bool) -> None:
    assert Backoff(1.0, 60.0, max_attempts).exhausted(attempt) is exhausted


@pytest.mark.parametrize("max_attempts", [0, 1, 6])
def test_retry_loop_runs_max_attempts_plus_one_times(max_attempts: int) -> None:
    backoff = Backoff(1.0, 60.0, max_attempts)
    tries, waited, attempt = 0, [], 0
    while True:
        tries += 1  # the operation fails every time
        if backoff.exhausted(attempt):
            break
        waited.append(backoff.delay(attempt, 1.0, None))
        attempt += 1
    assert tries == max_attempts + 1
    assert waited == [min(60.0, 2.0**i) for i in range(max_attempts)]


@given(
    st.integers(0, 200),
    st.floats(0.0, 1.0),
    st.floats(0.0, 1.0),
    st.one_of(st.none(), st.floats(0.001, 10_000.0)),
)
def test_delay_bounds_and_monotone_in_rand(
    attempt: int, r1: float, r2: float, hint: float | None
) -> None:
    b = Backoff(0.5, 120.0, 6)
    lo, hi = sorted((r1, r2))
    d_lo, d_hi = b.delay(attempt, lo, hint), b.delay(attempt, hi, hint)
    assert 0.0 <= d_lo <= d_hi
    assert d_hi <= max(120.0, min(hint or 0.0, HINT_CAP))
    if hint is not None:
        assert d_lo >= min(hint, HINT_CAP)


# --- Suggested Backoff Time ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("Request is throttled. Suggested Backoff Time: 299609 milliseconds", 299.609),
        ("Request is throttled. Suggested Backoff Time: 92415 milliseconds", 92.415),
        ("request is throttled. suggested backoff time: 50 milliseconds", 0.05),
        ("SUGGESTED BACKOFF TIME: 5000 MILLISECONDS", 5.0),
        ("Suggested Backoff Time:5000ms", 5.0),
        ("Suggested Backoff Time: 5000", 5.0),  # milliseconds is Exchange's only unit
        ("Suggested Backoff Time: 12 seconds", 12.0),
        ("Suggested Backoff Time: 0 milliseconds", 0.0),
        ("Server Unavailable. 15", None),
        ("", None),
        ("Suggested Backoff Time: soon", None),
    ],
)
def test_suggested_backoff(text: str, seconds: float | None) -> None:
    got = suggested_backoff(text)
    if seconds is None:
        assert got is None
    else:
        assert got == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("[UNAVAILABLE] Server Unavailable.", "UNAVAILABLE"),
        ("[ALREADYEXISTS] Mailbox already exists", "ALREADYEXISTS"),
        ("[APPENDUID 1795719219 1] Append completed", "APPENDUID"),
        ("[overquota] x", "OVERQUOTA"),
        ("Server Unavailable. 15", None),
        ("text [LIMIT] later", None),
    ],
)
def test_response_code(text: str, code: str | None) -> None:
    assert response_code(text) == code


# --- Classification: strings seen from real servers ---------------------------------------
# Exchange/O365 strings from docs/imap-interop.md §2 and imapsync's FAQ; Dovecot 2.3.19
# strings captured from a local instance (LOGIN, SELECT, CREATE, APPEND with quota/size limits).

LOGIN = [
    ("OK", "LOGIN completed.", "ok"),
    ("OK", "Logged in", "ok"),
    ("NO", "LOGIN failed.", "auth"),  # Exchange
    ("NO", "AUTHENTICATE failed.", "auth"),  # O365 (also basic auth disabled)
    ("no", "LOGIN failed.", "auth"),
    ("NO", "[AUTHENTICATIONFAILED] Authentication failed.", "auth"),  # Dovecot
    ("NO", "[AUTHORIZATIONFAILED] Not allowed to act as that user", "auth"),
    ("NO", "[EXPIRED] Password has expired", "auth"),
    ("NO", "[CONTACTADMIN] Account disabled", "auth"),
    ("NO", "[UNAVAILABLE] Temporary authentication failure. [mx:2024-05-01 10:00:00]", "transient"),
    ("NO", "Request is throttled. Suggested Backoff Time: 299609 milliseconds", "transient"),
    ("NO", "Server Unavailable. 15", "transient"),
    ("BYE", "Connection closed. 14", "transient"),
    (
        "NO",
        "[LIMIT] Maximum number of connections from user+IP exceeded "
        "(mail_max_userip_connections=1)",
        "limited",
    ),  # Dovecot
    (
        "NO",
        "[PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) "
        "connections.",
        "permanent",
    ),  # Dovecot
    # Connection limits: a pace (ConnectionLimited), never a wrong password.
    ("NO", "Too many open connections (4 of 4 for user)", "limited"),  # Cyrus, no code
    ("NO", "Maximum number of connections from user+IP exceeded", "limited"),
    ("NO", "Too many simultaneous connections, try later", "limited"),
    ("NO", "[LIMIT] whatever the words", "limited"),
    ("BYE", "Too many connections from your address", "limited"),
    ("BAD", "Command received in Invalid state.", "permanent"),  # Exchange TLS/login mismatch
    ("BAD", "Command Argument Error. 12", "permanent"),  # a quoting bug, not a bad password
]

SELECT = [
    ("OK", "[READ-ONLY] EXAMINE completed.", "ok"),
    ("NO", "User is authenticated but not connected.", "auth"),  # Exchange: wrong password
    ("NO", "Mailbox doesn't exist: INBOX.nope (0.001 + 0.000 secs).", "permanent"),  # Dovecot
    (
        "NO",
        "Client tried to access nonexistent namespace. (Mailbox name should probably be "
        "prefixed with: INBOX.) (0.001 + 0.000 secs).",
        "permanent",
    ),
    ("NO", "[NONEXISTENT] Unknown Mailbox: Calendar", "permanent"),
    ("NO", "[NOPERM] Permission denied", "permanent"),
    ("NO", "Server Unavailable. 15", "transient"),
    ("NO", "[UNAVAILABLE] Backend down", "transient"),
    ("NO", "[INUSE] Mailbox is locked by another session", "transient"),
    (
        "NO",
        "[SERVERBUG] Internal error occurred. Refer to server log for more information. "
        "[2024-05-01 10:00:00]",
        "transient",
    ),  # Dovecot's temporary error
    ("BAD", "Command Argument Error. 11", "permanent"),
    ("BYE", "Connection closed. 14", "transient"),
]

CREATE = [
    ("OK", "Create completed (0.002 + 0.000 + 0.001 secs).", "ok"),
    ("NO", "[ALREADYEXISTS] Mailbox already exists (0.001 + 0.000 secs).", "ok"),  # Dovecot
    ("NO", "Mailbox already exists.", "ok"),
    (
        "NO",
        "[CANNOT] Invalid mailbox name: Name must not have '/' characters (0.001 + 0.000 secs).",
        "permanent",
    ),  # Dovecot
    (
        "NO",
        "Client tried to access nonexistent namespace. (Mailbox name should probably be "
        "prefixed with: INBOX.) (0.001 + 0.000 secs).",
        "permanent",
    ),
    ("NO", "Folder name is reserved", "permanent"),  # O365 hidden "Files"
    ("NO", "[OVERQUOTA] Too many mailboxes", "permanent"),
    ("NO", "[LIMIT] Too many mailboxes", "permanent"),
    ("NO", "Server Unavailable. 15", "transient"),
    ("NO", "User is authenticated but not connected.", "auth"),
]

APPEND = [
    ("OK", "[APPENDUID 1795719219 1] Append completed (0.002 + 0.001 secs).", "ok"),
    ("OK", "APPEND completed.", "ok"),
    (
        "NO",
        "[LIMIT] Mail size is larger than the maximum size allowed by server configuration "
        "(0.001 + 0.000 secs).",
        "rejected",
    ),  # Dovecot quota_max_mail_size
    ("NO", "Maximum size of appendable message has been exceeded.", "rejected"),  # Exchange
    ("NO", "[TOOBIG] Message too large", "rejected"),
    ("BAD", "Command Argument Error. 11", "rejected"),  # Exchange: size, long lines
    (
        "BAD",
        "Error in IMAP command APPEND: Invalid system flag \\RECENT (0.001 + 0.000 secs).",
        "rejected",
    ),  # Dovecot
    ("BAD", "Invalid system flag \\FORWARDED", "rejected"),
    ("NO", "Message contains invalid header", "rejected"),
    ("NO", "Message contains NUL characters", "rejected"),
    ("BAD", "Error in IMAP command APPEND: 8bit data in atom", "rejected"),
    ("NO", "[CANNOT] Message is not a valid RFC 5322 message", "rejected"),
    ("NO", "[PARSE] Broken MIME structure", "rejected"),
    (
        "NO",
        "[OVERQUOTA] Quota exceeded (mailbox for user is full) (0.001 + 0.000 secs).",
        "permanent",
    ),  # Dovecot
    ("NO", "Over quota", "permanent"),
    ("NO", "APPEND The 1500 MB storage limit has been exceeded.", "permanent"),  # GroupWise
    ("NO", "[TRYCREATE] Mailbox doesn't exist: INBOX.nope (0.001 + 0.000 secs).", "permanent"),
    ("NO", "[NOPERM] Permission denied", "permanent"),
    ("NO", "Server Unavailable. 15", "transient"),
    ("NO", "Request is throttled. Suggested Backoff Time: 5000 milliseconds", "transient"),
    ("BYE", "Connection closed. 14", "transient"),
    ("NO", "[SERVERBUG] Internal error occurred. Refer to server log.", "transient"),
    ("NO", "[UNAVAILABLE] Try again", "transient"),
]

FETCH = [
    ("OK", "FETCH completed.", "ok"),
    ("BAD", "Request is throttled. Suggested Backoff Time: 50 milliseconds", "transient"),
    ("NO", "[EXPUNGEISSUED] Some of the requested messages no longer exist", "rejected"),
    ("NO", "The specified message set is invalid.", "rejected"),
    ("NO", "[TOOBIG] Message too large to fetch", "rejected"),
    ("BAD", "Command Argument Error. 11", "permanent"),  # a set too long: our bug
    ("NO", "Server Unavailable. 15", "transient"),
    ("BYE", "Connection closed. 14", "transient"),
]

OTHER = [
    ("OK", "LIST completed.", "ok"),
    ("BYE", "Too many open connections", "limited"),  # e.g. a greeting BYE
    ("NO", "Server Unavailable. 15", "transient"),
    ("NO", "User is authenticated but not connected.", "auth"),
    ("BAD", "Command Argument Error. 11", "permanent"),
    ("NO", "[CANNOT] whatever", "permanent"),
]

KINDS: dict[str, list[tuple[str, str, str]]] = {
    "login": LOGIN,
    "select": SELECT,
    "create": CREATE,
    "append": APPEND,
    "fetch": FETCH,
    "other": OTHER,
}
TABLE = [(kind, r, t, o) for kind, rows in KINDS.items() for r, t, o in rows]


@pytest.mark.parametrize(("kind", "result", "text", "outcome"), TABLE)
def test_classify(kind: str, result: str, text: str, outcome: str) -> None:
    assert classify_response(cast(Kind, kind), result, text) == outcome


@pytest.mark.parametrize(
    ("fn", "kind"),
    [
        (classify_login, "login"),
        (classify_append, "append"),
        (classify_fetch, "fetch"),
    ],
)
def test_per_kind_helpers_agree(fn: Callable[[str, str], Outcome], kind: Kind) -> None:
    rows = [(r, t) for k, r, t, _ in TABLE if k == kind]
    assert rows
    for result, text in rows:
        assert fn(result, text) == classify_response(kind, result, text)


# --- Exceptions for the caller ------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "cls"),
    [
        ("auth", AuthenticationFailed),
        ("transient", TransientError),
        ("rejected", MessageRejected),
        ("permanent", PermanentError),
    ],
)
def test_error_for_classes(outcome: Outcome, cls: type[ImapError]) -> None:
    err = error_for(outcome, "mail.example.com", "NO said so", what="LOGIN as john")
    assert type(err) is cls
    assert err.host == "mail.example.com"
    assert str(err) == "mail.example.com: LOGIN as john: NO said so"


def test_error_for_ok_is_a_bug() -> None:
    with pytest.raises(ValueError, match="no error"):
        error_for("ok", "h", "fine")


def test_transient_error_carries_the_server_hint() -> None:
    text = "Request is throttled. Suggested Backoff Time: 299609 milliseconds"
    err = error_for("transient", "outlook.office365.com", text)
    assert isinstance(err, TransientError)
    assert err.retry_after == pytest.approx(299.609)
    assert isinstance(error_for("transient", "h", "Server Unavailable. 15"), TransientError)
    plain = error_for("transient", "h", "Server Unavailable. 15")
    assert isinstance(plain, TransientError)
    assert plain.retry_after is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Server Unavailable. 15\r\n", "Server Unavailable. 15"),
        ("two\r\nlines", "two lines"),
        ("tab\tand\x00nul", "tab and nul"),
        ("  spaced   out  ", "spaced out"),
        ("", ""),
    ],
)
def test_one_line(text: str, expected: str) -> None:
    assert one_line(text) == expected


def test_one_line_truncates() -> None:
    out = one_line("x" * 1000)
    assert len(out) <= 300
    assert out.endswith("…")


def test_empty_server_text_is_said() -> None:
    assert str(error_for("permanent", "h", "")) == "h: (no text from the server)"


def test_secrets_are_scrubbed_before_truncation() -> None:
    pw = Secret("hunter2!secret")
    text = "x" * 290 + ' BAD Error in IMAP command LOGIN u "hunter2!secret"'
    err = error_for("auth", "h", text, secrets=[pw])
    assert "hunter" not in str(err)
    short = error_for("auth", "h", 'LOGIN u "hunter2!secret"', secrets=[pw, Secret("")])
    assert "hunter" not in str(short)
    assert "********" in str(short)


def test_check_raises_only_when_not_ok() -> None:
    check("append", "OK", "[APPENDUID 1 2] done", host="h")
    check("create", "NO", "[ALREADYEXISTS] Mailbox already exists", host="h")
    with pytest.raises(AuthenticationFailed, match="LOGIN failed"):
        check("login", "NO", "LOGIN failed.", host="h", what="LOGIN as john")
    with pytest.raises(MessageRejected, match="APPEND to X: Maximum size"):
        check("append", "NO", "Maximum size of appendable message has been exceeded.", host="h",
              what="APPEND to X")  # fmt: skip
    with pytest.raises(TransientError) as info:
        check("fetch", "BAD", "Request is throttled. Suggested Backoff Time: 50 milliseconds",
              host="h")  # fmt: skip
    assert info.value.retry_after == pytest.approx(0.05)
