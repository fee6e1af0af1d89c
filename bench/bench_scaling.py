"""Benchmark of issue 14: how cost grows with a folder's size. Not a test.

Run ``python -m bench.bench_scaling`` (one folder of 10,000, 50,000 and 200,000 messages of
~2 KB, 3 runs; see ``bench/README.md``) or ``--sizes 2000,10000 --runs 1`` while developing.
For every run and folder size: the reference copies the folder (in the first
``--reference-runs`` runs only, default 1), then the daemon does, then the daemon copies it
again into the same destination (the delta pass: nothing to copy); every
destination is verified message by message (``bench_verify``). Prints the medians, the targets
and writes ``bench/results/scaling.json`` and the chart ``bench/results/scaling.svg`` (message
rate and peak RSS against folder size, daemon and reference; ``bench_chart``).
Exit status: 0 every target passed, 1 some target failed, 2 the benchmark could not set up.

Targets (issue 14): the daemon's message rate within 20 % across the series (slowest median
>= 0.8 x fastest), the delta pass over the largest folder <= 10 s, the daemon's peak RSS
<= 200 MB in every run (copy and delta pass).

Owns: the series' order and its judgement. Must not: measure by itself (``bench_runs``).
"""

from __future__ import annotations

import argparse
import dataclasses
import imaplib
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.bench_chart import Series, scaling_chart
from bench.bench_corpus import LARGE_FOLDER, load_large_folder
from bench.bench_env import SOURCE_PASSWORD, BenchEnv, Mailbox, Sizes
from bench.bench_probe import first_body, without_wait
from bench.bench_report import RSS_LIMIT_MB, Figures, Target, figures, target_lines
from bench.bench_runs import Sample, prepare_daemon, run_daemon, run_reference
from bench.bench_verify import verify_source

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (10_000, 50_000, 200_000)
RATE_SPREAD = 0.8  # slowest median message rate / fastest, at least
DELTA_LIMIT = 10.0  # seconds for the delta pass over the largest folder


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.bench_scaling", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--sizes",
        default=",".join(str(s) for s in SIZES),
        help="comma-separated folder sizes (messages)",
    )
    p.add_argument("--runs", type=int, default=3, help="runs of every size (medians)")
    p.add_argument(
        "--reference-runs",
        type=int,
        default=1,
        help="runs (the first ones) in which the reference copies too; default 1: its one "
        "APPEND per message into one folder of 200,000 takes ~9 minutes (see bench/README.md)",
    )
    p.add_argument("--json", type=Path, default=RESULTS / "scaling.json", help="results file")
    p.add_argument("--chart", type=Path, default=RESULTS / "scaling.svg", help="SVG chart")
    args = p.parse_args(argv)
    args.sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    if not args.sizes or min(args.sizes) < 1 or args.runs < 1:
        p.error("--sizes needs positive numbers and --runs must be >= 1")
    return args


def scenario(size: int) -> str:
    return f"folder-{size}"


class SeriesRunner:
    """The runs of the series, in order; ``samples`` collects every measured copy,
    ``first_body`` the source's time to a first body per size (``bench_probe``, once per run,
    after that size's copies)."""

    def __init__(self, env: BenchEnv) -> None:
        self.env = env
        self.samples: list[Sample] = []
        self.first_body: dict[int, list[float]] = {}

    def _note(self, s: Sample) -> None:
        self.samples.append(s)
        verdict = "verified" if s.ok else f"FAILED: {'; '.join(s.problems[:3])}"
        rate = s.messages / s.wall if s.wall else 0.0
        print(
            f"  run {s.run} {s.scenario:<14} {s.copier:<9} {s.wall:8.2f} s {rate:8,.0f} msg/s "
            f"CPU {s.cpu:6.1f} s  RSS {s.rss_mb:5.0f} MB  {verdict}",
            flush=True,
        )

    def run(self, run: int, size: int, mailbox: Mailbox, *, reference: bool) -> None:
        env = self.env
        at = env.addresses(False)
        name = scenario(size)
        workdir = env.root / "runs" / f"{name}-{run}"
        if reference:
            user = env.new_dest_user()
            ref = Sample(name, "reference", run)
            run_reference(env, ref, [(mailbox, user)], at, workdir / "reference")
            self._note(ref)
            env.drop_dest_user(user)
        user = env.new_dest_user()
        pairs = [(mailbox, user)]
        config = prepare_daemon(workdir / "daemon", env, at)
        daemon = Sample(name, "daemon", run)
        run_daemon(env, daemon, pairs, at, config)
        self._note(daemon)
        delta = Sample(name, "delta", run)
        run_daemon(env, delta, pairs, at, config, delta=True)
        self._note(delta)
        env.drop_dest_user(user)
        try:
            waited = first_body(env, at[0], mailbox.user, LARGE_FOLDER)
        except (OSError, RuntimeError, imaplib.IMAP4.error) as exc:
            print(f"  run {run} {name:<14} source's first body: not measured ({exc})", flush=True)
            return
        self.first_body.setdefault(size, []).append(waited)
        print(f"  run {run} {name:<14} source's first body in a new session: {waited:.2f} s",
              flush=True)  # fmt: skip


