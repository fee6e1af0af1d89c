"""``status`` against a real daemon (issue 12): up while it runs, with each request's phase;
down after SIGTERM ("stopped cleanly") and after kill -9 ("stopped unexpectedly", the running
request shown as interrupted, without a ticking ETA); ``status <id>`` and ``--json``."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from typing import Any

import pytest

from testkit.imap import ServerAccount
from testkit.proxy import FaultProxy
from tests.e2ehelp import Work, drop_csv, request_csv, run_cli, wait_until
from tests.test_daemon_signals import big_rows, copied_so_far

NewAccount = Callable[..., ServerAccount]


def _status(work: Work, *args: str) -> dict[str, Any]:
    out = run_cli("status", "--config", str(work.config), "--json", *args)
    assert out.returncode == 0, out.stderr
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


@pytest.mark.slow
def test_status_is_true_while_running_after_sigterm_and_after_kill_9(
    work: Work,
    new_source_account: NewAccount,
    new_dest_account: NewAccount,
    slow_source: FaultProxy,
) -> None:
    dest = new_dest_account()
    rows = big_rows(2, new_source_account, dest, slow_source)
    work.configure(imap={"fetch_batch": 5}, daemon={"max_jobs": 1})
    drop_csv(work.spool / "incoming", "st.csv", request_csv(rows))
    with work.daemon("first") as first:
        wait_until(lambda: copied_so_far(rows) >= 10 or None, 20, "10 copied", first)
        doc = wait_until(
            lambda: (
                (d := _status(work))["daemon"]["running"]
                and any(r["phase"] == "copying" for r in d["requests"])
                and d
            ),
            20,
            "a heartbeat and a copying phase",
            first,
        )
        states = sorted(r["state"] for r in doc["requests"])
        assert states == ["queued", "running"], doc
        running = next(r for r in doc["requests"] if r["state"] == "running")
        assert running["detail"] in ("INBOX", "Sent Items")
        one = _status(work, running["id"])["request"]
        assert one["id"] == running["id"] and one["folders"], one
        text = run_cli("status", "--config", str(work.config)).stdout
        assert text.startswith("daemon: running") and all(len(x) <= 80 for x in text.splitlines())
        first.send(signal.SIGTERM)
        assert first.wait(20) == 0
    down = _status(work)
    assert down["daemon"]["running"] is False and "stopped cleanly" in down["daemon"]["summary"]
    assert {r["state"] for r in down["requests"]} == {"queued"}  # requeued, resumed next start

    with work.daemon("second") as second:
        wait_until(
            lambda: any(r["state"] == "running" for r in _status(work)["requests"]) or None,
            20,
            "running again",
            second,
        )
        second.kill()
    killed = _status(work)
    assert killed["daemon"]["running"] is False
    assert "stopped unexpectedly" in killed["daemon"]["summary"]
    interrupted = [r for r in killed["requests"] if r["state"] == "interrupted"]
    assert len(interrupted) == 1 and interrupted[0]["eta_seconds"] is None, killed
    assert "interrupted" in run_cli("status", "--config", str(work.config)).stdout
