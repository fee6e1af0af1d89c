"""Benchmark of issue 6: the daemon against a raw pipelined reference copier. Not a test.

Run ``python -m bench.bench_copy`` (full size: ~1 GB mailbox, 50 mailboxes, 3 runs; see
``bench/README.md``) or ``--quick`` (2,000 messages / ~100 MB, 10 mailboxes) while developing.
Builds the corpus into a private Dovecot source, then for every run and scenario copies it with
the reference and with ``legacyflo-daemon run --once`` into fresh destination users, verifies
each destination exactly, and prints the medians, the ratios and which targets pass. Results go
to ``bench/results/latest.json`` as well; logs of failed daemon runs to ``bench/results/logs/``.
Exit status: 0 every target passed, 1 some target failed, 2 the benchmark itself could not run.

Owns: the command line and the order of the runs (reference first, then the daemon, in every
scenario of every run, so that slow drifts of this machine hit both alike; in the read-back
scenarios the daemon with ``read_back = false`` and with the default ``true``, their order
swapped from one run to the next). Must not: measure or judge by itself (``bench_runs``
measures, ``bench_report`` judges).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.bench_env import LATENCY, BenchEnv, Mailbox, Sizes
from bench.bench_report import (
    RB_OFF,
    SCENARIOS,
    problem_lines,
    read_back_costs,
    read_back_lines,
    summarize,
    table,
    target_lines,
    targets,
    write_json,
)
from bench.bench_runs import Pair, Sample, prepare_daemon, run_daemon, run_reference

RESULTS = Path(__file__).resolve().parent / "results"
# The small mailbox (issue 14), on loopback and over a WAN: scenario -> seconds added each way.
SMALL_WAN = {"small": 0.0, "small-wan25": 0.025, "small-wan50": 0.050}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.bench_copy", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="development size: --scale 0.1 --mailboxes 10 (unless given)",
    )
    p.add_argument(
        "--scale",
        type=float,
        default=None,
        help="corpus size factor: 1 = 20,000 messages (~1 GB), 50 mailboxes of 400",
    )
    p.add_argument("--mailboxes", type=int, default=None, help="mailboxes of the multi scenario")
    p.add_argument(
        "--small",
        type=int,
        default=None,
        help="messages of the small mailbox of the small-wan scenarios (default 3,000)",
    )
    p.add_argument("--runs", type=int, default=3, help="runs of every scenario (medians)")
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)}",
    )
    p.add_argument(
        "--dest-storage",
        choices=("sdbox", "maildir"),
        default="sdbox",
        help="destination mail storage (maildir: the test servers' own; its APPEND "
        "slows down with the folder's size, see bench/README.md)",
    )
    p.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep the daemon's logs of every run (not only failed ones) in results/logs/",
    )
    p.add_argument("--json", type=Path, default=RESULTS / "latest.json", help="results file")
    args = p.parse_args(argv)  # fmt: skip
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown or args.runs < 1:
        p.error(f"unknown scenarios {sorted(unknown)}" if unknown else "--runs must be >= 1")
    if args.scale is None:
        args.scale = 0.1 if args.quick else 1.0
    if args.mailboxes is None and args.quick:
        args.mailboxes = 10
    return args


class Runner:
    def __init__(self, env: BenchEnv, scenarios: list[str], keep_logs: bool = False) -> None:
        self.env = env
        self.scenarios = scenarios
        self.keep_logs = keep_logs
        self.samples: list[Sample] = []

    def _note(self, s: Sample) -> None:
        self.samples.append(s)
        verdict = "verified" if s.ok else f"FAILED ({len(s.problems)} problems)"
        print(
            f"  run {s.run} {s.scenario:<14} {s.copier:<13} {s.wall:8.2f} s "
            f"{s.bytes / 1e6 / s.wall if s.wall else 0:7.1f} MB/s  CPU {s.cpu:6.1f} s  "
            f"RSS {s.rss_mb:5.0f} MB  {verdict}",
            flush=True,
        )
        if (self.keep_logs or not s.ok) and s.copier != "reference":
            self._keep_logs(s)

    def _keep_logs(self, s: Sample) -> None:
        src = (
            self.env.root / "runs" / f"{s.scenario if s.scenario != 'delta' else 'single'}-{s.run}"
        )
        suffix = "" if s.copier == "daemon" else f"-{s.copier}"
        target = RESULTS / "logs" / f"{s.scenario}-{s.run}{suffix}"
        if (src / s.copier).is_dir():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(src / s.copier, target, ignore=shutil.ignore_patterns("spool"))

    def _pairs(self, mailboxes: list[Mailbox]) -> list[Pair]:
        return [(m, self.env.new_dest_user()) for m in mailboxes]

    def _drop(self, pairs: list[Pair]) -> None:
        for _, user in pairs:
            self.env.drop_dest_user(user)

    def scenario(self, name: str, run: int, mailboxes: list[Mailbox], latency: float) -> None:
        """Reference, then daemon (then, for ``single``, the daemon's delta pass); ``latency``:
        seconds each way added by proxies in front of both servers (0: none)."""
        at = self.env.addresses(latency)
        workdir = self.env.root / "runs" / f"{name}-{run}"
        pairs = self._pairs(mailboxes)
        ref = Sample(name, "reference", run)
        run_reference(self.env, ref, pairs, at, workdir / "reference")
        self._note(ref)
        self._drop(pairs)
        pairs = self._pairs(mailboxes)
        daemon = Sample(name, "daemon", run)
        config = prepare_daemon(workdir / "daemon", self.env, at)
        run_daemon(self.env, daemon, pairs, at, config)
        self._note(daemon)
        if name == "single" and "delta" in self.scenarios:
            delta = Sample("delta", "daemon", run)
            run_daemon(self.env, delta, pairs, at, config, delta=True)
            self._note(delta)
        self._drop(pairs)

    def read_back(self, name: str, run: int, mailboxes: list[Mailbox], latency: float) -> None:
        """The daemon twice on the same data, ``read_back = false`` and the default ``true``:
        off first in odd runs, on first in even ones, so drifts of the machine hit both."""
        at = self.env.addresses(latency)
        workdir = self.env.root / "runs" / f"{name}-{run}"
        order = (False, True) if run % 2 else (True, False)
        for read_back in order:
            copier = "daemon" if read_back else RB_OFF
            pairs = self._pairs(mailboxes)
            sample = Sample(name, copier, run)
            config = prepare_daemon(workdir / copier, self.env, at, read_back=read_back)
            run_daemon(self.env, sample, pairs, at, config)
            self._note(sample)
            self._drop(pairs)

    def run(self, run: int) -> None:
        env = self.env
        if env.single is not None and {"single", "delta"} & set(self.scenarios):
            self.scenario("single", run, [env.single], latency=0.0)
        if env.single is not None and "proxy" in self.scenarios:
            self.scenario("proxy", run, [env.single], latency=LATENCY)
        if env.small is not None:
            for name, latency in SMALL_WAN.items():
                if name in self.scenarios:
                    self.scenario(name, run, [env.small], latency=latency)
        if env.many and "multi" in self.scenarios:
            self.scenario("multi", run, env.many, latency=0.0)
        if env.many and "multi-wan25" in self.scenarios:
            self.scenario("multi-wan25", run, env.many, latency=LATENCY)
        if env.single is not None and "readback" in self.scenarios:
            self.read_back("readback", run, [env.single], latency=0.0)
        if env.single is not None and "readback-proxy" in self.scenarios:
            self.read_back("readback-proxy", run, [env.single], latency=LATENCY)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = Sizes.from_scale(args.scale, args.mailboxes)
    if args.small is not None:
        sizes = dataclasses.replace(sizes, small=args.small)
    wanted = set(args.scenarios)
    with BenchEnv(sizes, dest_storage=args.dest_storage) as env:
        try:
            single = wanted & {"single", "delta", "proxy", "readback", "readback-proxy"}
            env.start(
                single=bool(single),
                many=bool(wanted & {"multi", "multi-wan25"}),
                small=bool(wanted & set(SMALL_WAN)),
            )
        except (OSError, RuntimeError) as exc:
            print(f"bench: cannot set up the servers and corpus: {exc}", file=sys.stderr)
            return 2
        runner = Runner(env, args.scenarios, keep_logs=args.keep_logs)
        for run in range(1, args.runs + 1):
            print(f"run {run} of {args.runs}", flush=True)
            runner.run(run)
    samples = runner.samples
    summary = summarize(samples)
    found = targets(summary, samples)
    print(
        "\nMedians over the verified runs (RSS: largest run; ratio: daemon / reference, "
        "read-back scenarios: read_back on / off)"
    )
    print(table(samples, summary))
    if costs := read_back_costs(samples, summary):
        print("\nRead-back cost (median wall time on / off - 1):")
        print(read_back_lines(costs))
    print("\nTargets (issues 6 and 14):")
    print(target_lines(found))
    if problems := problem_lines(samples):
        print("\nProblems:")
        print(problems)
    meta = {
        "sizes": dataclasses.asdict(sizes),
        "runs": args.runs,
        "scenarios": args.scenarios,
        "dest_storage": args.dest_storage,
    }
    write_json(args.json, samples, found, meta)
    print(f"\nresults: {args.json}")
    return 0 if found and all(t.passed for t in found) else 1


if __name__ == "__main__":
    sys.exit(main())