def judge(sizes: list[int], summary: dict[tuple[int, str], Figures]) -> list[Target]:
    """The issue's three targets; a target with a failed run has no value and fails."""
    out: list[Target] = []
    daemon = [summary[(n, "daemon")] for n in sizes]
    complete = all(f.runs and f.ok_runs == f.runs for f in daemon)
    rates = [f.msg_s for f in daemon if f.msg_s is not None]
    spread = min(rates) / max(rates) if complete and rates and max(rates) else None
    out.append(
        Target("series", f"daemon msg/s slowest / fastest >= {RATE_SPREAD}", spread,
               spread is not None and spread >= RATE_SPREAD)
    )  # fmt: skip
    last = summary[(sizes[-1], "delta")]
    wall = last.wall if last.runs and last.ok_runs == last.runs else None
    out.append(
        Target(scenario(sizes[-1]), f"delta pass wall time <= {DELTA_LIMIT:.0f} s", wall,
               wall is not None and wall <= DELTA_LIMIT, " s")
    )  # fmt: skip
    runs = [summary[(n, c)] for n in sizes for c in ("daemon", "delta")]
    peaks = [f.max_rss_mb for f in runs if f.max_rss_mb is not None]
    ok = all(f.runs and f.ok_runs == f.runs for f in runs)
    rss = max(peaks) if ok and peaks else None
    out.append(
        Target("series", f"daemon peak RSS <= {RSS_LIMIT_MB:.0f} MB (copy and delta)", rss,
               rss is not None and rss <= RSS_LIMIT_MB, " MB")
    )  # fmt: skip
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def paired_ratio(samples: list[Sample], size: int) -> float | None:
    """Median over the runs in which both copied and verified of daemon msg/s / reference msg/s
    (each ratio from one run, so a drift of the machine between runs does not enter it)."""
    runs: dict[int, dict[str, Sample]] = {}
    for s in samples:
        if s.scenario == scenario(size) and s.ok and s.wall > 0:
            runs.setdefault(s.run, {})[s.copier] = s
    ratios = [r["reference"].wall / r["daemon"].wall for r in runs.values() if len(r) >= 2
              and "reference" in r and "daemon" in r]  # fmt: skip
    return statistics.median(ratios) if ratios else None


