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
from tests.test_daemon_signals import BIG, big_rows, copied_so_far

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


@pytest.mark.slow
def test_the_total_is_known_before_copying_and_never_changes(
    work: Work,
    new_source_account: NewAccount,
    new_dest_account: NewAccount,
    slow_source: FaultProxy,
) -> None:
    """Issue 12: every in-range message is counted per folder right after listing, so from the
    first copied batch on ``status --json`` shows the request's final in-range count as its
    total, unchanged until the end (a steady ETA); a re-run shows them as already present."""
    dest = new_dest_account()
    rows = big_rows(2, new_source_account, dest, slow_source)
    work.configure(imap={"fetch_batch": 5}, daemon={"max_jobs": 1})
    drop_csv(work.spool / "incoming", "tot.csv", request_csv(rows))
    seen: dict[str, list[tuple[int, int, int]]] = {}

    def sample() -> bool:
        out = run_cli("status", "--config", str(work.config), "--json")
        if out.returncode != 0:  # the daemon has not created its state store yet
            return False
        doc = json.loads(out.stdout)
        for r in doc["requests"]:
            if r["state"] == "running" and r["phase"] == "copying":
                m = r["messages"]
                seen.setdefault(r["id"], []).append((m["done"], m["total"], m["already_present"]))
        return all(r["state"] == "succeeded" for r in doc["requests"]) and len(doc["requests"]) == 2

    with work.daemon("copy") as daemon:
        wait_until(sample, 90, "both requests copied", daemon, interval=0.0)
    final = {r["id"]: r["messages"] for r in _status(work)["requests"]}
    assert set(final) == set(seen), (final, seen)  # each request was seen while it copied
    for rid, samples in seen.items():
        in_range = final[rid]["in_range"]
        assert in_range == sum(BIG.values()) and final[rid]["copied"] == in_range
        assert {total for _, total, _ in samples} == {in_range}, samples  # never grew
        dones = [done for done, _, _ in samples]
        assert dones == sorted(dones) and dones[0] < in_range, samples
        assert {present for _, _, present in samples} == {0}

    drop_csv(work.spool / "incoming", "again.csv", request_csv(rows))
    with work.daemon("again") as daemon:
        wait_until(
            lambda: (
                [r["state"] for r in _status(work, "--csv", "again.csv")["requests"]]
                == ["succeeded"] * 2
            ),
            60,
            "the re-run finished",
            daemon,
        )
    again = _status(work, "--csv", "again.csv")["requests"]
    assert len(again) == 2
    for r in again:
        assert r["messages"]["already_present"] == sum(BIG.values()), r
        assert r["messages"]["copied"] == 0, r
    text = run_cli("status", "--config", str(work.config), "--csv", "again.csv").stdout
    assert f"{sum(BIG.values())} already there" in text, text
