"""log: JSON lines with event/level/timestamp, level control, and secrets that never appear."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from legacyflo_daemon.config.schema import LogConfig
from legacyflo_daemon.model import REDACTED, Secret
from legacyflo_daemon.runtime.log import configure_logging, reset_logging, set_level
from legacyflo_daemon.runtime.secrets import forget_secret, forms, redact, register_secret, scrub

NASTY_PASSWORD = "p\"a\\ss w'o%r*d{5}):é"
OWNER = "test-request"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    reset_logging()
    while _HELD:
        value, user = _HELD.pop()
        forget_secret(value, user=user, owner=OWNER)


_HELD: list[tuple[str, str | None]] = []


def hold(value: str, user: str | None = None) -> None:
    """``register_secret`` for the rest of the test (the fixture forgets it)."""
    register_secret(value, user=user, owner=OWNER)
    _HELD.append((value, user))


def start(**options: Any) -> io.BytesIO:
    out = io.BytesIO()
    configure_logging(LogConfig(**options), stream=out)
    return out


def lines(out: io.BytesIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().decode().splitlines()]


def strings(value: object) -> Iterator[str]:
    """Every string inside a decoded JSON value (keys included)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def test_every_line_is_json_with_event_level_and_utc_timestamp() -> None:
    out = start()
    log = structlog.get_logger("t")
    log.info("request_claimed", file="a.csv", n=3)
    log.warning("row_rejected", row=4)
    logging.getLogger("asyncio").error("from the stdlib %s", "logger")
    records = lines(out)
    assert [r["event"] for r in records] == [
        "request_claimed",
        "row_rejected",
        "from the stdlib logger",
    ]
    assert [r["level"] for r in records] == ["info", "warning", "error"]
    assert records[0]["file"] == "a.csv" and records[0]["n"] == 3
    assert records[2]["logger"] == "asyncio"
    for r in records:
        stamp = dt.datetime.fromisoformat(r["timestamp"].replace("Z", "+00:00"))
        assert stamp.utcoffset() == dt.timedelta(0)
        assert abs(dt.datetime.now(dt.UTC) - stamp) < dt.timedelta(minutes=1)


def test_level_filter_and_set_level() -> None:
    out = start(level="warning")
    log = structlog.get_logger("t")
    log.info("hidden")
    logging.getLogger("x").info("hidden too")
    log.warning("shown")
    set_level("debug")
    log.debug("now shown")
    logging.getLogger("x").debug("stdlib now shown")
    assert [r["event"] for r in lines(out)] == ["shown", "now shown", "stdlib now shown"]


def test_aioimaplib_is_held_at_warning_even_at_debug() -> None:
    out = start(level="debug")
    imap = logging.getLogger("aioimaplib.aioimaplib")
    imap.debug("Sending : b'LOGIN user \"secret\"'")
    imap.info("connection info")
    imap.warning("server said BYE")
    assert [r["event"] for r in lines(out)] == ["server said BYE"]


def test_contextvars_are_on_every_line() -> None:
    out = start()
    with structlog.contextvars.bound_contextvars(request_id="users-r2-abc"):
        structlog.get_logger().info("folder_copied")
        logging.getLogger("aiosmtplib").warning("stdlib inside the request")
    assert [r.get("request_id") for r in lines(out)] == ["users-r2-abc", "users-r2-abc"]


@pytest.mark.parametrize(
    "key",
    ["password", "passwd", "destuserpasswd", "smtp_password", "Authorization", "api_key", "token",
     "client_secret", "credentials"],
)  # fmt: skip
def test_values_under_secret_looking_keys_are_redacted(key: str) -> None:
    out = start()
    structlog.get_logger().info("e", **{key: "hunter2-value"}, nested={key: "hunter2-value"})
    (record,) = lines(out)
    assert record[key] == REDACTED and record["nested"][key] == REDACTED
    assert "hunter2-value" not in out.getvalue().decode()


def test_secret_objects_are_redacted_wherever_they_are() -> None:
    out = start()
    structlog.get_logger().info("e", pw=Secret("hunter2-value"), deep={"list": [Secret("s2")]})
    (record,) = lines(out)
    assert record["pw"] == REDACTED and record["deep"] == {"list": [REDACTED]}


