"""Pool scheduling: limits are never exceeded, fairness across CSVs, no head-of-line blocking."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from legacyflo_daemon.config.schema import Config, DaemonConfig, HostConfig, ImapConfig
from legacyflo_daemon.daemon.pool import Limits, Pool, Slot, fair_order


def slot(src: str, dst: str = "archive", user: str = "u") -> Slot:
    return Slot(hosts=(src, dst), logins=(f"{user}@{src}", f"{user}@{dst}"))


@pytest.mark.parametrize(
    ("queued", "expected"),
    [
        ([], []),
        ([("a1", 1), ("a2", 1), ("b1", 2)], ["a1", "b1", "a2"]),
        ([("a1", 1), ("a2", 1), ("a3", 1), ("b1", 2), ("c1", 3), ("b2", 2)],
         ["a1", "b1", "c1", "a2", "b2", "a3"]),
    ],
)  # fmt: skip
def test_fair_order_round_robins_across_csvs(
    queued: list[tuple[str, int]], expected: list[str]
) -> None:
    assert fair_order(queued) == expected


def test_max_jobs_caps_running_requests() -> None:
    pool = Pool(Limits(max_jobs=2, max_per_host=10, max_per_login=10))
    started = pool.pick([(f"r{i}", slot(f"h{i}", user=f"u{i}")) for i in range(5)])
    assert started == ["r0", "r1"]
    pool.release("r0")
    assert pool.pick([("r2", slot("h2", user="u2"))]) == ["r2"]


def test_saturated_host_does_not_block_the_queue_behind_it() -> None:
    pool = Pool(Limits(max_jobs=10, max_per_host=10, max_per_login=10, host_caps={"ex": 1}))
    started = pool.pick([("a", slot("ex", user="a")), ("b", slot("ex", user="b")),
                         ("c", slot("other", user="c"))])  # fmt: skip
    assert started == ["a", "c"]


def test_login_cap_counts_one_admin_across_requests() -> None:
    pool = Pool(Limits(max_jobs=10, max_per_host=10, max_per_login=2))
    cands = [(f"r{i}", slot("ex", dst=f"d{i}", user="admin")) for i in range(4)]
    assert pool.pick(cands) == ["r0", "r1"]


def test_a_request_bigger_than_a_cap_runs_alone_instead_of_never() -> None:
    pool = Pool(Limits(max_jobs=4, max_per_host=1, max_per_login=4))
    same = Slot(hosts=("x", "x"), logins=("a@x", "b@x"))
    assert pool.pick([("r1", same), ("r2", same)]) == ["r1"]
    pool.release("r1")
    assert pool.pick([("r2", same)]) == ["r2"]


def test_random_workload_never_exceeds_limits() -> None:
    rnd = random.Random(7)
    limits = Limits(max_jobs=5, max_per_host=3, max_per_login=2, host_caps={"h0": 1})
    pool = Pool(limits)
    queue = [(f"r{i}", slot(f"h{rnd.randrange(4)}", f"d{rnd.randrange(2)}",
                            f"u{rnd.randrange(3)}")) for i in range(300)]  # fmt: skip
    done = 0
    while queue or pool.running:
        for rid in pool.pick(queue):
            queue = [q for q in queue if q[0] != rid]
        hosts: Counter[str] = Counter()
        logins: Counter[str] = Counter()
        for s in pool.running.values():
            hosts.update(s.hosts)
            logins.update(s.logins)
        assert len(pool.running) <= 5
        assert all(n <= limits.host_cap(h) for h, n in hosts.items())
        assert all(n <= 2 for n in logins.values())
        victim = rnd.choice(sorted(pool.running))
        pool.release(victim)
        done += 1
    assert done == 300


def test_extra_pairs_only_within_the_caps_and_counted_until_returned() -> None:
    pool = Pool(Limits(max_jobs=4, max_per_host=4, max_per_login=3))
    assert pool.pick([("a", slot("h", user="a"))]) == ["a"]
    assert pool.try_extend("a") and pool.try_extend("a")  # 3 pairs: login cap reached
    assert not pool.try_extend("a")
    assert not pool.try_extend("unknown")
    # 3 of the 4 connections to "h" are taken: a second request fits once, not twice.
    assert pool.pick([("b", slot("h", user="b")), ("c", slot("h", user="c"))]) == ["b"]
    assert not pool.try_extend("b")
    pool.shrink("a")
    assert pool.pick([("c", slot("h", user="c"))]) == ["c"]
    pool.release("a")
    assert pool.extra["a"] == 0


def test_a_hosts_caps_come_from_the_config_the_smaller_direction_winning() -> None:
    """One server, one cap: a host whose source and dest sub-tables differ is capped by the
    smaller value, for both directions; a host without caps takes the daemon's."""
    both = HostConfig(max_connections=5, max_per_login=3)
    cfg = Config(
        daemon=DaemonConfig(max_jobs=7, max_per_host=8),
        imap=ImapConfig(max_per_login=4),
        hosts={
            "plain": both,
            "split": HostConfig(
                max_connections=5,
                source=HostConfig(max_connections=2),
                dest=HostConfig(max_connections=6, max_per_login=1),
            ),
            "one-side": HostConfig(dest=HostConfig(max_per_login=2)),
            "none": HostConfig(port=143),
        },
    )
    limits = Limits.from_config(cfg)
    assert (limits.max_jobs, limits.max_per_host, limits.max_per_login) == (7, 8, 4)
    assert limits.host_caps == {"plain": 5, "split": 2}
    assert limits.login_caps == {"plain": 3, "split": 1, "one-side": 2}
    assert limits.host_cap("split") == 2 and limits.host_cap("none") == 8
    assert limits.login_cap("admin@one-side") == 2 and limits.login_cap("u@none") == 4


# -- a cluster: the caps hold for every node together -------------------------------------------


def test_what_other_nodes_hold_counts_against_every_cap() -> None:
    pool = Pool(Limits(max_jobs=10, max_per_host=3, max_per_login=2))
    # Another node runs two requests on h1 (one with an extra pair) as admin@h1.
    pool.elsewhere([(("h1", "archive"), ("admin@h1", "a@archive"), 2),
                    (("h1", "archive"), ("other@h1", "b@archive"), 1)])  # fmt: skip
    assert pool.pick([("r1", slot("h1", user="x"))]) == []  # h1: 3 of 3 elsewhere
    assert pool.pick([("r2", slot("h2", user="admin"))]) == []  # archive: 3 of 3 elsewhere
    assert pool.pick([("r2", slot("h2", "vault", user="admin"))]) == ["r2"]
    assert pool.connections() == {"h2": 1, "vault": 1}  # only this node's own
    pool.elsewhere([(("h1", "archive"), ("admin@h1", "a@archive"), 1)])  # one ended there
    assert pool.pick([("r3", slot("h1", "vault", user="admin"))]) == ["r3"]
    assert pool.try_extend("r3") is False  # admin@h1: 2 of 2 with the other node's
    assert pool.pairs("r3") == 1 and pool.pairs("nope") == 0


def test_allowances_learnt_by_any_node_lower_the_caps_here() -> None:
    pool = Pool(Limits(max_jobs=10, max_per_host=8, max_per_login=4))
    pool.learn({"h1": 1, "admin@h2": 1})
    assert (pool.host_cap("h1"), pool.login_cap("admin@h2"), pool.host_cap("h2")) == (1, 1, 8)
    pool.learn({"h1": 5})  # a higher one learnt later does not raise it again
    assert pool.host_cap("h1") == 1
    assert pool.pick([("r1", slot("h1", "h9")), ("r2", slot("h1", "h8", user="v"))]) == ["r1"]
