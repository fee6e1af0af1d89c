"""``cancel`` and ``retry`` against a real daemon (issue 12).

cancel: a CSV of two requests, one copying and one queued, is cancelled by name: the running one
stops at a batch boundary and ends ``cancelled`` with the messages it stored (each complete and
once), the queued one ends ``cancelled`` at once, and the CSV is finished. retry: of a batch with
one failed row, only that row is dropped again (the administrator gives the CSV again, because
passwords are erased when a request ends); the succeeded row is neither copied nor mailed again.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from testkit.imap import ServerAccount
from testkit.proxy import FaultProxy
from testkit.snapshot import snapshot_mailbox
from tests.e2ehelp import (
    Row,
    Work,
    archive_problems,
    drop_csv,
    load_mailbox,
    mailbox_specs,
    request_csv,
    results,
    run_cli,
    summary,
    wait_until,
)
from tests.test_daemon_signals import BIG, big_rows, copied_so_far

NewAccount = Callable[..., ServerAccount]


def account_mails(work: Work) -> list[str]:
    """Per-account report mails written (pending or sent), batch reports left out."""
    mails = (work.spool / "outbox").rglob("*.eml")
    return [p.name for p in mails if not p.name.endswith(".batch.eml")]


@pytest.mark.slow
def test_cancel_a_csv_stops_the_running_request_at_a_batch_and_the_queued_one_at_once(
    work: Work,
    new_source_account: NewAccount,
    new_dest_account: NewAccount,
    slow_source: FaultProxy,
) -> None:
    dest = new_dest_account()
    rows = big_rows(2, new_source_account, dest, slow_source)
    work.configure(imap={"fetch_batch": 5}, daemon={"max_jobs": 1})
    drop_csv(work.spool / "incoming", "cancel.csv", request_csv(rows))
    with work.daemon("d") as daemon:
        wait_until(lambda: copied_so_far(rows) >= 10 or None, 20, "10 copied", daemon)
        out = run_cli("cancel", "--config", str(work.config), "cancel.csv")
        assert out.returncode == 0, out.stderr
        assert "cancel requested for 2 request(s)" in out.stdout
        wait_until(lambda: summary(work.spool, "cancel.csv"), 20, "the CSV finished", daemon)
    found = results(work.spool)
    assert sorted(d["status"] for d in found.values()) == ["cancelled", "cancelled"]
    copied = {d["csv"]["row"]: d["totals"]["copied"] for d in found.values()}
    total = sum(BIG.values())
    assert 0 < copied[2] < total and copied[3] == 0, copied
    # What was stored is whole and once: each stored message is one of the source's.
    for row in rows:
        src = snapshot_mailbox(row.source.server, row.source.user)
        dst = snapshot_mailbox(row.dest.server, row.dest.user)
        problems = archive_problems(src, dst, row.folder)
        # Only missing messages (the cancelled rest), never an extra, duplicated or cut one.
        assert all(p.endswith(", 0 extra or altered)") for p in problems), problems
    assert summary(work.spool, "cancel.csv")["counts"] == {"cancelled": 2}  # type: ignore[index]
    again = run_cli("cancel", "--config", str(work.config), "cancel.csv")
    assert again.returncode == 0 and "nothing to cancel" in again.stdout
    unknown = run_cli("cancel", "--config", str(work.config), "nope.csv")
    assert unknown.returncode == 2 and "no request and no CSV named 'nope.csv'" in unknown.stderr


def test_retry_runs_only_the_rows_that_did_not_succeed(
    work: Work,
    new_source_account: NewAccount,
    new_dest_account: NewAccount,
) -> None:
    dest = new_dest_account()
    good, bad = new_source_account("good pw"), new_source_account("right pw")
    for acct in (good, bad):
        load_mailbox(acct.server, acct.user, mailbox_specs(acct.user, {"INBOX": 3}))
    work.configure()
    first = [Row(good, dest, "Good"), Row(bad, dest, "Bad", source_password="wrong pw")]
    csv_path = work.root / "batch.csv"
    csv_path.write_bytes(request_csv(first))
    drop_csv(work.spool / "incoming", "batch.csv", csv_path.read_bytes())
    with work.daemon("one", once=True) as one:
        assert one.wait(60) == 1
    assert sorted(d["status"] for d in results(work.spool).values()) == ["failed", "succeeded"]
    mails_before = len(account_mails(work))

    # The administrator fixes the password in the CSV and retries the batch.
    csv_path.write_bytes(request_csv([Row(good, dest, "Good"), Row(bad, dest, "Bad")]))
    out = run_cli("retry", "--config", str(work.config), str(csv_path))
    assert out.returncode == 0, out.stderr
    assert "retrying 1 row(s)" in out.stdout and "1 succeeded, left out" in out.stdout
    with work.daemon("two", once=True) as two:
        assert two.wait(60) == 0
    docs = list(results(work.spool).values())
    assert len(docs) == 3  # one new request: the good row was not run again
    retried = [d for d in docs if d["csv"]["name"] == "batch-retry.csv"]
    assert [(d["source"]["userid"], d["status"]) for d in retried] == [(bad.user, "succeeded")]
    assert len(account_mails(work)) == mails_before + 1  # and one more batch report:
    assert len(list((work.spool / "outbox").rglob("*.batch.eml"))) == 2
    status = json.loads(run_cli("status", "--config", str(work.config), "--json").stdout)
    assert sorted(r["state"] for r in status["requests"]) == ["succeeded", "succeeded"]
    nothing = run_cli("retry", "--config", str(work.config), str(csv_path))
    assert nothing.returncode == 0 and "nothing to retry" in nothing.stdout
