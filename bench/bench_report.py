"""Judging the samples: medians, ratios to the reference, the issue's targets, table and JSON.

Owns: the figures (medians over the verified runs of each scenario and copier), the targets of
issue 6 and whether each passed, and the two outputs (a text table, ``results/latest.json``).
Pure apart from writing the JSON file. Must not: run anything.

A target passes only if every run of both copiers in its scenario ran and verified exactly;
peak RSS is judged on the largest run, not the median ("in every scenario"). In the read-back
scenarios the two copiers are the daemon with its default ``read_back = true`` ("daemon") and
with ``read_back = false`` ("daemon-rb-off"); the cost is their ratio of median wall times.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.bench_runs import Sample

SCENARIOS: dict[str, str] = {
    "single": "one mailbox",
    "delta": "delta pass: re-run of the finished mailbox",
    "proxy": "one mailbox, +25 ms each way",
    "small": "small mailbox (3,000 messages, 14 folders), loopback",
    "small-wan25": "small mailbox (3,000 messages, 14 folders), +25 ms each way",
    "small-wan50": "small mailbox (3,000 messages, 14 folders), +50 ms each way",
    "multi": "many mailboxes (daemon max_jobs=8; reference one after another)",
    "multi-wan25": "many mailboxes, +25 ms each way (daemon max_jobs=8; reference one by one)",
    "readback": "one mailbox, daemon with read_back off and on",
    "readback-proxy": "one mailbox, +25 ms each way, daemon with read_back off and on",
}
# The read-back scenarios: the daemon alone, twice per run (off and on, in alternating order).
READBACK_SCENARIOS = ("readback", "readback-proxy")
RB_OFF = "daemon-rb-off"  # the daemon with [imap] read_back = false
COPIERS = ("reference", RB_OFF, "daemon")  # table order
RSS_LIMIT_MB = 200.0
# Daemon MB/s at least this times the reference's (issue 6; the small-wan ones: issue 14).
MB_S_TARGETS = {"single": 0.8, "proxy": 0.7, "small-wan25": 0.8, "small-wan50": 0.7}
# Daemon wall time at most this times the reference's (which copies one mailbox after another).
WALL_TARGETS = {"multi": 1.5, "multi-wan25": 1.2}
READBACK_LIMIT_PCT = 5.0
CPU_LIMIT = 1.3  # daemon CPU seconds per GB / the reference's (issue 14)


@dataclass(frozen=True, slots=True)
class Figures:
    runs: int
    ok_runs: int
    wall: float | None  # medians over the verified runs
    cpu: float | None
    rss_mb: float | None
    max_rss_mb: float | None  # largest over all runs that ran
    msg_s: float | None
    mb_s: float | None


@dataclass(frozen=True, slots=True)
class Target:
    scenario: str
    text: str
    value: float | None  # None: not measured (or a run failed)
    passed: bool
    unit: str = ""  # printed after the value


@dataclass(frozen=True, slots=True)
class ReadBackCost:
    """The daemon with read_back off and on in one read-back scenario. ``cost_pct`` is the
    judged figure: (median wall on / median wall off - 1) x 100; ``paired_pct`` the same per
    run (both variants ran back to back in it), for seeing how much the runs scatter;
    ``cpu_cost_pct`` the same for the daemon's CPU seconds (not judged: the copy shares two
    cores with both servers, so CPU is what the daemon adds, wall what the user waits)."""

    scenario: str
    wall_off: float | None
    wall_on: float | None
    mb_s_off: float | None
    mb_s_on: float | None
    cost_pct: float | None  # None: a run of either variant failed, or none ran
    paired_pct: list[float]  # per run, in run order (runs where both verified)
    cpu_off: float | None = None
    cpu_on: float | None = None
    cpu_cost_pct: float | None = None


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def figures(samples: list[Sample]) -> Figures:
    ok = [s for s in samples if s.ok]
    ran = [s.rss_mb for s in samples if s.wall > 0]
    return Figures(
        runs=len(samples),
        ok_runs=len(ok),
        wall=_median([s.wall for s in ok]),
        cpu=_median([s.cpu for s in ok]),
        rss_mb=_median([s.rss_mb for s in ok]),
        max_rss_mb=max(ran) if ran else None,
        msg_s=_median([s.messages / s.wall for s in ok]),
        mb_s=_median([s.bytes / 1e6 / s.wall for s in ok]),
    )


def summarize(samples: list[Sample]) -> dict[tuple[str, str], Figures]:
    keys = sorted({(s.scenario, s.copier) for s in samples}, key=_order)
    return {k: figures([s for s in samples if (s.scenario, s.copier) == k]) for k in keys}


def _order(key: tuple[str, str]) -> tuple[int, int]:
    return list(SCENARIOS).index(key[0]), COPIERS.index(key[1])


def _all_ok(
    summary: dict[tuple[str, str], Figures], scenario: str, copiers: tuple[str, ...]
) -> bool:
    return all(
        (f := summary.get((scenario, c))) is not None and f.runs > 0 and f.ok_runs == f.runs
        for c in copiers
    )


def _ratio(
    summary: dict[tuple[str, str], Figures], scenario: str, pick: Callable[[Figures], float | None]
) -> float | None:
    ref, dmn = summary.get((scenario, "reference")), summary.get((scenario, "daemon"))
    if ref is None or dmn is None or not _all_ok(summary, scenario, ("reference", "daemon")):
        return None
    a, b = pick(dmn), pick(ref)
    return a / b if a is not None and b else None


def read_back_costs(
    samples: list[Sample], summary: dict[tuple[str, str], Figures]
) -> list[ReadBackCost]:
    """The read-back cost of every read-back scenario that was run."""
    out: list[ReadBackCost] = []
    for scenario in READBACK_SCENARIOS:
        off, on = summary.get((scenario, RB_OFF)), summary.get((scenario, "daemon"))
        if off is None and on is None:
            continue
        cost = cpu_cost = None
        if off and on and off.wall and on.wall and _all_ok(summary, scenario, (RB_OFF, "daemon")):
            cost = (on.wall / off.wall - 1) * 100
            cpu_cost = (on.cpu / off.cpu - 1) * 100 if on.cpu and off.cpu else None
        runs: dict[int, dict[str, float]] = {}
        for s in samples:
            if s.scenario == scenario and s.ok and s.wall > 0:
                runs.setdefault(s.run, {})[s.copier] = s.wall
        paired = [
            (r["daemon"] / r[RB_OFF] - 1) * 100
            for _, r in sorted(runs.items())
            if "daemon" in r and RB_OFF in r
        ]
        out.append(ReadBackCost(
            scenario, off.wall if off else None, on.wall if on else None,
            off.mb_s if off else None, on.mb_s if on else None, cost, paired,
            off.cpu if off else None, on.cpu if on else None, cpu_cost,
        ))  # fmt: skip
    return out


def targets(summary: dict[tuple[str, str], Figures], samples: list[Sample]) -> list[Target]:
    """The issue's targets for the scenarios that were run."""
    out: list[Target] = []
    scenarios = {s for s, _ in summary}
    for scenario, limit in MB_S_TARGETS.items():
        if scenario in scenarios:
            r = _ratio(summary, scenario, lambda f: f.mb_s)
            text = f"daemon MB/s >= {limit}x reference"
            out.append(Target(scenario, text, r, r is not None and r >= limit))
    if "single" in scenarios:  # both copy the same bytes: the CPU ratio is per gigabyte too
        r = _ratio(summary, "single", lambda f: f.cpu)
        text = f"daemon CPU per GB <= {CPU_LIMIT}x reference"
        out.append(Target("single", text, r, r is not None and r <= CPU_LIMIT, "x"))
    for scenario, limit in WALL_TARGETS.items():
        if scenario in scenarios:
            r = _ratio(summary, scenario, lambda f: f.wall)
            text = f"daemon total time <= {limit}x reference one after another"
            out.append(Target(scenario, text, r, r is not None and r <= limit))
    if "delta" in scenarios:
        f = summary[("delta", "daemon")]
        wall = f.wall if _all_ok(summary, "delta", ("daemon",)) else None
        out.append(Target("delta", "daemon wall time < 5 s", wall, wall is not None and wall < 5))
    for rb in read_back_costs(samples, summary):
        text = f"read-back cost <= {READBACK_LIMIT_PCT:.0f} % (daemon wall time on / off - 1)"
        ok = rb.cost_pct is not None and rb.cost_pct <= READBACK_LIMIT_PCT + 1e-9  # float noise
        out.append(Target(rb.scenario, text, rb.cost_pct, ok, " %"))
    for scenario in sorted(scenarios, key=list(SCENARIOS).index):
        daemons = [f for (s, c), f in summary.items() if s == scenario and c != "reference"]
        if daemons:
            ok = all(f.runs and f.ok_runs == f.runs for f in daemons)
            peaks = [f.max_rss_mb for f in daemons if f.max_rss_mb is not None]
            rss = max(peaks) if ok and peaks else None
            out.append(
                Target(scenario, f"daemon peak RSS <= {RSS_LIMIT_MB:.0f} MB", rss,
                       rss is not None and rss <= RSS_LIMIT_MB)
            )  # fmt: skip
    return out


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(samples: list[Sample], summary: dict[tuple[str, str], Figures]) -> str:
    head = ("scenario", "copier", "ok/runs", "wall s", "msg/s", "MB/s", "CPU s", "RSS MB", "ratio")
    rows: list[tuple[str, ...]] = [head]
    costs = {c.scenario: c.cost_pct for c in read_back_costs(samples, summary)}
    for (scenario, copier), f in summary.items():
        ratio = None
        if copier == "daemon" and scenario in MB_S_TARGETS:
            ratio = _ratio(summary, scenario, lambda x: x.mb_s)
        elif copier == "daemon" and scenario in WALL_TARGETS:
            ratio = _ratio(summary, scenario, lambda x: x.wall)
        elif copier == "daemon" and (cost := costs.get(scenario)) is not None:
            ratio = 1 + cost / 100  # read-back scenarios: wall time on / off
        some = next(s for s in samples if (s.scenario, s.copier) == (scenario, copier))
        label = f"{scenario} ({some.messages} msg, {some.bytes / 1e6:.0f} MB)"
        rows.append((
            label, copier, f"{f.ok_runs}/{f.runs}", _fmt(f.wall, 2), _fmt(f.msg_s, 0),
            _fmt(f.mb_s), _fmt(f.cpu), _fmt(f.max_rss_mb, 0),
            "" if ratio is None else f"{ratio:.2f}x",
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths, strict=True))) for r in rows]  # fmt: skip
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def target_lines(found: list[Target]) -> str:
    return "\n".join(
        f"  {'PASS' if t.passed else 'FAIL'}  {t.scenario:<14} {t.text}: "
        f"{_fmt(t.value, 2)}{t.unit if t.value is not None else ''}"
        for t in found
    )