def test_a_registered_password_never_appears_even_inside_an_exception() -> None:
    out = start()
    hold(NASTY_PASSWORD)
    quoted = NASTY_PASSWORD.replace("\\", "\\\\").replace('"', '\\"')
    try:
        raise RuntimeError(
            f'LOGIN failed for {NASTY_PASSWORD}; wire: LOGIN u "{quoted}"; '
            f"repr: {NASTY_PASSWORD!r} {NASTY_PASSWORD.encode()!r} {quoted.encode()!r}"
        )
    except RuntimeError:
        structlog.get_logger().exception("login_failed", note=f"pw={NASTY_PASSWORD}")
    logging.getLogger("aioimaplib").warning('LOGIN u "%s"', quoted)
    text = out.getvalue().decode()
    records = lines(out)
    found = [s for r in records for s in strings(r)]
    for form in ("o%r*d{5}", "ss w'o", "ss w\\'o", "ss w\\\\'o"):
        assert not any(form in s for s in found), form
    assert records[0]["exception"][0]["exc_type"] == "RuntimeError"
    assert REDACTED in records[0]["exception"][0]["exc_value"]
    assert records[0]["note"] == f"pw={REDACTED}"
    assert "o%r*d{5}" not in text


def test_a_stdlib_record_with_exc_info_is_rendered_and_scrubbed() -> None:
    out = start()
    hold("stdlib-pw-77")
    try:
        raise ConnectionError("LOGIN rejected: stdlib-pw-77")
    except ConnectionError as exc:
        logging.getLogger("asyncio").error("Task exception was never retrieved", exc_info=exc)
    (record,) = lines(out)
    assert record["logger"] == "asyncio" and record["level"] == "error"
    assert record["exception"][0]["exc_type"] == "ConnectionError"
    assert record["exception"][0]["exc_value"] == f"LOGIN rejected: {REDACTED}"


def test_exception_frames_carry_no_locals() -> None:
    out = start()

    def fail() -> None:
        local_password = "local-hunter2"  # noqa: F841 - must not be shown
        raise ValueError("boom")

    try:
        fail()
    except ValueError:
        structlog.get_logger().exception("failed")
    assert "local-hunter2" not in out.getvalue().decode()
    frames = lines(out)[0]["exception"][0]["frames"]
    assert frames and all("locals" not in f for f in frames)


def test_two_requests_sharing_a_password_do_not_unregister_each_other() -> None:
    out = start()
    log = structlog.get_logger()
    # The scheduler's calls: register when a request's credentials are loaded, forget when it
    # finishes, with the same arguments.
    register_secret("shared-password-1", user="john")
    register_secret(Secret("shared-password-1"), user="john")  # a second request, same account
    forget_secret("shared-password-1", user="john")
    log.info("still secret shared-password-1")
    forget_secret(Secret("shared-password-1"), user="john")
    log.info("forgotten shared-password-1")
    forget_secret("shared-password-1", user="john")  # nothing left to forget: nothing happens
    register_secret("shared-password-1", user="john")
    log.info("secret again shared-password-1")
    forget_secret("shared-password-1", user="john")
    assert [r["event"] for r in lines(out)] == [
        f"still secret {REDACTED}",
        "forgotten shared-password-1",
        f"secret again {REDACTED}",
    ]


def test_an_owner_holds_a_password_once() -> None:
    out = start()
    log = structlog.get_logger()
    forget_secret("never-registered", owner="csv-r9")  # harmless
    register_secret("owned-password-1", owner="csv-r2")
    register_secret("owned-password-1", owner="csv-r2")  # credentials loaded again: no-op
    register_secret("owned-password-1", owner="csv-r3")  # another request, same password
    register_secret("", owner="csv-r2")  # an empty password registers nothing
    forget_secret("owned-password-1", owner="csv-r2")
    log.info("still secret owned-password-1")
    forget_secret("owned-password-1", owner="csv-r2")  # a second finish changes nothing
    log.info("still secret owned-password-1")
    forget_secret("owned-password-1", owner="csv-r3")
    log.info("forgotten owned-password-1")
    assert [r["event"] for r in lines(out)] == [
        f"still secret {REDACTED}",
        f"still secret {REDACTED}",
        "forgotten owned-password-1",
    ]


