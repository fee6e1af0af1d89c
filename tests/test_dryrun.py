"""The dry run's arithmetic and rendering (pure); the run against servers is in test_preflight."""

from __future__ import annotations

import pytest

from legacyflo_daemon.cli import dryrun
from legacyflo_daemon.cli import main as cli
from legacyflo_daemon.cli.dryrun import FolderSize, Survey
from legacyflo_daemon.report.mail import human_size


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (4_560_000, "4.6 MB"),
        (2 * 10**12, "2000.0 GB"),
    ],
)
def test_human_size(n: int, text: str) -> None:
    assert human_size(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "under a minute"),
        (59, "under a minute"),
        (60, "about 1 min"),
        (3600, "about 1 h"),
        (3600 * 3 + 20 * 60, "about 3 h 20 min"),
        (86400 * 2 + 3600 * 4, "about 2 d 4 h"),
    ],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert dryrun.human_duration(seconds) == text


def test_estimate_is_the_largest_account_or_the_total_over_max_jobs() -> None:
    mb = 10**6
    # 5 MB/s: one 100 MB account alone takes 20 s whatever max_jobs is.
    assert dryrun.estimate_seconds([100 * mb], 5.0, 4) == 20
    # Four 100 MB accounts, 4 at once: 20 s; 2 at once: 40 s.
    assert dryrun.estimate_seconds([100 * mb] * 4, 5.0, 4) == 20
    assert dryrun.estimate_seconds([100 * mb] * 4, 5.0, 2) == 40
    # One big account dominates small ones running beside it.
    assert dryrun.estimate_seconds([1000 * mb, mb, mb], 5.0, 3) == 200
    assert dryrun.estimate_seconds([], 5.0, 3) == 0


def test_the_default_rate_is_the_documented_constant() -> None:
    args = cli.build_parser().parse_args(["check", "x.csv"])
    assert args.rate == cli.DEFAULT_RATE == dryrun.ASSUMED_MB_PER_SECOND


@pytest.mark.parametrize("rate", ["0", "-1", "fast", "inf", "nan"])
def test_a_bad_rate_is_a_usage_error(rate: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "--sizes", "--rate", rate, "x.csv"]) == 2
    assert "--rate" in capsys.readouterr().err


def test_render_names_what_could_not_be_read_and_leaves_it_out_of_the_total() -> None:
    surveys = [
        Survey(
            2,
            "a@src",
            "a@dst",
            dest_top="INBOX.historical_data.D",
            folders=(
                FolderSize("INBOX", "Inbox", 3, 3_000_000),
                FolderSize("Broken", "Broken", error="EXAMINE 'Broken': NO no such mailbox"),
            ),
            skipped=(("Calendar", dryrun.EXCLUDED),),
        ),
        Survey(3, "b@src", "b@dst", error="listing folders: connection lost"),
    ]
    text = dryrun.render(surveys, 1.0, 4)
    lines = text.splitlines()
    assert "          3    3.0 MB  INBOX → Inbox" in lines
    assert "          ?         ?  Broken: NOT READ: EXAMINE 'Broken': NO no such mailbox" in lines
    assert "  total: 3 message(s), 3.0 MB in 2 folder(s); under a minute at 1 MB/s" in lines
    assert "  NOT SURVEYED: listing folders: connection lost" in lines
    assert "Dry run total: 1 account(s), 3 message(s), 3.0 MB" in lines
    assert "Not surveyed: 1 account(s), 1 folder(s) (see above)" in lines
    assert all(len(line) <= dryrun.WIDTH for line in lines)
