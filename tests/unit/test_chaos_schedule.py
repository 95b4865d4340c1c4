"""The chaos fault schedule is a pure function of its seed and plan: replayable, and it holds
what the plan asks for."""

from __future__ import annotations

from bench.chaos.faults import routes_for
from bench.chaos.schedule import NET_KINDS, SERVERS, Plan, build_schedule, counts, schedule_digest

STANDARD = Plan(seed=42, seconds=1200)


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    first, again = build_schedule(STANDARD), build_schedule(Plan(seed=42, seconds=1200))
    assert first == again
    assert schedule_digest(first) == schedule_digest(again)
    assert schedule_digest(build_schedule(Plan(seed=43, seconds=1200))) != schedule_digest(first)


def test_the_standard_plan_holds_every_fault_it_promises() -> None:
    faults = build_schedule(STANDARD)
    found = counts(faults)
    assert found["sigkill"] >= 100
    assert found["pg_restart"] >= 3
    assert found["redis_wipe"] >= 1
    assert found["redis_restart"] >= 1
    assert found["sigterm"] >= 1
    for kind in NET_KINDS:
        assert {f.target.split(":")[0] for f in faults if f.kind == kind} == set(SERVERS), kind
    assert all(f.at >= 0 and f.at + f.seconds <= STANDARD.seconds for f in faults)
    assert [f.at for f in faults] == sorted(f.at for f in faults)


def test_a_small_plan_still_has_one_of_each_network_fault() -> None:
    faults = build_schedule(Plan(seed=7, seconds=45, kills=3, sigterms=1, pg_restarts=1, redis_restarts=2, net_each=1))
    assert counts(faults) == {
        "sigkill": 3, "sigterm": 1, "pg_restart": 1, "redis_wipe": 1, "redis_restart": 1,
        "latency": 1, "reset": 1, "blackhole": 1, "halfopen": 1,
    }  # fmt: skip


def test_network_targets_name_one_replica_or_all() -> None:
    assert routes_for("pg:1") == ["r1-pg"]
    assert routes_for("smtp:all") == ["r0-smtp", "r1-smtp", "r2-smtp"]