def read_back_lines(costs: list[ReadBackCost]) -> str:
    """One line per read-back scenario: both medians and the cost."""
    out = []
    for c in costs:
        paired = ", ".join(f"{p:+.1f}" for p in c.paired_pct) or "-"
        if len(c.paired_pct) > 1:
            paired += f"; median {statistics.median(c.paired_pct):+.1f}"
        cpu = "-" if c.cpu_cost_pct is None else f"{c.cpu_cost_pct:+.1f} %"
        out.append(
            f"  {c.scenario:<14} off {_fmt(c.wall_off, 2)} s ({_fmt(c.mb_s_off)} MB/s), "
            f"on {_fmt(c.wall_on, 2)} s ({_fmt(c.mb_s_on)} MB/s): cost "
            f"{'-' if c.cost_pct is None else f'{c.cost_pct:+.1f} %'} (per run: {paired} %); "
            f"daemon CPU {_fmt(c.cpu_off, 2)} -> {_fmt(c.cpu_on, 2)} s ({cpu})"
        )
    return "\n".join(out)


def problem_lines(samples: list[Sample]) -> str:
    out = []
    for s in samples:
        for p in s.problems[:10]:
            out.append(f"  {s.scenario} run {s.run} {s.copier}: {p}")
        if len(s.problems) > 10:
            out.append(f"  ... {len(s.problems) - 10} more")
    return "\n".join(out)


def write_json(
    path: Path, samples: list[Sample], found: list[Target], meta: dict[str, Any]
) -> None:
    summary = summarize(samples)
    costs = read_back_costs(samples, summary)
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        **meta,
        "summary": [
            {"scenario": s, "copier": c, **dataclasses.asdict(f)} for (s, c), f in summary.items()
        ],
        "read_back": [dataclasses.asdict(c) for c in costs],
        "targets": [dataclasses.asdict(t) for t in found],
        "samples": [dataclasses.asdict(s) for s in samples],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