PW, USER = "pw-12345-long", "john@baya.com"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    "form",
    [
        PW,
        b64(b"\0" + USER.encode() + b"\0" + PW.encode()),  # SASL PLAIN (SASL-IR or after "+")
        b64(USER.encode() + b"\0" + USER.encode() + b"\0" + PW.encode()),  # PLAIN with authzid
        b64(PW.encode()),  # SASL LOGIN answers the password prompt with it alone
    ],
)
def test_sasl_forms_are_scrubbed_whole(form: str) -> None:
    out = start()
    hold(PW, user=USER)
    structlog.get_logger().info(f"C: A1 AUTHENTICATE PLAIN {form}")
    assert lines(out)[0]["event"] == f"C: A1 AUTHENTICATE PLAIN {REDACTED}"


@pytest.mark.parametrize(
    "blob",
    [
        b"\0john\0" + PW.encode(),  # PLAIN for a login spelled differently (login_format)
        b"\0BAYA\\john\0" + PW.encode(),
        b"user=john\x01auth=Bearer " + PW.encode() + b"\x01\x01",  # XOAUTH2 with a token
    ],
)
def test_the_password_inside_other_base64_is_scrubbed(blob: bytes) -> None:
    out = start()
    hold(PW, user=USER)
    structlog.get_logger().info("sent", line=f"AUTHENTICATE X {b64(blob)}")
    line = lines(out)[0]["line"]
    assert REDACTED in line
    # What is left around the ******** gives away at most the password's first and last bytes.
    left = [piece[shift:] for piece in line.split(REDACTED) for shift in range(4)]
    decoded = b"".join(base64.b64decode(p[: len(p) // 4 * 4]) + b"|" for p in left if p.isalnum())
    assert not any(PW.encode()[i : i + 3] in decoded for i in range(1, len(PW) - 3))


def test_short_base64_runs_are_not_searched() -> None:
    # A 3-byte password has too few base64 characters of its own to be looked for inside other
    # base64 (they would match by chance): only its whole forms count.
    assert forms("abc") == {"abc", b64(b"abc")}
    assert forms("abc", user="u") == {"abc", b64(b"abc"), b64(b"\0u\0abc"), b64(b"u\0u\0abc")}
    assert forms("") == set()


def test_every_form_is_scrubbed_from_exception_text_chains_and_tracebacks() -> None:
    json_out = start()
    hold(NASTY_PASSWORD, user=USER)
    quoted = NASTY_PASSWORD.replace("\\", "\\\\").replace('"', '\\"')
    plain = b64(b"\0" + USER.encode() + b"\0" + NASTY_PASSWORD.encode())

    def fail() -> None:
        try:
            raise OSError(f'LOGIN {USER} "{quoted}"')
        except OSError as exc:
            raise RuntimeError(f"AUTHENTICATE PLAIN {plain} {NASTY_PASSWORD!r}") from exc

    try:
        fail()
    except RuntimeError:
        structlog.get_logger().exception("login_failed")
    text = io.StringIO()
    configure_logging(LogConfig(format="console"), stream=text)
    try:
        fail()
    except RuntimeError:
        structlog.get_logger().exception("login_failed")
    record = lines(json_out)[0]
    assert [e["exc_type"] for e in record["exception"]] == ["RuntimeError", "OSError"]
    rendered = json.dumps(record, ensure_ascii=False) + text.getvalue()
    assert "Traceback" in text.getvalue() and "OSError" in text.getvalue()
    for form in (NASTY_PASSWORD, quoted, plain, "o%r*d{5}", "ss w\\'o"):
        assert form not in rendered, form
        assert form not in text.getvalue(), form


def test_a_password_used_as_a_key_is_scrubbed_too() -> None:
    out = start()
    hold("key-hunter2-9")
    structlog.get_logger().info("e", mapping={"key-hunter2-9": 1})
    assert lines(out)[0]["mapping"] == {REDACTED: 1}


def test_register_and_forget_are_thread_safe() -> None:
    out = start()
    register_secret("held-throughout-1")
    try:

        def churn(n: int) -> None:
            for i in range(200):
                register_secret(f"thread-pw-{i % 7}", user="u")  # shared across the threads
                structlog.get_logger().info(f"held-throughout-1 {n} {i}")
                forget_secret(f"thread-pw-{i % 7}", user="u")

        threads = [threading.Thread(target=churn, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        structlog.get_logger().info("thread-pw-1 held-throughout-1")
    finally:
        forget_secret("held-throughout-1")
    events = [r["event"] for r in lines(out)]
    assert len(events) == 4 * 200 + 1
    assert all(e.startswith(f"{REDACTED} ") for e in events[:-1])
    assert events[-1] == f"thread-pw-1 {REDACTED}"  # every count given back: forgotten


def test_redact_replaces_every_form_of_one_password() -> None:
    auth = b64(b"\0reporter\0" + NASTY_PASSWORD.encode())
    text = f"535 auth failed for {auth}; pw {NASTY_PASSWORD!r}"
    assert redact(text, Secret(NASTY_PASSWORD), user="reporter") == (
        f"535 auth failed for {REDACTED}; pw '{REDACTED}'"
    )
    assert redact(text, None) == text


PASSWORDS = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)) | st.sampled_from(list("\"\\' %*{}()")),
    min_size=8,
    max_size=24,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(password=PASSWORDS)
def test_property_no_registered_password_survives(password: str) -> None:
    assume(password.strip("*") != "")
    out = start()
    register_secret(password)
    try:
        quoted = password.replace("\\", "\\\\").replace('"', '\\"')
        try:
            raise OSError(f'{password} | {password!r} | {quoted.encode()!r} | "{quoted}"')
        except OSError:
            structlog.get_logger().exception("e", value=password, raw=password.encode())
        forms = {password, quoted, repr(password)[1:-1], repr(quoted.encode())[2:-1]}
        for s in (s for r in lines(out) for s in strings(r)):
            for form in forms:
                assert form not in s
    finally:
        forget_secret(password)


def test_scrub_makes_values_json_safe() -> None:
    when = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert scrub({"a": b"bytes", 1: {2, 3} and [1], "p": Path("/x"), "t": when}) == {
        "a": "bytes",
        "1": [1],
        "p": "/x",
        "t": "2024-01-02T03:04:05+00:00",
    }


def test_file_sink_appends_json_even_with_console_stdout(tmp_path: Path) -> None:
    path = tmp_path / "daemon.log"
    path.write_bytes(b'{"event":"earlier"}\n')
    text = io.StringIO()
    configure_logging(LogConfig(format="console", file=path), stream=text)
    structlog.get_logger().info("hello", password="x")
    reset_logging()
    file_lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["event"] for r in file_lines] == ["earlier", "hello"]
    assert file_lines[1]["password"] == REDACTED
    console = text.getvalue()
    assert "hello" in console and not console.lstrip().startswith("{")
    assert f"password={REDACTED}" in console


@pytest.mark.parametrize(
    ("fmt", "json_expected"), [("auto", True), ("json", True), ("console", False)]
)
def test_format_choice_on_a_non_tty(fmt: str, json_expected: bool) -> None:
    text = io.StringIO()
    configure_logging(LogConfig(format=fmt), stream=text)
    structlog.get_logger().info("x")
    line = text.getvalue().strip()
    assert line.startswith("{") is json_expected


def test_console_renders_a_scrubbed_traceback() -> None:
    text = io.StringIO()
    configure_logging(LogConfig(format="console"), stream=text)
    hold("console-pw-1")
    try:
        raise KeyError("console-pw-1")
    except KeyError:
        structlog.get_logger().exception("failed")
    output = text.getvalue()
    assert "Traceback" in output and "KeyError" in output
    assert "console-pw-1" not in output


def test_reconfiguring_redirects_cached_loggers() -> None:
    log = structlog.get_logger("cached")
    first = start()
    log.info("one")
    second = start()
    log.info("two")
    assert [r["event"] for r in lines(first)] == ["one"]
    assert [r["event"] for r in lines(second)] == ["two"]


def test_a_closed_stream_does_not_raise() -> None:
    out = start()
    out.close()
    structlog.get_logger().info("nowhere to go")  # must not raise
    assert out.closed
