"""Judging the samples: medians, ratios to the reference, the issue's targets, table and JSON.

Owns: the figures (medians over the verified runs of each scenario and copier), the targets of
issue 6 and whether each passed, and the two outputs (a text table, ``results/latest.json``).
Pure apart from writing the JSON file. Must not: run anything.

A target passes only if every run of both copiers in its scenario ran and verified exactly;
peak RSS is judged on the largest run, not the median ("in every scenario").
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
    "multi": "many mailboxes (daemon max_jobs=8; reference one after another)",
}
RSS_LIMIT_MB = 200.0


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
    return list(SCENARIOS).index(key[0]), key[1] != "reference"


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


def targets(summary: dict[tuple[str, str], Figures]) -> list[Target]:
    """The issue's targets for the scenarios that were run."""
    out: list[Target] = []
    scenarios = {s for s, _ in summary}
    for scenario, limit in (("single", 0.8), ("proxy", 0.7)):
        if scenario in scenarios:
            r = _ratio(summary, scenario, lambda f: f.mb_s)
            text = f"daemon MB/s >= {limit}x reference"
            out.append(Target(scenario, text, r, r is not None and r >= limit))
    if "multi" in scenarios:
        r = _ratio(summary, "multi", lambda f: f.wall)
        text = "daemon total time <= 1.5x reference one after another"
        out.append(Target("multi", text, r, r is not None and r <= 1.5))
    if "delta" in scenarios:
        f = summary[("delta", "daemon")]
        wall = f.wall if _all_ok(summary, "delta", ("daemon",)) else None
        out.append(Target("delta", "daemon wall time < 5 s", wall, wall is not None and wall < 5))
    for scenario in sorted(scenarios, key=list(SCENARIOS).index):
        d = summary.get((scenario, "daemon"))
        if d is not None:
            rss = d.max_rss_mb if d.runs and d.ok_runs == d.runs else None
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
    for (scenario, copier), f in summary.items():
        ratio = None
        if copier == "daemon" and scenario in ("single", "proxy"):
            ratio = _ratio(summary, scenario, lambda x: x.mb_s)
        elif copier == "daemon" and scenario == "multi":
            ratio = _ratio(summary, scenario, lambda x: x.wall)
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
        f"  {'PASS' if t.passed else 'FAIL'}  {t.scenario:<7} {t.text}: {_fmt(t.value, 2)}"
        for t in found
    )


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
        "targets": [dataclasses.asdict(t) for t in found],
        "samples": [dataclasses.asdict(s) for s in samples],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