def table(sizes: list[int], summary: dict[tuple[int, str], Figures], samples: list[Sample]) -> str:
    head = (
        "folder size", "ok", "ref msg/s", "daemon msg/s", "ratio", "ref CPU s", "daemon CPU s",
        "ref RSS", "daemon RSS", "delta s", "delta RSS",
    )  # fmt: skip
    rows = [head]
    for n in sizes:
        ref, dmn, dlt = (summary[(n, c)] for c in ("reference", "daemon", "delta"))
        ok = f"{ref.ok_runs + dmn.ok_runs + dlt.ok_runs}/{ref.runs + dmn.runs + dlt.runs}"
        ratio = paired_ratio(samples, n)
        rows.append((
            f"{n:,}", ok, _fmt(ref.msg_s, ",.0f"), _fmt(dmn.msg_s, ",.0f"),
            _fmt(ratio, ".2f") + ("x" if ratio else ""), _fmt(ref.cpu, ".1f"),
            _fmt(dmn.cpu, ".1f"), _fmt(ref.max_rss_mb, ".0f"), _fmt(dmn.max_rss_mb, ".0f"),
            _fmt(dlt.wall, ".2f"), _fmt(dlt.max_rss_mb, ".0f"),
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def wait_lines(
    sizes: list[int], waits: dict[int, float], bound: tuple[float, dict[int, float]] | None
) -> str:
    """What the source alone makes of the rate spread (not a target: it explains one)."""
    lines = ["\nThe source's time to a first body in a new session (LOGIN, EXAMINE, FETCH 1 "
             "BODY.PEEK[]; median of the runs), which every copier waits before its first "
             "APPEND:"]  # fmt: skip
    lines += [f"  {n:>9,} messages: {_fmt(waits.get(n), '.2f')} s" for n in sizes]
    if bound is None:
        lines.append("  without it: - (needs the wait and the daemon's median on every size)")
        return "\n".join(lines)
    spread, rates = bound
    lines.append(
        "  the daemon's msg/s with that wait taken out of its median wall time: "
        + ", ".join(f"{rates[n]:,.0f}" for n in sizes if n in rates)
        + f"; slowest / fastest {spread:.2f}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    samples: list[Sample] = []
    with BenchEnv(Sizes.from_scale(0.001)) as env:
        try:
            env.start(single=False, many=False)
            mailboxes: dict[int, Mailbox] = {}
            for n in args.sizes:
                started = time.monotonic()
                user = env.source.new_user(SOURCE_PASSWORD, "big")
                expected = load_large_folder(env.source, user, n, seed=14)
                problems = verify_source(env.source, user, expected)
                if problems:
                    raise RuntimeError(f"folder of {n} messages not loaded: {problems[:3]}")
                mailboxes[n] = Mailbox(user, expected)
                print(f"loaded one folder of {n:,} messages, {expected.bytes / 1e6:.0f} MB "
                      f"({time.monotonic() - started:.0f} s)", flush=True)  # fmt: skip
        except (OSError, RuntimeError) as exc:
            print(f"bench: cannot set up the servers and corpus: {exc}", file=sys.stderr)
            return 2
        series = SeriesRunner(env)
        for run in range(1, args.runs + 1):
            print(f"run {run} of {args.runs}", flush=True)
            for n in args.sizes:
                series.run(run, n, mailboxes[n], reference=run <= args.reference_runs)
        samples = series.samples
    summary = {
        (n, c): figures([s for s in samples if s.scenario == scenario(n) and s.copier == c])
        for n in args.sizes
        for c in ("reference", "daemon", "delta")
    }
    print(
        "\nOne folder of small messages (~2 KB): medians over the verified runs (RSS MB: "
        "largest run; ratio: daemon / reference message rate in the same run)"
    )
    print(table(args.sizes, summary, samples))
    found = judge(args.sizes, summary)
    print("\nTargets (issue 14):")
    print(target_lines(found))
    waits = {n: statistics.median(v) for n, v in series.first_body.items() if v}
    walls = {n: summary[(n, "daemon")].wall for n in args.sizes}
    bound = without_wait(waits, walls) if set(waits) == set(args.sizes) else None
    print(wait_lines(args.sizes, waits, bound))
    lines = [
        Series("daemon", [summary[(n, "daemon")].msg_s for n in args.sizes],
               [summary[(n, "daemon")].max_rss_mb for n in args.sizes]),
        Series("reference", [summary[(n, "reference")].msg_s for n in args.sizes],
               [summary[(n, "reference")].max_rss_mb for n in args.sizes]),
        Series("daemon delta pass", None, [summary[(n, "delta")].max_rss_mb for n in args.sizes]),
    ]  # fmt: skip
    args.chart.parent.mkdir(parents=True, exist_ok=True)
    args.chart.write_text(scaling_chart(args.sizes, lines, rss_limit=RSS_LIMIT_MB))
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sizes": args.sizes,
        "runs": args.runs,
        "summary": [
            {"size": n, "copier": c, **dataclasses.asdict(f)} for (n, c), f in summary.items()
        ],
        "targets": [dataclasses.asdict(t) for t in found],
        "first_body_s": {str(n): v for n, v in series.first_body.items()},
        "spread_without_wait": None if bound is None else bound[0],
        "samples": [dataclasses.asdict(s) for s in samples],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nresults: {args.json}\nchart: {args.chart}")
    return 0 if all(t.passed for t in found) else 1


if __name__ == "__main__":
    sys.exit(main())
